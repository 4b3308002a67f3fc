"""Stage `prepare@<dataset>`: verified IDX files -> data/prepared/<dataset>.npz (uint8 arrays)."""

import numpy as np
from _stage import params, run_name, stage, write_results

from sarnet.core.data import load_prepared, prepare_dataset
from sarnet.core.files import write_json
from sarnet.core.params import check_keys
from sarnet.tracking import stage_run


@stage
def main(dataset: str) -> None:
    p = params("prepare")
    # `datasets` is dvc.yaml's foreach list, not read here
    check_keys("prepare", p, ("datasets", "data_dir", "download_dir"), required=("data_dir", "download_dir"))
    out = f"data/prepared/{dataset}.npz"
    with stage_run(run_name(f"prepare@{dataset}"), params=p, dataset=dataset) as tracker:
        summary = prepare_dataset(dataset, p["data_dir"], out, p["download_dir"])
        data = load_prepared(out)
        metrics = {"train_images": summary["train"], "test_images": summary["test"]}
        timing = write_results(f"prepare/{dataset}", metrics)
        labels = {"train": np.bincount(data.train.labels, minlength=10).tolist(),
                  "test": np.bincount(data.test.labels, minlength=10).tolist()}
        write_json(f"metrics/prepare/{dataset}_labels.json", labels)  # images per class, not a metric
        tracker.set_tags({"data.source": summary["source"]})
        tracker.log_metrics(metrics | timing)
        tracker.log_artifact(f"metrics/prepare/{dataset}_labels.json")
        print(f"{dataset}: {summary['train']} train / {summary['test']} test images from {summary['source']}")


if __name__ == "__main__":
    main()
