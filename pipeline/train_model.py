"""Stage `train_<kind>[@L]`: SarNET, SarNET VAE or conv VAE on one dataset, through the shared loop.

Usage: python pipeline/train_model.py <sarnet|sarnet_vae|conv_vae> [latent_dim [variant]]
(variant: a key of params.yaml's `<kind>_data`, e.g. `sarnet_vae 128 fashion`, `sarnet - mse`)
Writes the model file, its samples and its reconstructions of the first 20 test images (original
and reconstruction side by side), and the test images' reconstruction errors (`test_mse`, `test_l1`).
"""

import torch
from _stage import DATA_KEYS, latent_arg, model_params, params, run_name, stage, write_results

from sarnet.data import load_prepared, to_unit_tensor
from sarnet.figures import save_grid
from sarnet.models import build_model, generator_class
from sarnet.names import generator_name, model_path
from sarnet.params import check_data_keys, check_keys
from sarnet.tracking import model_reference, stage_run
from sarnet.training import TrainConfig, fit, seed_everything


def dvc_stage(kind: str, latent: int | None, variant: str | None) -> str:
    """This run's stage name in dvc.yaml (the MLflow run name outside DVC too)."""
    if variant is not None:
        return f"train_{kind}_data@{variant}"
    return f"train_{kind}" if latent is None else f"train_{kind}@{latent}"


@stage
def main(kind: str, latent_dim: str | None = None, variant: str | None = None) -> None:
    latent = latent_arg(latent_dim)
    name = generator_name(kind, latent, variant)
    p = model_params(kind, variant)
    config = TrainConfig.from_params(p, kind, generator_class(kind).arch_keys + DATA_KEYS)
    check_data_keys(kind if variant is None else f"{kind}_data.{variant}", p)
    sampling = params("sampling").get(kind, {})
    check_keys(f"sampling.{kind}", sampling, generator_class(kind).sampling_keys, required=True)  # not after training
    prepared = load_prepared(f"data/prepared/{p['dataset']}.npz", digit=p["digit"])
    limit = p["train_limit"]  # the CI profile trains on a slice
    train = (to_unit_tensor(prepared.train.images[:limit]).flatten(1),)
    test = (to_unit_tensor(prepared.test.images).flatten(1),)
    out_path = model_path(kind, latent, data=variant)
    grid_path = f"metrics/samples/{name}.png"
    reconstruction_path = f"metrics/samples/{name}_reconstruction.png"

    with stage_run(run_name(dvc_stage(kind, latent, variant)), params=p | {"latent_dim": latent},
                   dataset=p["dataset"], tags={"model": kind, "model.name": name,
                                               "variant": variant or "default"}) as tracker:
        seed_everything(config.seed)
        model = build_model(kind, p, latent)
        history = fit(model, lambda m, batch: m.loss(batch), train, config,
                      checkpoint_path=f"checkpoints/{name}.pt", final_path=out_path, test_data=test,
                      history_path=f"metrics/train/{name}_history.csv", logger=tracker)
        model.cpu().eval()
        save_grid(model.generate(100, config.seed, sampling), grid_path)
        reconstructed = model.reconstruct(test[0]).flatten(1)
        pairs = torch.stack([test[0][:20], reconstructed[:20]], dim=1).view(-1, 28, 28)
        save_grid(pairs, reconstruction_path)  # each original followed by its reconstruction
        best = min(history, key=lambda r: r.test_loss)
        metrics = {
            "final_train_loss": round(history[-1].train_loss, 4),
            "final_test_loss": round(history[-1].test_loss, 4),
            "best_test_loss": round(best.test_loss, 4),
            "best_test_epoch": best.epoch,
            "test_mse": round(float((reconstructed - test[0]).pow(2).mean()), 5),  # per pixel, the test images
            "test_l1": round(float((reconstructed - test[0]).abs().mean()), 5),
            "train_images": len(train[0]),
        }
        timing = write_results(f"train/{name}", metrics,
                               {"seconds_per_epoch": round(sum(r.seconds for r in history) / len(history), 3)})
        tracker.log_metrics(metrics | timing)
        tracker.set_tags(model_reference(out_path))  # the weights stay in DVC's cache; MLflow keeps their address
        tracker.log_artifact(grid_path, "samples")
        tracker.log_artifact(reconstruction_path, "samples")
        tracker.log_artifact(f"metrics/train/{name}_history.csv")
        print(f"{name}: train {metrics['final_train_loss']} / test {metrics['final_test_loss']} per sample "
              f"(best test {metrics['best_test_loss']} at epoch {best.epoch}); samples in {grid_path}")


if __name__ == "__main__":
    main()
