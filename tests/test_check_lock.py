"""CI's dvc.lock check: it passes a coherent run and names each way a lock can disagree with the
committed code, params, metrics or its own upstream stages."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / ".ci" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def repo(tmp_path):
    """Two stages as `dvc repro` would lock them: `make` runs make.py into a cached data file,
    `score` reads it and writes an uncached metrics file, with one param."""
    (tmp_path / "make.py").write_bytes(b"print('make')\n")
    (tmp_path / "score.json").write_bytes(b'{"fid": 4.2}\n')
    data_md5 = md5(b"arrays")
    lock = {"stages": {
        "make": {"deps": [{"path": "make.py", "md5": md5(b"print('make')\n")}],
                 "outs": [{"path": "data.npz", "md5": data_md5}]},
        "score": {"deps": [{"path": "data.npz", "md5": data_md5}],
                  "params": {"params.yaml": {"evaluate.sets": 10}},
                  "outs": [{"path": "score.json", "md5": md5(b'{"fid": 4.2}\n')}]},
    }}
    return tmp_path, lock, {"evaluate": {"sets": 10}}


# What dvc.yaml declares for the fixture's stages: (input paths, param keys).
DECLARED = {"make": ({"make.py"}, set()), "score": ({"data.npz"}, {"evaluate.sets"})}


def test_a_coherent_lock_passes(check_lock, repo):
    root, lock, params = repo
    assert check_lock.lock_problems(lock, params, DECLARED, root) == []


def test_edited_code_is_reported(check_lock, repo):
    root, lock, params = repo
    (root / "make.py").write_bytes(b"print('changed')\n")
    assert check_lock.lock_problems(lock, params, DECLARED, root) == [
        "make: ran with another version of make.py"]


def test_a_stage_that_read_another_run_s_output_is_reported(check_lock, repo):
    root, lock, params = repo
    lock["stages"]["score"]["deps"][0]["md5"] = md5(b"other arrays")
    (problem,) = check_lock.lock_problems(lock, params, DECLARED, root)
    assert problem.startswith("score: read data.npz") and "but make recorded" in problem


def test_changed_params_missing_stages_and_edited_metrics_are_reported(check_lock, repo):
    root, lock, params = repo
    params["evaluate"]["sets"] = 50
    (root / "score.json").write_bytes(b'{"fid": 1.0}\n')
    problems = check_lock.lock_problems(lock, params, DECLARED | {"fid_table": (set(), set())}, root)
    assert problems == [
        "fid_table: never ran (no dvc.lock entry)",
        "score: ran with evaluate.sets = 10, params.yaml has 50",
        "score: committed score.json is not the file this run wrote",
    ]


def test_folder_inputs_are_hashed_like_dvc_from_committed_and_stage_made_files(check_lock, repo):
    # `table` reads a folder holding a committed metrics file and a model only the `make` stage made
    # (absent here, as in a fresh clone): its hash must follow both.
    root, lock, params = repo
    (root / "results").mkdir()
    (root / "results" / "fid.json").write_bytes(b"{}\n")
    lock["stages"]["make"]["outs"].append({"path": "results/model.pt", "md5": md5(b"weights")})
    listing = [{"md5": md5(b"{}\n"), "relpath": "fid.json"}, {"md5": md5(b"weights"), "relpath": "model.pt"}]
    folder_md5 = md5(json.dumps(listing, sort_keys=True).encode()) + ".dir"
    lock["stages"]["table"] = {"deps": [{"path": "results", "md5": folder_md5}]}
    stages = DECLARED | {"table": ({"results"}, set())}
    assert check_lock.lock_problems(lock, params, stages, root) == []
    (root / "results" / "fid.json").write_bytes(b'{"edited": 1}\n')
    assert check_lock.lock_problems(lock, params, stages, root) == ["table: read another version of the folder results"]


def test_an_input_or_param_declared_after_the_run_is_reported(check_lock, repo):
    # dvc.yaml gained an input (a module the stage imports) and a param key; the lock predates both
    root, lock, params = repo
    params["evaluate"]["seed"] = 2024
    declared = DECLARED | {"score": ({"data.npz", "src/fid.py"}, {"evaluate.sets", "evaluate.seed"})}
    assert check_lock.lock_problems(lock, params, declared, root) == [
        "score: dvc.yaml declares input src/fid.py, which this run did not record",
        "score: dvc.yaml declares param evaluate.seed, which this run did not record",
    ]


def test_declared_inputs_reads_dvc_yaml_as_dvc_resolves_it(check_lock):
    declared = check_lock.declared_inputs(ROOT)
    paths, keys = declared["train_sarnet_vae_data@fashion"]  # a foreach stage, its templates filled in
    assert "pipeline/train_model.py" in paths and "data/prepared/fashion.npz" in paths
    assert "sarnet_vae_data.fashion" in keys and "calibrate" in declared


def test_declared_inputs_are_named_by_stage_from_any_working_directory(check_lock, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVC's own stage addresses would then be paths relative to here
    declared = check_lock.declared_inputs(ROOT)
    assert "calibrate" in declared and "prepare@mnist" in declared
