"""CI check: every metrics file the pipeline declares exists, parses, and holds finite numbers."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from sarnet.core.model_files import THESIS_KINDS
from sarnet.core.params import resolve_models
from sarnet.families import model_class

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
    if sum(load_json(f"metrics/prepare/{ds}_labels.json").get("test", [])) != m.get("test_images"):
        problems.append(f"metrics/prepare/{ds}_labels.json: label counts do not add up to the test size")
    for name in (ds, f"{ds}_mlp"):  # the two FID instruments
        path = f"metrics/classifier/{name}.json"
        m = load_json(path)
        finite(path, "test_accuracy", m.get("test_accuracy"))
        if not 0.5 < m.get("test_accuracy", 0) <= 1:
            problems.append(f"{path}: test_accuracy {m.get('test_accuracy')} is not a trained classifier's")
        rows = list(csv.DictReader(open(f"metrics/classifier/{name}_history.csv")))
        if not rows:
            problems.append(f"metrics/classifier/{name}_history.csv: no epochs")

path = "metrics/calibration.json"
m = load_json(path)
rows = m.get("rows", {})
if len(rows) != 9:
    problems.append(f"{path}: {len(rows)} calibration rows, expected 9")
for group, values in m.get("references", {}).items():
    for key, value in values.items():
        finite(path, f"references.{group}.{key}", value)
if set(m.get("references", {})) != {"class", "all_digits"}:
    problems.append(f"{path}: no real-data references (class, all_digits) for the inception score and its companions")
for key, row in rows.items():
    for instrument in ("cnn", "mlp"):
        for stat in ("fid", "ratio"):
            finite(path, f"{key}.{instrument}.{stat}", row.get(instrument, {}).get(stat))
table = [line for line in Path("metrics/calibration.md").read_text().splitlines() if line.startswith("| ")]
if len(table) != 2 + len(rows):
    problems.append(f"metrics/calibration.md: {len(table)} table lines, expected {2 + len(rows)}")

MODELS = resolve_models(PARAMS)  # every generator of the shared training loop, by name, with its base's settings
BASELINES = {name: entry for name, entry in MODELS.items() if entry["kind"] not in THESIS_KINDS}  # the seeds' generators
for name, entry in MODELS.items():
    kind = entry["kind"]
    path = f"metrics/train/{name}.json"
    m = load_json(path)
    pixel_nll = ("test_nll_nats", "test_bits_per_dim", "sample_nll_nats", "sample_bits_per_dim")  # the audit: own samples' NLL beside the test NLL
    expected = {"gan_mlp": (), "dcgan": (), "pixelcnn": pixel_nll, "pixelrnn_row": pixel_nll,
                "vqvae": ("test_mse", "test_l1", "codebook_perplexity", "codes_used", "prior_test_nll_nats",
                          "prior_sample_nll_nats")
                }.get(kind, ("test_mse", "test_l1"))
    for key in ("final_train_loss", "final_test_loss", *expected):
        finite(path, key, m.get(key))
    finite(f"metrics/timing/train/{name}.json", "seconds_per_epoch", load_json(f"metrics/timing/train/{name}.json").get("seconds_per_epoch"))
    history = list(csv.DictReader(open(f"metrics/train/{name}/history.csv")))
    if len(history) != entry["epochs"]:
        problems.append(f"metrics/train/{name}/history.csv: {len(history)} epochs, params say {entry['epochs']}")
    grids = [f"metrics/train/{name}/samples.png"] + ([f"metrics/train/{name}/reconstruction.png"]
                                                     if model_class(kind).reconstructs else [])
    if name in BASELINES:
        steps = list(csv.DictReader(open(f"metrics/train/{name}/steps.csv")))
        if not steps or not all(math.isfinite(float(row["train_loss"])) for row in steps):
            problems.append(f"metrics/train/{name}/steps.csv: no steps, or a non-finite loss")
    for grid in grids:
        if not Path(grid).read_bytes().startswith(b"\x89PNG"):
            problems.append(f"{grid}: not a PNG")
    if "curve_every" in entry:  # the learning curve: a validation FID at every k-th epoch and the last
        curve = list(csv.DictReader(open(f"metrics/train/{name}/fid_curve.csv")))
        epochs = [int(row["epoch"]) for row in curve]
        expected_epochs = sorted({*range(entry["curve_every"], entry["epochs"] + 1, entry["curve_every"]), entry["epochs"]})
        if epochs != expected_epochs or not all(math.isfinite(float(row["val_fid"])) for row in curve):
            problems.append(f"metrics/train/{name}/fid_curve.csv: epochs {epochs}, expected {expected_epochs} with finite FIDs")

path = "metrics/gen_xgboost.json"
m = load_json(path)
finite(path, "reconstruction_mae", m.get("reconstruction_mae"))
for key in ("train_seconds", "generation_images_per_second"):
    finite("metrics/timing/gen_xgboost.json", key, load_json("metrics/timing/gen_xgboost.json").get(key))
if m.get("models") != 391 and PARAMS["gen_xgboost"]["patch"] == 2:
    problems.append(f"{path}: {m.get('models')} models, expected 391 for 2×2 patches")

# The FID table: one evaluation per generator, with the protocol's number of sets ...
evaluate = PARAMS["evaluate"]
evaluated = {name: evaluate["sets_by_model"].get(name, evaluate["sets"]) for name in [*MODELS, "gen_xgboost"]}
DIGIT = {name: entry["digit"] for name, entry in MODELS.items()} | {"gen_xgboost": PARAMS["gen_xgboost"]["digit"]}
fid = {}
for name, sets in evaluated.items():
    path = f"metrics/fid/{name}.json"
    m = fid[name] = load_json(path)
    by_instrument = json.loads(Path(f"metrics/fid/sets/{name}.json").read_text())
    fids, mlp = by_instrument.get("cnn", []), by_instrument.get("mlp", [])
    if m.get("sets") != sets or len(fids) != sets or len(mlp) != sets:
        problems.append(f"{path}: {len(fids)} CNN and {len(mlp)} MLP per-set FIDs (sets={m.get('sets')}), params say {sets}")
    for instrument, per_set in (("cnn", fids), ("mlp", mlp)):
        stats = m.get(instrument, {})
        for key in ("mean", "std"):
            finite(path, f"{instrument}.{key}", stats.get(key))
        for i, value in enumerate(per_set):
            finite(path, f"{instrument} set {i}", value)
        if per_set and abs(sum(per_set) / len(per_set) - stats.get("mean", math.nan)) > 1e-4:
            problems.append(f"{path}: {instrument}.mean {stats.get('mean')} is not the mean of its per-set FIDs")
    for key in ("is_mean", "is_std", "sharpness", "logit_spread_ratio", "nearest_train_distance"):
        finite(path, key, m.get(key))
    if DIGIT[name] is not None:
        finite(path, "class_rate", m.get("class_rate"))  # every model of one class
    if not Path(f"metrics/fid/samples/{name}.png").read_bytes().startswith(b"\x89PNG"):
        problems.append(f"metrics/fid/samples/{name}.png: not a PNG")
    try:
        with np.load(f"metrics/fid/samples/{name}.npz") as kept:  # the committed images anyone can score
            images = kept["images"]
    except (OSError, KeyError, ValueError) as exc:
        problems.append(f"metrics/fid/samples/{name}.npz: {exc}")
        continue
    if images.dtype != np.uint8 or images.shape != (min(1000, m.get("n_images", 0)), 28, 28):
        problems.append(f"metrics/fid/samples/{name}.npz: {images.dtype} {images.shape}, expected uint8 "
                        f"({min(1000, m.get('n_images', 0))}, 28, 28)")

# ... and the Markdown table shows exactly those numbers: "mean ± std (sets)" in every row.
cell = re.compile(r"(\d+\.\d{3}) ± (\d+\.\d{3}) \((\d+)\)")
table = Path("metrics/fid_table.md").read_text()
if "**What holds on both instruments.**" not in table or "Spearman rank correlation between the instruments" not in table:
    problems.append("metrics/fid_table.md: no 'what holds on both instruments' section")
latent_rows = {int(line.split("|")[1]): line for line in table.splitlines() if re.match(r"\| \d+ \|", line)}
TABLE_LATENTS = {name: entry["latent_dim"] for name, entry in MODELS.items()
                 if entry["kind"] in ("sarnet_vae", "conv_vae") and name == f"{entry['kind']}_L{entry['latent_dim']}"}
if sorted(latent_rows) != sorted(set(TABLE_LATENTS.values())):
    problems.append(f"metrics/fid_table.md: rows for L = {sorted(latent_rows)}, params say {sorted(set(TABLE_LATENTS.values()))}")
shown = {}
for L, line in latent_rows.items():
    found = cell.findall(line)
    if len(found) != 2:
        problems.append(f"metrics/fid_table.md: L = {L} row has {len(found)} parsable results, expected 2: {line}")
        continue
    shown[f"sarnet_vae_L{L}"], shown[f"conv_vae_L{L}"] = found


def one_result(matches, what: str) -> "tuple | None":
    """The one parsable mean ± std (sets) of the FID table's first row for which matches(line) holds."""
    found = cell.findall(next((l for l in table.splitlines() if matches(l)), ""))
    if len(found) != 1:
        problems.append(f"metrics/fid_table.md: no parsable row for {what}")
        return None
    return found[0]


