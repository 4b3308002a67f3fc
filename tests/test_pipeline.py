"""The stage scripts as DVC runs them: one-line errors, no partial outputs, the CI profile merge."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarnet.errors import ConfigError, SarnetError

ROOT = Path(__file__).resolve().parents[1]


def run_stage(tmp_path, script, *args, env=None, params=None):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or {"prepare": {"data_dir": None, "download_dir": "data/raw"}}))
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "pipeline" / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, env=environment, timeout=120)


def test_unknown_dataset_is_a_one_line_error(tmp_path):
    result = run_stage(tmp_path, "prepare.py", "cifar")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown dataset 'cifar'")
    assert "Traceback" not in result.stderr


def test_missing_data_folder_names_it_and_writes_nothing(tmp_path):
    result = run_stage(tmp_path, "prepare.py", "mnist", env={"SARNET_DATA_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "nowhere" in last
    assert not (tmp_path / "data" / "prepared" / "mnist.npz").exists()
    assert not (tmp_path / "metrics").exists()


def test_ci_profile_overrides_only_its_keys(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    subprocess.run([sys.executable, str(ROOT / "pipeline" / "apply_profile.py"), str(ROOT / "params-ci.yaml")],
                   cwd=tmp_path, check=True, capture_output=True)
    merged = yaml.safe_load((tmp_path / "params.yaml").read_text())
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = yaml.safe_load((ROOT / "params-ci.yaml").read_text())
    assert merged["train_classifier"]["epochs"] == profile["train_classifier"]["epochs"]
    assert merged["train_classifier"]["lr"] == full["train_classifier"]["lr"]
    assert merged["sarnet_vae"]["hidden"] == full["sarnet_vae"]["hidden"]
    assert set(merged) == set(full)


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def test_ci_profile_keeps_comments_and_touches_only_overridden_lines(tmp_path):
    """`make ci-profile` must not rewrite params.yaml: every comment stays, and exactly one line
    changes per overridden value (flow-style entries such as `sarnet_vae_data.fashion` hold several)."""
    original = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    subprocess.run([sys.executable, str(ROOT / "pipeline" / "apply_profile.py"), str(ROOT / "params-ci.yaml")],
                   cwd=tmp_path, check=True, capture_output=True)
    after = (tmp_path / "params.yaml").read_text()
    before_lines, after_lines = original.splitlines(), after.splitlines()
    assert len(before_lines) == len(after_lines)
    changed = [(a, b) for a, b in zip(before_lines, after_lines) if a != b]
    comments = lambda lines: [line.split("#", 1)[1] for line in lines if "#" in line]  # noqa: E731
    assert comments(before_lines) == comments(after_lines)
    full, profile = yaml.safe_load(original), yaml.safe_load((ROOT / "params-ci.yaml").read_text())
    differing = {k for k, v in _leaves(profile).items() if _leaves(full)[k] != v}
    assert 0 < len(changed) <= len(differing)
    assert _leaves(yaml.safe_load(after)) == _leaves(full) | _leaves(profile)


def test_a_missing_profile_or_params_file_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "pipeline" / "apply_profile.py"), "nope.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "params.yaml: no such file" in result.stderr
    (tmp_path / "params.yaml").write_text("a: 1\n")
    result = subprocess.run([sys.executable, str(ROOT / "pipeline" / "apply_profile.py"), "nope.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1 and "nope.yaml: no such file" in result.stderr and "Traceback" not in result.stderr


def test_profile_with_unknown_key_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("a: {b: 1}\n")
    (tmp_path / "bad.yaml").write_text("a: {c: 2}\n")
    result = subprocess.run([sys.executable, str(ROOT / "pipeline" / "apply_profile.py"), "bad.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "'a.c' is not in params.yaml" in result.stderr
    assert (tmp_path / "params.yaml").read_text() == "a: {b: 1}\n"


# ----------------------------------------------------------------- other training sets (§4.3, §5.2)

def _load_stage_helpers(tmp_path, all_params):
    """pipeline/_stage.py reads params.yaml from the working directory: give it one in tmp_path."""
    import importlib

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(all_params))
    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        module = importlib.import_module("_stage")
    finally:
        sys.path.remove(str(ROOT / "pipeline"))
    return module


def test_training_set_entry_overrides_only_its_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"dataset": "mnist", "digit": 5, "train_limit": None, "epochs": 200, "lr": 0.001}
    helpers = _load_stage_helpers(tmp_path, {"sarnet_vae": base, "sarnet_vae_data": {
        "fashion": {"dataset": "fashion", "digit": None, "latent_dim": 128, "epochs": 20},
        "cifar": {"dataset": "cifar", "latent_dim": 128},
        "typo": {"epoch": 3, "latent_dim": 128}}})
    assert helpers.model_params("sarnet_vae") == base
    merged = helpers.model_params("sarnet_vae", "fashion")
    assert (merged["dataset"], merged["digit"], merged["epochs"], merged["lr"]) == ("fashion", None, 20, 0.001)
    assert "latent_dim" not in merged  # the entry's latent dimension is the stage's argument, not a model param
    with pytest.raises(SarnetError, match=r"no variant 'boots' under `sarnet_vae_data` \(have: cifar, fashion, typo\)"):
        helpers.model_params("sarnet_vae", "boots")
    with pytest.raises(SarnetError, match="unknown dataset 'cifar'"):
        helpers.model_params("sarnet_vae", "cifar")
    with pytest.raises(SarnetError, match=r"\['epoch'\]"):
        helpers.model_params("sarnet_vae", "typo")


def test_a_section_without_its_data_keys_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    helpers = _load_stage_helpers(tmp_path, {"sarnet_vae": {"dataset": "mnist", "digit": 5, "epochs": 2}})
    with pytest.raises(SarnetError, match="`sarnet_vae` has no 'train_limit'"):
        helpers.model_params("sarnet_vae")


def test_missing_or_invalid_params_file_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    helpers = _load_stage_helpers(tmp_path, {"prepare": {"data_dir": None}})
    (tmp_path / "params.yaml").write_text("prepare: [unclosed\n")
    with pytest.raises(SarnetError, match="not valid YAML") as info:
        helpers.params("prepare")
    assert "\n" not in str(info.value)
    (tmp_path / "params.yaml").unlink()
    with pytest.raises(SarnetError, match="params.yaml: params file not found") as info:
        helpers.params("prepare")
    assert "\n" not in str(info.value)


def test_unknown_training_set_is_a_one_line_error_before_training(tmp_path):
    result = run_stage(tmp_path, "train_model.py", "sarnet_vae", "128", "boots",
                       params={"sarnet_vae": {"dataset": "mnist", "digit": 5, "train_limit": None},
                               "sarnet_vae_data": {"fashion": {"dataset": "fashion"}}})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: params.yaml: no variant 'boots' under `sarnet_vae_data` (have: fashion)"
    assert not (tmp_path / "models").exists()


def test_interpolation_pairs_by_label_take_each_class_first_test_image(tmp_path, monkeypatch):
    import importlib

    import numpy as np

    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        figures = importlib.import_module("figures")
    finally:
        sys.path.remove(str(ROOT / "pipeline"))
    labels = np.array([7, 2, 4, 3, 5, 4, 5])
    assert figures._interpolation_pairs({"interpolate_labels": [[4, 5], [3, 4]]}, labels) == [[2, 4], [3, 2]]
    assert figures._interpolation_pairs({"interpolate_pairs": [(0, 1)]}, labels) == [[0, 1]]
    with pytest.raises(ConfigError, match=r"\[9, 5\]"):
        figures._interpolation_pairs({"interpolate_labels": [[9, 5]]}, labels)


def test_fid_table_stage_renders_a_partial_run(tmp_path):
    """The stage on the committed calibration file and one evaluation: that row filled, the rest 'not run'."""
    import json
    import shutil

    (tmp_path / "metrics" / "fid").mkdir(parents=True)
    shutil.copy(ROOT / "metrics" / "calibration.json", tmp_path / "metrics" / "calibration.json")
    (tmp_path / "metrics" / "fid" / "sets").mkdir()
    record = {"sets": 3, "mean": 5.0, "std": 1.0, "n_images": 10000, "real_pool": 892}
    (tmp_path / "metrics" / "fid" / "sarnet_vae_L128.json").write_text(json.dumps(record))
    (tmp_path / "metrics" / "fid" / "sets" / "sarnet_vae_L128.json").write_text(json.dumps([4.0, 5.0, 6.0]))
    timing = tmp_path / "metrics" / "timing"
    for folder, name, seconds in (("fid", "sarnet_vae_L128", 12.5), ("train", "sarnet_vae_L128", 600.0),
                                  ("train", "sarnet_vae_L64", 700.0)):  # L64: trained, never scored
        (timing / folder).mkdir(parents=True, exist_ok=True)
        (timing / folder / f"{name}.json").write_text(json.dumps({"seconds": seconds}))
    # a stage that recorded its machine's GEMM-1024 time counts in GEMM units too: 600 s / 4 ms = 150,000
    (timing / "train" / "sarnet_vae_L128.json").write_text(json.dumps({"seconds": 600.0, "run": {"gemm1024_ms": 4.0}}))
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    result = run_stage(tmp_path, "fid_table.py", params=full)
    assert result.returncode == 0, result.stderr
    assert "not evaluated: sarnet_vae_L64" in result.stderr
    table = (tmp_path / "metrics" / "fid_table.md").read_text()
    assert "| 128 | 5.000 ± 1.000 (3) | — | 1.535 ± 0.080 | not run | — | 2.018 ± 0.122 |" in table  # — : no MLP FID
    assert "No comparison has been scored by both instruments yet." in table
    blur = json.loads((ROOT / "metrics" / "calibration.json").read_text())["rows"]["blur_0.5"]
    assert f"scores {blur['fid']:.3f} with our classifier and {blur['thesis_fid']:.3f}" in table
    assert (tmp_path / "metrics" / "fid_sets.csv").read_text().count("sarnet_vae_L128") == 3
    wall = json.loads((tmp_path / "metrics" / "wall_time.json").read_text())
    assert wall["stages"]["fid/sarnet_vae_L128"] == 12.5 and wall["stages"]["train/sarnet_vae_L128"] == 600.0
    assert "train/sarnet_vae_L64" not in wall["stages"]
    assert wall["total_seconds"] == round(sum(wall["stages"].values()), 1)
    assert wall["gemm_units"] == {"train/sarnet_vae_L128": 150000} and wall["total_gemm_units"] == 150000
    assert wall["stages_without_gemm_time"] == ["fid/sarnet_vae_L128"]


def _stage_module():
    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        import _stage
    finally:
        sys.path.remove(str(ROOT / "pipeline"))
    return _stage


def test_results_are_numbers_only_and_timings_go_to_their_own_file(tmp_path, monkeypatch):
    """`dvc metrics diff` must compare results: no names, no timings in a metrics file."""
    import json

    _stage = _stage_module()
    monkeypatch.chdir(tmp_path)
    timing = _stage.write_results("train/m", {"loss": 1.5, "epoch": 3, "rows": {"a": {"fid": 2.0}}}, {"seconds_per_epoch": 0.5})
    assert json.loads((tmp_path / "metrics" / "train" / "m.json").read_text()) == {"loss": 1.5, "epoch": 3,
                                                                                   "rows": {"a": {"fid": 2.0}}}
    written = json.loads((tmp_path / "metrics" / "timing" / "train" / "m.json").read_text())
    run = written.pop("run")
    assert written == timing and written["seconds_per_epoch"] == 0.5 and written["seconds"] >= 0
    # where it ran: a UTC date, the commit (none: tmp_path is no git repository), the CPU, the GEMM time
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["date"]) and run["commit"] == "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = {line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")}
        assert run["cpu"] in names
    assert 0 < run["gemm1024_ms"] < 10_000
    for bad in ({"name": "sarnet_vae_L8"}, {"ok": True}, {"fids": [1.0, 2.0]}, {"rows": {"a": {"label": "x"}}},
                {"mean": float("nan")}):
        with pytest.raises(TypeError, match="finite numbers only"):
            _stage.write_results("train/bad", bad)
    assert not (tmp_path / "metrics" / "train" / "bad.json").exists()


def test_run_name_is_the_dvc_stage(monkeypatch):
    _stage = _stage_module()
    monkeypatch.setenv("DVC_STAGE", "evaluate_vae@sarnet_vae-128")
    assert _stage.run_name("whatever") == "evaluate_vae@sarnet_vae-128"
    monkeypatch.delenv("DVC_STAGE")
    assert _stage.run_name("evaluate_vae@sarnet_vae-128") == "evaluate_vae@sarnet_vae-128"


def test_scripts_spell_their_dvc_stage_names_like_dvc():
    """Outside DVC a run is named by the script; those names must be dvc.yaml's stage names."""
    from dvc.repo import Repo

    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        from _model_spec import ModelSpec
    finally:
        sys.path.remove(str(ROOT / "pipeline"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    specs = [ModelSpec("sarnet", None, None, "sarnet", {}, "sarnet"), ModelSpec("gen_xgboost", None, None, "gen_xgboost", {}, "")]
    specs += [ModelSpec(k, L, None, f"{k}_L{L}", {}, k) for k in ("sarnet_vae", "conv_vae") for L in params["latent_dims"]]
    specs += [ModelSpec("sarnet_vae", v["latent_dim"], key, "", {}, "") for key, v in params["sarnet_vae_data"].items()]
    specs += [ModelSpec("sarnet", None, key, "", {}, "") for key in params["sarnet_data"]]
    specs += [ModelSpec(v["kind"], v.get("latent_dim"), None, key, {}, "", baseline=True) for key, v in params["baselines"].items()]
    spelled = {spec.dvc_stage(action) for spec in specs for action in ("train", "evaluate")}
    spelled.discard("train_gen_xgboost")  # its training is train_xgboost, a script of its own
    assert len(spelled) == 2 * len(specs) - 1
    with Repo(str(ROOT)) as repo:
        names = {stage.name for stage in repo.index.stages}
    assert spelled <= names, spelled - names


# -- baselines: an entry of params.yaml's `baselines` is a whole model section -----------------------

BASELINE = {"kind": "beta_vae", "latent_dim": 8, "kl_weight": 2.0, "budget_minutes": 6, "dataset": "mnist",
            "digit": 5, "train_limit": None, "epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.001}


def _model_spec_module(tmp_path, all_params):
    import importlib

    _load_stage_helpers(tmp_path, all_params)
    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        return importlib.import_module("_model_spec")
    finally:
        sys.path.remove(str(ROOT / "pipeline"))


def test_a_baseline_entry_is_its_own_model_section_and_names_its_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = _model_spec_module(tmp_path, {"baselines": {"beta_vae_b2_l8": BASELINE}})
    spec = module.model_spec("baseline", "beta_vae_b2_l8")
    assert (spec.kind, spec.latent, spec.name, spec.baseline) == ("beta_vae", 8, "beta_vae_b2_l8", True)
    assert "kind" not in spec.params and "budget_minutes" not in spec.params and spec.params["kl_weight"] == 2.0
    assert str(spec.model_path) == "models/beta_vae/beta_vae_b2_l8.safetensors"
    assert (spec.dvc_stage("train"), spec.dvc_stage("evaluate")) == ("train_baseline@beta_vae_b2_l8",
                                                                     "evaluate_baseline@beta_vae_b2_l8")


@pytest.mark.parametrize("args, entries, message", [
    (("baseline", "gan"), {"dcgan": BASELINE}, "no baseline 'gan' under `baselines` (have: dcgan)"),
    (("baseline",), {"dcgan": BASELINE}, "usage: baseline <name>"),
    (("baseline", "x"), {"x": {**BASELINE, "kind": "vae"}}, "unknown generator 'vae'"),
    (("baseline", "x"), {"x": {k: v for k, v in BASELINE.items() if k != "latent_dim"}}, "needs a latent dimension"),
    (("baseline", "X y"), {"X y": BASELINE}, "use lower-case letters"),
    (("baseline", "x"), {"x": {k: v for k, v in BASELINE.items() if k != "digit"}}, "`baselines.x` has no 'digit'"),
])
def test_a_bad_baseline_is_one_line_before_any_work(tmp_path, monkeypatch, args, entries, message):
    monkeypatch.chdir(tmp_path)
    module = _model_spec_module(tmp_path, {"baselines": entries})
    with pytest.raises(SarnetError, match=re.escape(message)) as info:
        module.model_spec(*args)
    assert "\n" not in str(info.value)
