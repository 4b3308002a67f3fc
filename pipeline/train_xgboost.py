"""Stage `train_xgboost`: generative XGBoost (195 predictors, 196 refiners), a sample grid and a
reconstruction figure, with training and generation timings."""

import time

import numpy as np
import torch
from _stage import DATA_KEYS, params, run_name, stage, write_results
from tqdm import tqdm

from sarnet.core.data import load_prepared
from sarnet.core.files import save_grid
from sarnet.core.params import check_keys
from sarnet.families.xgboost import GenXGBConfig, GenerativeXGBoost, from_patches, to_patches
from sarnet.tracking import model_reference, stage_run

MODEL_DIR = "models/gen_xgboost"


@stage
def main() -> None:
    p = params("gen_xgboost")
    config = GenXGBConfig.from_params(p, DATA_KEYS + ("keep_patches",))  # bad params fail here, before any training
    sampling = params("sampling").get("gen_xgboost", {})
    check_keys("sampling.gen_xgboost", sampling, GenerativeXGBoost.sampling_keys, required=True)  # before training, not after
    data = load_prepared(f"data/prepared/{p['dataset']}.npz", digit=p["digit"])
    train = data.train.images[: p["train_limit"]].astype(np.float32) / 255.0
    test = data.test.images.astype(np.float32) / 255.0

    with stage_run(run_name("train_xgboost"), params=p, dataset=p["dataset"], tags={"model": "gen_xgboost"}) as tracker:
        model = GenerativeXGBoost(config)
        bar = tqdm(total=2 * config.n_patches - 1, desc="xgboost models", mininterval=5)
        timings = model.fit(train, progress=lambda done, total: bar.update(1))
        bar.close()
        model.save(MODEL_DIR)

        started = time.perf_counter()
        samples = model.generate(10_000, config.seed, sampling)
        generation_seconds = time.perf_counter() - started
        save_grid(torch.from_numpy(samples[:100]), "metrics/samples/gen_xgboost.png")

        originals = test[:10]
        rebuilt = model.reconstruct(originals, p["keep_patches"])
        kept = to_patches(originals, config.patch)
        kept[:, p["keep_patches"]:] = 0.0
        kept = from_patches(kept, config.patch)
        rows = np.stack([originals, kept, rebuilt], axis=1).reshape(-1, 28, 28)
        save_grid(torch.from_numpy(rows), "metrics/samples/gen_xgboost_reconstruction.png", nrow=3)

        metrics = {
            "models": len(model.predictors) + len(model.refiners),
            "reconstruction_mae": round(float(np.abs(rebuilt - originals).mean()), 5),
            "train_images": len(train),
        }
        timing = write_results("gen_xgboost", metrics, {
            "predictor_seconds": round(timings["predictor_seconds"], 1),
            "refiner_seconds": round(timings["refiner_seconds"], 1),
            "train_seconds": round(timings["predictor_seconds"] + timings["refiner_seconds"], 1),
            "generation_images_per_second": round(10_000 / generation_seconds, 1),
            "generation_seconds_per_10k": round(generation_seconds, 2),
        })
        tracker.log_metrics(metrics | timing)
        tracker.set_tags(model_reference(MODEL_DIR))
        tracker.log_artifact("metrics/samples/gen_xgboost.png", "samples")
        tracker.log_artifact("metrics/samples/gen_xgboost_reconstruction.png", "samples")
        print(f"trained {metrics['models']} models in {timing['train_seconds']}s; "
              f"{timing['generation_images_per_second']:.0f} images/s")


if __name__ == "__main__":
    main()
