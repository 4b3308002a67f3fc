"""Stage `train@<name>`: one generator of params.yaml's `models` table, through the shared loop.

Usage: python pipeline/train_model.py <name>     (a key of `models`, e.g. `sarnet_vae_L128`, `dcgan`)
Writes the model file, its samples, what the model measures on the test images (`test_metrics`:
reconstruction errors `test_mse`, `test_l1` for a model that reconstructs; NLL in nats and bits per
dimension for a pixel model) and, for a model that reconstructs, a grid of the first 20 test images
each followed by its reconstruction. The seeds' models also keep their per-step losses
(a GAN's two players move every step). Besides the model file and metrics/train/<name>.json, everything
goes into the folder metrics/train/<name>/: history.csv, samples.png, reconstruction.png where the model
reconstructs, steps.csv for the seeds' models.
"""

import csv
import io
from collections.abc import Callable
from pathlib import Path

import torch
from _model_spec import ModelSpec, model_spec
from _stage import DATA_KEYS, params, run_name, stage, write_results

from sarnet.core.data import load_prepared, to_unit_tensor
from sarnet.core.device import default_device
from sarnet.core.files import save_grid, write_text
from sarnet.core.model_files import THESIS_KINDS
from sarnet.core.params import check_data_keys, check_int, check_keys
from sarnet.core.training import EpochRecord, TrainConfig, fit, seed_everything
from sarnet.families import build_model, model_class
from sarnet.instruments.classifier import instrument_path
from sarnet.instruments.fid import FidScorer, frechet_distance
from sarnet.instruments.loader import load_instrument
from sarnet.tracking import model_reference, stage_run

CURVE_IMAGES = 1000  # generated images per point of a learning curve (docs/baselines.md "Learning curves")


def validation_fid(spec: ModelSpec, train_images: torch.Tensor, sampling: dict, seed: int
                   ) -> Callable[[torch.nn.Module, int], dict[str, float]] | None:
    """With `curve_every: k` in the entry: after every k-th epoch and the last, the FID of 1,000 generated
    images against the model's training images (never the test images: a curve may guide choices) under
    the CNN instrument, as `val_fid` of that epoch."""
    every = spec.params.get("curve_every")
    if every is None:
        return None
    check_int(spec.section, "curve_every", every, minimum=1)
    device = default_device()
    scorer = FidScorer(load_instrument(instrument_path(spec.params["dataset"], "cnn"), device, instrument="cnn"), device=device)
    real = scorer.statistics(train_images.view(-1, 28, 28))
    epochs = spec.params["epochs"]

    def measure(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        if epoch % every and epoch != epochs:
            return {}
        return {"val_fid": frechet_distance(*scorer.statistics(model.generate(CURVE_IMAGES, seed, sampling)), *real)}

    return measure


def write_curve(path: Path, history: list[EpochRecord], updates_per_epoch: int) -> None:
    """The learning curve as a DVC plots file: update, epoch, val_fid."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["update", "epoch", "val_fid"])
    for r in history:
        if "val_fid" in r.extra:
            writer.writerow([r.epoch * updates_per_epoch, r.epoch, f"{r.extra['val_fid']:.6g}"])
    write_text(path, buffer.getvalue())


@stage
def main(*args: str) -> None:
    spec = model_spec(*args)
    kind, name, p = spec.kind, spec.name, spec.params
    config = TrainConfig.from_params(p, spec.section, model_class(kind).arch_keys + DATA_KEYS + ("curve_every",))
    check_data_keys(spec.section, p)
    sampling = params("sampling").get(kind, {})
    check_keys(f"sampling.{kind}", sampling, model_class(kind).sampling_keys, required=True)  # not after training
    thesis_model = kind in THESIS_KINDS
    prepared = load_prepared(f"data/prepared/{p['dataset']}.npz", digit=p["digit"])
    limit = p["train_limit"]  # the CI profile trains on a slice
    train = (to_unit_tensor(prepared.train.images[:limit]).flatten(1),)
    test = (to_unit_tensor(prepared.test.images).flatten(1),)
    figures = Path("metrics/train") / name  # what training shows besides its numbers (one folder: it varies by model)
    grid_path, reconstruction_path, history_path = figures / "samples.png", figures / "reconstruction.png", figures / "history.csv"
    steps_path = None if thesis_model else figures / "steps.csv"

    with stage_run(run_name(spec.stage("train")), params=p | {"latent_dim": spec.latent}, dataset=p["dataset"],
                   tags={"model": kind, "model.name": name, "baseline": not thesis_model}) as tracker:
        seed_everything(config.seed)
        model = build_model(kind, p, spec.latent)
        history = fit(model, lambda m, batch: m.loss(batch), train, config,
                      checkpoint_path=f"checkpoints/{name}.pt", final_path=spec.model_path, test_data=test,
                      history_path=history_path, logger=tracker, step_history_path=steps_path,
                      after_epoch=validation_fid(spec, train[0], sampling, config.seed))
        if "curve_every" in p:
            write_curve(figures / "fid_curve.csv", history, -(-len(train[0]) // config.batch_size))
        model.cpu().eval()
        save_grid(model.generate(100, config.seed, sampling), grid_path)
        best = min(history, key=lambda r: r.test_loss)
        metrics = {
            "final_train_loss": round(history[-1].train_loss, 4),
            "final_test_loss": round(history[-1].test_loss, 4),
            "best_test_loss": round(best.test_loss, 4),
            "best_test_epoch": best.epoch,
            "train_images": len(train[0]),
            **{f"final_{key}": round(value, 4) for key, value in history[-1].extra.items()},  # e.g. a GAN's g_loss
        }
        metrics |= {key: round(value, 5) for key, value in model.test_metrics(test[0]).items()}  # errors, NLL, …
        if model.reconstructs:
            pairs = torch.stack([test[0][:20], model.reconstruct(test[0][:20]).flatten(1)], dim=1).view(-1, 28, 28)
            save_grid(pairs, reconstruction_path)  # each original followed by its reconstruction
            tracker.log_artifact(reconstruction_path, "samples")
        timing = write_results(f"train/{name}", metrics,
                               {"seconds_per_epoch": round(sum(r.seconds for r in history) / len(history), 3)})
        tracker.log_metrics(metrics | timing)
        tracker.set_tags(model_reference(spec.model_path))  # the weights stay in DVC's cache; MLflow keeps their address
        tracker.log_artifact(grid_path, "samples")
        tracker.log_artifact(history_path)
        print(f"{name}: train {metrics['final_train_loss']} / test {metrics['final_test_loss']} per sample "
              f"(best test {metrics['best_test_loss']} at epoch {best.epoch}); samples in {grid_path}")


if __name__ == "__main__":
    main()
