"""Stage `calibrate`: the thesis's FID calibration table with our classifier (metrics/calibration.*)."""

from _stage import params, run_name, stage, write_results

from sarnet.core.data import load_prepared, to_unit_tensor
from sarnet.core.device import default_device
from sarnet.core.files import write_text
from sarnet.core.params import MAX_IMAGES, check_int, check_keys
from sarnet.instruments.calibration import calibrate, calibration_markdown, real_references
from sarnet.instruments.classifier import INSTRUMENT_NAMES, instrument_path
from sarnet.instruments.fid import FidScorer
from sarnet.instruments.loader import load_instrument
from sarnet.tracking import stage_run

CLASSIFIER_NOTE = ("Features: the 10 logits of the pipeline's own CNN (`train_classifier`); "
                   "the thesis used TF-GAN's MNIST classifier, so absolute values differ and the ratio puts them on one scale. "
                   "The last two columns score the same sets with the second instrument, an MLP on raw pixels "
                   "(`train_mlp_classifier`).")


@stage
def main() -> None:
    p = params("calibrate")
    check_keys("calibrate", p, ("dataset", "digit", "n_images", "seed"), required=True)
    check_int("calibrate", "n_images", p["n_images"], minimum=1, maximum=MAX_IMAGES)
    dataset, n = p["dataset"], p["n_images"]
    data = load_prepared(f"data/prepared/{dataset}.npz", digit=p["digit"])
    all_digits = load_prepared(f"data/prepared/{dataset}.npz", digit=None)
    protocol = params("evaluate")  # the references are measured as the generators are
    device = default_device()
    instruments = {name: FidScorer(load_instrument(instrument_path(dataset, name), device, name), device=device)
                   for name in INSTRUMENT_NAMES}

    with stage_run(run_name("calibrate"), params=p, dataset=dataset) as tracker:
        results = calibrate(instruments, to_unit_tensor(data.test.images), to_unit_tensor(data.train.images), n,
                            p["seed"], progress=print)
        numbers = {key: {k: v for k, v in row.items() if k != "label"} for key, row in results.items()}
        references = real_references(instruments["cnn"], to_unit_tensor(data.test.images), to_unit_tensor(data.train.images),
                                     to_unit_tensor(all_digits.test.images), p["digit"], protocol["n_images"],
                                     protocol["sets"], p["seed"])
        print(f"real references: {references}")
        timing = write_results("calibration", {"rows": numbers, "references": references})
        write_text("metrics/calibration.md", calibration_markdown(results, n, CLASSIFIER_NOTE))
        tracker.log_metrics({f"{stat}_{i}.{k}": r[i][stat] for k, r in results.items() for i in instruments
                             for stat in ("fid", "ratio")}
                            | {f"{group}.{k}": v for group, values in references.items() for k, v in values.items()} | timing)
        tracker.log_artifact("metrics/calibration.md")
        tracker.log_artifact("metrics/calibration.json")


if __name__ == "__main__":
    main()
