"""Stage `evaluate@<name>` (and `evaluate_xgboost`): one generator's FID over `sets` sets of 10k images
(docs/protocol.md "FID protocol").

Usage: python pipeline/evaluate.py <name>   (a key of params.yaml's `models`, or `gen_xgboost`)
A model trained on another training set is scored against that set's test images with that dataset's
instruments. The generator and the instruments are rebuilt from their model files; params.yaml gives the
protocol, the sampling settings and the real images (the entry's dataset and digit).
Every set is scored by both instruments, `cnn` and `mlp` (an MLP on raw pixels).
Writes metrics/fid/<name>.json (mean, std, set counts, and from the same classifier pass the inception
score, class rate, sharpness, logit spread against real images and distance to the nearest training
image), metrics/fid/sets/<name>.json (the per-set FIDs), its timings, a sample grid and the first 1,000
images of set 0 as uint8 in metrics/fid/samples/<name>.npz (committed: anyone can score or look at
them without the model; `sarnet score`). In MLflow the scores are logged against the generator's logged
model (docs/usage.md "Models in MLflow") and onto the run that trained it, beside its hyperparameters.
"""

import json
from pathlib import Path

import numpy as np
import torch
from _model_spec import model_spec, xgboost_spec
from _stage import params, run_name, stage, write_results
from tqdm import tqdm

from sarnet.core.data import load_prepared, to_unit_tensor
from sarnet.core.device import default_device
from sarnet.core.errors import ConfigError
from sarnet.core.files import atomic_path, save_grid, write_json
from sarnet.core.model_files import read_description
from sarnet.core.params import MAX_IMAGES, MAX_SETS, check_int, check_keys
from sarnet.families import load_generator
from sarnet.instruments.classifier import INSTRUMENT_NAMES, instrument_path
from sarnet.instruments.fid import FidProtocol, FidScorer, FidSets, fid_over_sets
from sarnet.instruments.loader import load_instrument
from sarnet.tracking import log_on_training_run, stage_run


KEPT_IMAGES, GRID_IMAGES = 1000, 100  # committed per evaluation (about 150 KB), and shown in its grid


def save_samples(images: torch.Tensor, path: str) -> None:
    """Images in [0, 1] as uint8 (N, 28, 28) under `images` in a compressed .npz, written atomically."""
    pixels = (images.reshape(-1, 28, 28).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=pixels)


def stated_settings(path: str) -> tuple[str | None, dict]:
    """(kind, constructor arguments) a model file states; a generative XGBoost folder: (None, its config.json)."""
    if Path(path).is_dir():
        return None, json.loads((Path(path) / "config.json").read_text())
    info = read_description(path)
    return info["kind"], info["args"]


def quality_scores(result: FidSets, digit: int | None) -> dict[str, float]:
    """The scores read from the FID's own logits and pixels (docs/baselines.md "Scores from the FID's classifier pass"), rounded for the record."""
    scores = {"is_mean": float(np.mean(result.inception)), "is_std": float(np.std(result.inception)),
              "sharpness": float(np.mean(result.sharpness)), "logit_spread_ratio": result.spread_ratio,
              "nearest_train_distance": result.nearest_train}
    if digit is not None:  # the share classed as the trained digit (the five-rate of the fives table)
        scores["class_rate"] = float(np.mean(result.class_rate))
    return {key: round(value, 6) for key, value in scores.items()}


