"""Stages `train_classifier@<dataset>` and `train_mlp_classifier@<dataset>`: an FID instrument (the CNN,
or the MLP on raw pixels), trained deterministically.

Usage: python pipeline/train_classifier.py <dataset> [cnn|mlp]
"""

import torch
from _stage import params, run_name, stage, write_results

from sarnet.core.data import load_prepared, to_unit_tensor
from sarnet.core.errors import ConfigError
from sarnet.core.training import TrainConfig, fit, seed_everything
from sarnet.instruments.classifier import INSTRUMENTS, accuracy, build_classifier, classification_loss, instrument_path
from sarnet.tracking import model_reference, stage_run


@stage
def main(dataset: str, instrument: str = "cnn") -> None:
    if instrument not in INSTRUMENTS:
        raise ConfigError(f"unknown instrument {instrument!r}; choose one of {', '.join(INSTRUMENTS)}")
    section = INSTRUMENTS[instrument].section
    p = params(section)
    config = TrainConfig.from_params(p, section, INSTRUMENTS[instrument].arch_keys + ("max_shift", "train_limit", "target_accuracy"))
    data = load_prepared(f"data/prepared/{dataset}.npz")
    limit = p["train_limit"]  # the CI profile trains on a slice
    train = (to_unit_tensor(data.train.images[:limit]), torch.from_numpy(data.train.labels[:limit]))
    test = (to_unit_tensor(data.test.images), torch.from_numpy(data.test.labels))
    model_path = instrument_path(dataset, instrument)
    name = dataset if instrument == "cnn" else f"{dataset}_{instrument}"

    with stage_run(run_name(f"{section}@{dataset}"), params=p, dataset=dataset, tags={"instrument": instrument}) as tracker:
        seed_everything(config.seed)
        model = build_classifier(p, instrument)
        history = fit(model, classification_loss(p["max_shift"][dataset]), train, config,
                      checkpoint_path=f"checkpoints/classifier_{name}.pt", final_path=model_path,
                      test_data=test, history_path=f"metrics/classifier/{name}_history.csv", logger=tracker)
        test_accuracy = accuracy(model.cpu(), *test)
        target = p["target_accuracy"][dataset]
        metrics = {
            "test_accuracy": round(test_accuracy, 5),
            "final_train_loss": round(history[-1].train_loss, 6),
            "final_test_loss": round(history[-1].test_loss, 6),
            "train_images": len(train[0]),
        }
        timing = write_results(f"classifier/{name}", metrics,
                               {"seconds_per_epoch": round(sum(r.seconds for r in history) / len(history), 2)})
        tracker.log_metrics(metrics | timing)
        tracker.set_tags(model_reference(model_path))
        tracker.log_artifact(f"metrics/classifier/{name}_history.csv")
        status = "meets" if test_accuracy >= target else "BELOW"
        print(f"{dataset} ({instrument}): test accuracy {test_accuracy:.4%} ({status} the {target:.1%} target)")


if __name__ == "__main__":
    main()