rows = {name: one_result(lambda l, label=label: l.startswith(f"| {label} |"), label)
        for name, label in (("sarnet", "simple SarNET"), ("gen_xgboost", "generative XGBoost"))}
VARIANTS = {name: name.removeprefix("sarnet_vae_").removesuffix(f"_L{entry['latent_dim']}") for name, entry in MODELS.items()
            if entry["kind"] == "sarnet_vae" and name not in TABLE_LATENTS}  # the SarNET VAE on other training sets
SARNET_VARIANTS = {name: name.removeprefix("sarnet_") for name, entry in MODELS.items()
                   if entry["kind"] == "sarnet" and name != "sarnet"}  # §4.1's simple SarNET variants
rows |= {name: one_result(lambda l, key=key: f"training set `{key}`" in l, f"training set {key}")
         for name, key in VARIANTS.items()}
rows |= {name: one_result(lambda l, key=key: l.startswith(f"| simple SarNET `{key}`:"), f"simple SarNET variant {key}")
         for name, key in SARNET_VARIANTS.items()}
rows |= {name: one_result(lambda l, name=name: l.startswith(f"| `{name}`:"), f"baseline {name}") for name in BASELINES}
shown |= {name: result for name, result in rows.items() if result is not None}
for name in BASELINES:
    if not re.search(rf"^- `{name}`: \d+\.\d min of ", Path("metrics/budgets.md").read_text(), re.M):
        problems.append(f"metrics/budgets.md: no budget line for baseline {name}")
