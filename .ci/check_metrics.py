"""CI check: every metrics file the pipeline declares exists, parses, and holds finite numbers."""

import csv
import json
import math
import sys
from pathlib import Path

import yaml

PARAMS = yaml.safe_load(Path("params.yaml").read_text())
DATASETS = PARAMS["prepare"]["datasets"]
problems: list[str] = []


def load_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: {exc}")
        return {}


def finite(path: str, name: str, value) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{path}: {name} = {value!r} is not a finite number")


for ds in DATASETS:
    path = f"metrics/prepare/{ds}.json"
    m = load_json(path)
    finite(path, "train_images", m.get("train_images"))
    if sum(m.get("test_label_counts", [])) != m.get("test_images"):
        problems.append(f"{path}: label counts do not add up to the test size")
    path = f"metrics/classifier/{ds}.json"
    m = load_json(path)
    finite(path, "test_accuracy", m.get("test_accuracy"))
    if not 0.5 < m.get("test_accuracy", 0) <= 1:
        problems.append(f"{path}: test_accuracy {m.get('test_accuracy')} is not a trained classifier's")
    rows = list(csv.DictReader(open(f"metrics/classifier/{ds}_history.csv")))
    if not rows:
        problems.append(f"metrics/classifier/{ds}_history.csv: no epochs")

path = "metrics/calibration.json"
m = load_json(path)
rows = m.get("rows", {})
if len(rows) != 9:
    problems.append(f"{path}: {len(rows)} calibration rows, expected 9")
for key, row in rows.items():
    finite(path, f"{key}.fid", row.get("fid"))
    finite(path, f"{key}.ratio", row.get("ratio"))
table = [line for line in Path("metrics/calibration.md").read_text().splitlines() if line.startswith("| ")]
if len(table) != 2 + len(rows):
    problems.append(f"metrics/calibration.md: {len(table)} table lines, expected {2 + len(rows)}")

models = ["sarnet"] + [f"{kind}_L{L}" for kind in ("sarnet_vae", "conv_vae") for L in PARAMS["latent_dims"]]
for name in models:
    path = f"metrics/train/{name}.json"
    m = load_json(path)
    for key in ("final_train_loss", "final_test_loss", "seconds_per_epoch"):
        finite(path, key, m.get(key))
    history = list(csv.DictReader(open(f"metrics/train/{name}_history.csv")))
    if len(history) != PARAMS[name.split("_L")[0]]["epochs"]:
        problems.append(f"metrics/train/{name}_history.csv: {len(history)} epochs, params say {PARAMS[name.split('_L')[0]]['epochs']}")
    if not Path(f"metrics/samples/{name}.png").read_bytes().startswith(b"\x89PNG"):
        problems.append(f"metrics/samples/{name}.png: not a PNG")

path = "metrics/gen_xgboost.json"
m = load_json(path)
for key in ("train_seconds", "generation_images_per_second", "reconstruction_mae"):
    finite(path, key, m.get(key))
if m.get("models") != 391 and PARAMS["gen_xgboost"]["patch"] == 2:
    problems.append(f"{path}: {m.get('models')} models, expected 391 for 2×2 patches")

if problems:
    print("metrics check failed:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"metrics check passed: {len(DATASETS)} datasets, {len(rows)} calibration rows, {len(models)} trained generators, generative XGBoost")
