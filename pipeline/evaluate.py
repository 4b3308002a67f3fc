"""Stage `evaluate_*`: one generator's FID over `sets` sets of 10k images (docs/protocol.md "FID protocol").

Usage: python pipeline/evaluate.py <sarnet|sarnet_vae|conv_vae|gen_xgboost> [latent_dim [variant]]
       python pipeline/evaluate.py baseline <name>
(variant: a key of params.yaml's `<kind>_data`; `-` for the latent size of a model without one:
`evaluate.py sarnet - mse`; name: a key of `baselines`). A model trained on another training set is scored against that set's
test images with that dataset's classifier (Fashion-MNIST: the Fashion classifier). The generator and the classifier
are rebuilt from their model files; params.yaml gives the protocol, the sampling settings and
the real images (the model section's dataset and digit).
Every set is scored by both instruments (the CNN, and the MLP on raw pixels: `mlp_mean`, `mlp_std`).
Writes metrics/fid/<name>.json (mean, std, set counts, and from the same classifier pass the inception
score, five-rate, sharpness, logit spread against real images and distance to the nearest training
image), metrics/fid/sets/<name>.json (the per-set FIDs), its timings and a sample grid; no image set is kept. The FID is also logged onto the MLflow run that
trained the model, beside its hyperparameters.
"""

import numpy as np
from _model_spec import model_spec
from _stage import params, run_name, stage, write_results
from tqdm import tqdm

from sarnet.classifier import instrument_path
from sarnet.data import load_prepared, to_unit_tensor
from sarnet.device import default_device
from sarnet.errors import ConfigError
from sarnet.fid import FidProtocol, FidScorer, FidSets, fid_over_sets
from sarnet.figures import save_grid
from sarnet.files import write_json
from sarnet.generators import load_generator
from sarnet.loader import load_model
from sarnet.params import check_int, check_keys
from sarnet.tracking import log_on_training_run, stage_run


def quality_scores(result: FidSets, digit: int | None) -> dict[str, float]:
    """The scores read from the FID's own logits and pixels (docs/baselines.md "Scores from the FID's classifier pass"), rounded for the record."""
    scores = {"is_mean": float(np.mean(result.inception)), "is_std": float(np.std(result.inception)),
              "sharpness": float(np.mean(result.sharpness)), "logit_spread_ratio": result.spread_ratio,
              "nearest_train_distance": result.nearest_train}
    if digit is not None:  # the share classed as the trained digit: the five-rate of the fives table
        scores["five_rate" if digit == 5 else "class_rate"] = float(np.mean(result.class_rate))
    return {key: round(value, 6) for key, value in scores.items()}


@stage
def main(*args: str) -> None:
    spec = model_spec(*args)
    kind, latent, data, name = spec.kind, spec.latent, spec.variant, spec.name
    p = params("evaluate")
    check_keys("evaluate", p, ("n_images", "sets", "sets_by_latent", "seed"), required=True)
    for key in ("n_images", "sets", "seed"):
        check_int("evaluate", key, p[key], minimum=0 if key == "seed" else 1)
    if not isinstance(p["sets_by_latent"], dict):
        raise ConfigError(f"params.yaml: `evaluate.sets_by_latent` must map latent sizes to set counts, got {p['sets_by_latent']!r}")
    for key, value in p["sets_by_latent"].items():
        check_int("evaluate.sets_by_latent", str(key), value, minimum=1)
    gen_params = spec.params
    # Table 4.1 used more sets for some latent sizes; variants (Fashion: 10) and baselines use `sets`.
    sets = p["sets"] if data is not None or spec.baseline else p["sets_by_latent"].get(latent, p["sets"])
    protocol = FidProtocol(p["n_images"], sets, p["seed"])
    dataset, digit = gen_params["dataset"], gen_params["digit"]
    prepared = load_prepared(f"data/prepared/{dataset}.npz", digit=digit)
    real_pool, train_pool = to_unit_tensor(prepared.test.images), to_unit_tensor(prepared.train.images)
    device = default_device()
    classifier = load_model(instrument_path(dataset, "cnn"), device, kind="classifier")
    second = load_model(instrument_path(dataset, "mlp"), device, kind="mlp_classifier")  # the second instrument
    generator_path = spec.model_path
    _, generate = load_generator(generator_path, params("sampling"), device=device)
    grid_path = f"metrics/fid/samples/{name}.png"

    with stage_run(run_name(spec.dvc_stage("evaluate")), params={"protocol": p, "sets": protocol.sets}, dataset=dataset,
                   tags={"model": kind, "latent_dim": latent if latent is not None else "none", "evaluation": "fid",
                         "variant": data or "default", "baseline": spec.baseline}) as tracker:
        bar = tqdm(total=protocol.sets, desc=f"FID {name}", unit="set")

        def on_set(index: int, fid: float) -> None:
            tracker.log_metrics({"fid": fid}, step=index)  # the per-set series, step = set index
            bar.set_postfix(fid=f"{fid:.3f}")
            bar.update(1)

        result = fid_over_sets(generate, FidScorer(classifier, device=device), real_pool, protocol, on_set,
                               label=digit, train_pool=train_pool, second=FidScorer(second, device=device))
        bar.close()
        save_grid(result.preview, grid_path)
        record = {"mean": round(result.mean, 6), "std": round(result.std, 6), "sets": protocol.sets,
                  "n_images": protocol.n_images, "real_pool": len(real_pool),
                  "mlp_mean": round(result.second_mean, 6), "mlp_std": round(result.second_std, 6),
                  **quality_scores(result, digit)}
        write_json(f"metrics/fid/sets/{name}.json", {"cnn": [round(f, 6) for f in result.fids],
                                                     "mlp": [round(f, 6) for f in result.second_fids]})
        timing = write_results(f"fid/{name}", record, {
            "generation_images_per_second": round(protocol.sets * protocol.n_images / result.generation_seconds, 1)})
        fid = {"fid_mean": result.mean, "fid_std": result.std, "fid_mlp_mean": result.second_mean,
               "fid_mlp_std": result.second_std} | {k: v for k, v in record.items() if k.startswith(
            ("is_", "five_rate", "class_rate", "sharpness", "logit_spread", "nearest"))}
        tracker.log_metrics(fid | timing)
        tracker.log_artifact(grid_path, "samples")
        log_on_training_run(generator_path, fid)  # one run per model: its hyperparameters and its FID
        print(f"{name}: FID {result.mean:.3f} ± {result.std:.3f} (MLP instrument {result.second_mean:.3f} ± "
              f"{result.second_std:.3f}) over {protocol.sets} sets of {protocol.n_images}")


if __name__ == "__main__":
    main()
