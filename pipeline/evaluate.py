"""Stage `evaluate_*`: one generator's FID over `sets` sets of 10k images (docs/protocol.md "FID protocol").

Usage: python pipeline/evaluate.py <sarnet|sarnet_vae|conv_vae|gen_xgboost> [latent_dim [training_set]]
A model trained on another training set is scored against that set's test images with that
dataset's classifier (Fashion-MNIST: the Fashion classifier). The generator and the classifier
are rebuilt from their model files; params.yaml gives the protocol, the sampling settings and
the real images (the model section's dataset and digit).
Writes metrics/fid/<name>.json (per-set FIDs, mean, std, timings) and a sample grid; no image set is kept.
"""

from _stage import elapsed, latent_arg, model_params, params, stage
from tqdm import tqdm

from sarnet.data import load_prepared, to_unit_tensor
from sarnet.device import default_device
from sarnet.errors import ConfigError
from sarnet.fid import FidProtocol, FidScorer, fid_over_sets
from sarnet.figures import save_grid
from sarnet.files import write_json
from sarnet.generators import load_generator
from sarnet.loader import load_model
from sarnet.model_files import SUFFIX
from sarnet.names import generator_name, model_path
from sarnet.params import check_int, check_keys
from sarnet.tracking import stage_run


@stage
def main(kind: str, latent_dim: str | None = None, data: str | None = None) -> None:
    latent = latent_arg(latent_dim)
    name = generator_name(kind, latent, data)
    p = params("evaluate")
    check_keys("evaluate", p, ("n_images", "sets", "sets_by_latent", "seed"), required=True)
    for key in ("n_images", "sets", "seed"):
        check_int("evaluate", key, p[key], minimum=0 if key == "seed" else 1)
    if not isinstance(p["sets_by_latent"], dict):
        raise ConfigError(f"params.yaml: `evaluate.sets_by_latent` must map latent sizes to set counts, got {p['sets_by_latent']!r}")
    for key, value in p["sets_by_latent"].items():
        check_int("evaluate.sets_by_latent", str(key), value, minimum=1)
    gen_params = model_params(kind, data)
    # Table 4.1 used more sets for some latent sizes; other training sets (Fashion: 10) use `sets`.
    sets = p["sets"] if data is not None else p["sets_by_latent"].get(latent, p["sets"])
    protocol = FidProtocol(p["n_images"], sets, p["seed"])
    dataset, digit = gen_params["dataset"], gen_params["digit"]
    real_pool = to_unit_tensor(load_prepared(f"data/prepared/{dataset}.npz", digit=digit).test.images)
    device = default_device()
    classifier = load_model(f"models/classifier/{dataset}{SUFFIX}", device, kind="classifier")
    _, generate = load_generator(model_path(kind, latent, data=data), params("sampling"), device=device)
    grid_path = f"metrics/fid/samples/{name}.png"

    with stage_run(f"evaluate_{name}", params={"protocol": p, "sets": protocol.sets}, dataset=dataset,
                   tags={"model": kind, "latent_dim": latent if latent is not None else "none", "evaluation": "fid",
                         "training_set": data or "default"}) as tracker:
        bar = tqdm(total=protocol.sets, desc=f"FID {name}", unit="set")

        def on_set(index: int, fid: float) -> None:
            tracker.log_metrics({"fid": fid}, step=index)  # the per-set series, step = set index
            bar.set_postfix(fid=f"{fid:.3f}")
            bar.update(1)

        result = fid_over_sets(generate, FidScorer(classifier, device=device), real_pool, protocol, on_set)
        bar.close()
        save_grid(result.preview, grid_path)
        record = {
            "name": name, "kind": kind, "latent_dim": latent, "data": data, "dataset": dataset, "digit": digit,
            "sets": protocol.sets, "n_images": protocol.n_images, "real_pool": len(real_pool),
            "mean": round(result.mean, 6), "std": round(result.std, 6),
            "fids": [round(f, 6) for f in result.fids],
            "generation_images_per_second": round(protocol.sets * protocol.n_images / result.generation_seconds, 1),
            "seconds": elapsed(),
        }
        write_json(f"metrics/fid/{name}.json", record)
        tracker.log_metrics({"fid_mean": result.mean, "fid_std": result.std, "seconds": record["seconds"],
                             "generation_images_per_second": record["generation_images_per_second"]})
        tracker.log_artifact(grid_path, "samples")
        tracker.log_artifact(f"metrics/fid/{name}.json")
        print(f"{name}: FID {result.mean:.3f} ± {result.std:.3f} over {protocol.sets} sets of {protocol.n_images}")


if __name__ == "__main__":
    main()
