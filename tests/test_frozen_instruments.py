"""The FID instruments are committed, frozen bytes (docs/staleness.md): every machine that scores with
them reproduces the committed calibration and the committed accuracies."""

import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sarnet.core.data import load_prepared, prepare_dataset, to_unit_tensor
from sarnet.instruments.calibration import CALIBRATION_ROWS
from sarnet.instruments.classifier import INSTRUMENTS, accuracy, instrument_path
from sarnet.instruments.fid import FidScorer
from sarnet.instruments.loader import load_instrument
from data_dir import DATA_DIR, needs_data

ROOT = Path(__file__).resolve().parents[1]
INSTRUMENT_FILES = [(dataset, instrument) for dataset in ("mnist", "fashion") for instrument in ("cnn", "mlp")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Each dataset as the prepare stage makes it, from the offline raw files."""
    folder = tmp_path_factory.mktemp("prepared")
    paths = {}
    for dataset in ("mnist", "fashion"):
        paths[dataset] = folder / f"{dataset}.npz"
        prepare_dataset(dataset, DATA_DIR, paths[dataset], folder / "raw")
    return paths


def test_the_four_instruments_are_committed_and_their_stages_frozen():
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "models/classifier"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert sorted(tracked) == sorted(instrument_path(d, i).as_posix() for d, i in INSTRUMENT_FILES)
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    for dataset, instrument in INSTRUMENT_FILES:
        stage = stages[f"{INSTRUMENTS[instrument].section}@{dataset}"]
        assert stage.frozen, f"{stage.name} is not frozen"
        (out,) = [o for o in stage.outs if o.def_path.endswith(".safetensors")]
        assert not out.use_cache and out.def_path == instrument_path(dataset, instrument).as_posix()
        assert shlex.split(stage.cmd)[1] == "pipeline/train_classifier.py"


@needs_data
@pytest.mark.parametrize("dataset,instrument", INSTRUMENT_FILES)
def test_each_committed_instrument_reproduces_its_committed_test_accuracy(prepared, dataset, instrument):
    model = load_instrument(ROOT / instrument_path(dataset, instrument), torch.device("cpu"))
    data = load_prepared(prepared[dataset])
    name = dataset if instrument == "cnn" else f"{dataset}_{instrument}"
    committed = json.loads((ROOT / "metrics" / "classifier" / f"{name}.json").read_text())["test_accuracy"]
    found = accuracy(model, to_unit_tensor(data.test.images), torch.from_numpy(data.test.labels))
    assert round(found, 5) == committed


@needs_data
def test_the_committed_instruments_reproduce_the_calibration_s_blur_row(prepared):
    """The blur σ = 0.5 row sets the README's whole scale: both instruments must give its committed FIDs
    to 1e-6 relative on this machine, whatever CPU trained them. The two image sets are drawn as
    `calibrate` draws row i: its own streams, seeded by (seed, i)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())["calibrate"]
    committed = json.loads((ROOT / "metrics" / "calibration.json").read_text())["rows"]["blur_0.5"]
    data = load_prepared(prepared[p["dataset"]], digit=p["digit"])
    index = [row.key for row in CALIBRATION_ROWS].index("blur_0.5")
    rng = np.random.default_rng([p["seed"], index])
    generator = torch.Generator().manual_seed(p["seed"] * 1000 + index)
    real, blurred = CALIBRATION_ROWS[index].make_sets(rng, generator, to_unit_tensor(data.test.images),
                                                      to_unit_tensor(data.train.images), p["n_images"])
    cpu = torch.device("cpu")
    for instrument in ("cnn", "mlp"):
        scorer = FidScorer(load_instrument(ROOT / instrument_path(p["dataset"], instrument), cpu), device=cpu)
        assert scorer.fid(real, blurred) == pytest.approx(committed[instrument]["fid"], rel=1e-6), instrument