@stage
def main(*args: str) -> None:
    spec = xgboost_spec() if args == ("gen_xgboost",) else model_spec(*args)
    kind, latent, name = spec.kind, spec.latent, spec.name
    p = params("evaluate")
    check_keys("evaluate", p, ("n_images", "sets", "sets_by_model", "seed"), required=True)
    for key in ("n_images", "sets", "seed"):
        check_int("evaluate", key, p[key], minimum=0 if key == "seed" else 1,
                  maximum={"n_images": MAX_IMAGES, "sets": MAX_SETS}.get(key))
    if not isinstance(p["sets_by_model"], dict):
        raise ConfigError(f"params.yaml: `evaluate.sets_by_model` must map model names to set counts, got {p['sets_by_model']!r}")
    known = {*params("models", note=False), "gen_xgboost"}  # only the names: a model's own entry is not this stage's input
    for key, value in p["sets_by_model"].items():
        if key not in known:  # a mistyped name would silently leave its model at `sets`
            raise ConfigError(f"params.yaml: `evaluate.sets_by_model` names {key!r}, which is no model (see `models`)")
        check_int("evaluate.sets_by_model", str(key), value, minimum=1, maximum=MAX_SETS)
    protocol = FidProtocol(p["n_images"], p["sets_by_model"].get(name, p["sets"]), p["seed"])  # Table 4.1 used more for some
    dataset, digit = spec.params["dataset"], spec.params["digit"]
    prepared = load_prepared(f"data/prepared/{dataset}.npz", digit=digit)
    real_pool, train_pool = to_unit_tensor(prepared.test.images), to_unit_tensor(prepared.train.images)
    device = default_device()
    instruments = {i: FidScorer(load_instrument(instrument_path(dataset, i), device, i), device=device)
                   for i in INSTRUMENT_NAMES}  # the first also gives the scores read from its logits
    generator_path = spec.model_path
    _, generate = load_generator(generator_path, params("sampling"), device=device)
    grid_path, samples_path = f"metrics/fid/samples/{name}.png", f"metrics/fid/samples/{name}.npz"

    with stage_run(run_name(spec.stage("evaluate")), params={"protocol": p, "sets": protocol.sets}, dataset=dataset,
                   digit=digit, tags={"model": kind, "model.name": name, "latent_dim": latent if latent is not None else "none",
                         "evaluation": "fid"}) as tracker:
        bar = tqdm(total=protocol.sets, desc=f"FID {name}", unit="set")

        def on_set(index: int, fid: float) -> None:
            tracker.log_metrics({"fid": fid}, step=index)  # the per-set series, step = set index
            bar.set_postfix(fid=f"{fid:.3f}")
            bar.update(1)

        result = fid_over_sets(generate, instruments, real_pool, protocol, on_set, preview=KEPT_IMAGES, label=digit,
                               train_pool=train_pool)
        bar.close()
        save_grid(result.preview[:GRID_IMAGES], grid_path)
        save_samples(result.preview, samples_path)
        by_instrument = {i: {"mean": round(result.mean(i), 6), "std": round(result.std(i), 6)} for i in instruments}
        scores = quality_scores(result, digit)
        record = {**by_instrument, "sets": protocol.sets, "n_images": protocol.n_images, "real_pool": len(real_pool),
                  **scores}
        write_json(f"metrics/fid/sets/{name}.json", {i: [round(f, 6) for f in fids] for i, fids in result.fids.items()})
        timing = write_results(f"fid/{name}", record, {
            "generation_images_per_second": round(protocol.sets * protocol.n_images / result.generation_seconds, 1)})
        fid = {f"fid_{i}_{stat}": getattr(result, stat)(i) for i in instruments for stat in ("mean", "std")} | scores
        tracker.log_metrics(fid | timing)
        tracker.log_artifact(grid_path, "samples")
        tracker.log_model_metrics(generator_path, fid, name=name, kind=kind,  # the model view sorts by these
                                  arch=stated_settings(generator_path)[1])
        for i in instruments:
            instrument_kind, instrument_arch = stated_settings(instrument_path(dataset, i))
            tracker.use_model(instrument_path(dataset, i), f"instrument_{i}_{dataset}", "instrument", instrument_kind,
                              instrument_arch)
        log_on_training_run(generator_path, fid)  # one run per model: its hyperparameters and its FID
        print(f"{name}: FID " + ", ".join(f"{i} {result.mean(i):.3f} ± {result.std(i):.3f}" for i in instruments)
              + f" over {protocol.sets} sets of {protocol.n_images}")


if __name__ == "__main__":
    main()
