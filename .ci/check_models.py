"""CI check, after the CI profile's run: MLflow is where the models are compared. Every evaluated
generator is an MLflow logged model, external (its DVC path and the md5 of the weights the run left),
made by the run that trained it and carrying the FIDs of both instruments and the class rate that its
evaluation wrote to metrics/fid/<name>.json; every FID instrument is a logged model too; the runs
record their datasets (docs/usage.md "Models in MLflow")."""

import json
import sys
from pathlib import Path

import yaml

from sarnet.core.params import resolve_models
from sarnet.tracking import DEFAULT_EXPERIMENT, _client, model_reference

PARAMS = yaml.safe_load(Path("params.yaml").read_text())
MODELS = resolve_models(PARAMS)
problems: list[str] = []
client = _client()
experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
logged, token = [], None
while True:
    page = client.search_logged_models([experiment], max_results=100, page_token=token)
    logged += list(page)
    token = page.token
    if not token:
        break
newest = {}
for model in sorted(logged, key=lambda m: m.creation_timestamp):
    newest[model.name] = model

expected = {name: (f"models/{entry['kind']}/{name}.safetensors", entry["kind"], f"train@{name}", entry["dataset"])
            for name, entry in MODELS.items()}
expected["gen_xgboost"] = ("models/gen_xgboost", None, "train_xgboost", PARAMS["gen_xgboost"]["dataset"])
for name, (path, kind, train_stage, dataset) in expected.items():
    model = newest.get(name)
    if model is None:
        problems.append(f"{name}: no MLflow logged model")
        continue
    record = json.loads(Path(f"metrics/fid/{name}.json").read_text())
    scores = {}
    for metric in sorted(model.metrics or [], key=lambda m: m.timestamp):
        scores[metric.key] = metric.value
    for instrument in ("cnn", "mlp"):
        for stat in ("mean", "std"):
            got = scores.get(f"fid_{instrument}_{stat}")
            if got is None or abs(got - record[instrument][stat]) > 1e-5:
                problems.append(f"{name}: logged model's fid_{instrument}_{stat} {got}, metrics say {record[instrument][stat]}")
    if "class_rate" in record and abs(scores.get("class_rate", -1.0) - record["class_rate"]) > 1e-5:
        problems.append(f"{name}: logged model's class_rate {scores.get('class_rate')}, metrics say {record['class_rate']}")
    md5 = model_reference(path).get("model.md5")
    if model.params.get("dvc.md5") != md5 or model.params.get("dvc.path") != path:
        problems.append(f"{name}: logged model points at {model.params.get('dvc.path')} {model.params.get('dvc.md5')}, "
                        f"the run left {path} {md5}")
    if not any(key.startswith("arch.") for key in model.params):
        problems.append(f"{name}: logged model records no architecture (arch.* params)")
    if kind is not None and model.params.get("kind") != kind:
        problems.append(f"{name}: logged model's kind {model.params.get('kind')}, params.yaml says {kind}")
    if model.tags.get("mlflow.model.isExternal") != "true":
        problems.append(f"{name}: logged model is not external (the weights belong in DVC)")
    source = client.get_run(model.source_run_id) if model.source_run_id else None
    if source is None or source.data.tags.get("dvc.stage") != train_stage:
        problems.append(f"{name}: logged model's source run is {source and source.data.tags.get('dvc.stage')}, not {train_stage}")
    elif not source.inputs.dataset_inputs or not source.inputs.dataset_inputs[0].dataset.name.startswith(dataset):
        problems.append(f"{name}: its training run records no {dataset} dataset input")

for dataset in PARAMS["prepare"]["datasets"]:
    for instrument in ("cnn", "mlp"):
        if f"instrument_{instrument}_{dataset}" not in newest and any(e["dataset"] == dataset for e in MODELS.values()):
            problems.append(f"instrument_{instrument}_{dataset}: no MLflow logged model")

if problems:
    print("MLflow logged models:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"MLflow: {len(expected)} generators are logged models with their FIDs, each made by its training run")