ablation = Path("metrics/sarnet_ablation.md").read_text() if Path("metrics/sarnet_ablation.md").exists() else ""
for key in SARNET_VARIANTS.values():
    if f"`{key}`" in ablation and "not run" in next(l for l in ablation.splitlines() if f"`{key}`" in l):
        problems.append(f"metrics/sarnet_ablation.md: variant {key} reads 'not run'")
if not ablation:
    problems.append("metrics/sarnet_ablation.md: missing")
for name, (mean, std, sets) in shown.items():
    m = fid.get(name, {})
    cnn = m.get("cnn", {})
    if (float(mean), float(std), int(sets)) != (round(cnn.get("mean", math.nan), 3), round(cnn.get("std", math.nan), 3), m.get("sets")):
        problems.append(f"metrics/fid_table.md: {name} shows {mean} ± {std} ({sets}), metrics/fid/{name}.json says "
                        f"{cnn.get('mean')} ± {cnn.get('std')} ({m.get('sets')})")
set_rows = list(csv.DictReader(open("metrics/fid_sets.csv")))
if len(set_rows) != sum(evaluated.values()):
    problems.append(f"metrics/fid_sets.csv: {len(set_rows)} rows, expected {sum(evaluated.values())}")
if not Path("metrics/fid_vs_latent.png").read_bytes().startswith(b"\x89PNG"):
    problems.append("metrics/fid_vs_latent.png: not a PNG")
wall = load_json("metrics/wall_time.json")
finite("metrics/wall_time.json", "total_seconds", wall.get("total_seconds"))
if not any(stage.startswith("fid/") for stage in wall.get("stages", {})):
    problems.append("metrics/wall_time.json: no evaluation stage recorded")

# The figures stages: three PNGs and a JSON per figure set.
for figure_set in PARAMS["figures"]:
    finite(f"metrics/timing/figures/{figure_set}.json", "seconds",
           load_json(f"metrics/timing/figures/{figure_set}.json").get("seconds"))
    for part in ("inpainting", "importance", "interpolation"):
        png = Path(f"metrics/figures/{figure_set}_{part}.png")
        if not (png.exists() and png.read_bytes().startswith(b"\x89PNG")):
            problems.append(f"{png}: missing or not a PNG")

# Every metrics file dvc.yaml declares holds finite numbers only (no names, no timings), so that
# `dvc metrics diff` and `dvc exp show` compare results; timings live in metrics/timing/.
def numbers_only(path: str, value, where: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            numbers_only(path, item, f"{where}.{key}" if where else key)
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{path}: {where or 'top level'} = {value!r} is not a number")
    elif where.split(".")[-1].startswith("seconds") or "per_second" in where:
        problems.append(f"{path}: {where} is a timing; it belongs in metrics/timing/")


declared = subprocess.run(["dvc", "metrics", "show", "--json"], capture_output=True, text=True, check=True)
for path in sorted(p for data in json.loads(declared.stdout).values() for p in data.get("data", {})):
    numbers_only(path, load_json(path))

if problems:
    print("metrics check failed:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"metrics check passed: {len(DATASETS)} datasets, {len(rows)} calibration rows, {len(MODELS)} trained generators, generative XGBoost, "
      f"FID table of {len(evaluated)} generators ({sum(evaluated.values())} sets), {len(PARAMS['figures'])} figure sets")
