"""The stage scripts as DVC runs them: one-line errors, no partial outputs, the CI profile merge."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarnet.core.errors import ConfigError, SarnetError

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


def _apply_ci_profile(tmp_path) -> str:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    subprocess.run([sys.executable, str(ROOT / "pipeline" / "apply_profile.py"), str(ROOT / "params-ci.yaml")],
                   cwd=tmp_path, check=True, capture_output=True)
    return (tmp_path / "params.yaml").read_text()


def test_ci_profile_overrides_only_its_keys(tmp_path):
    merged = yaml.safe_load(_apply_ci_profile(tmp_path))
    full = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = yaml.safe_load((ROOT / "params-ci.yaml").read_text())
    assert merged["train_classifier"]["epochs"] == profile["train_classifier"]["epochs"]
    assert merged["train_classifier"]["lr"] == full["train_classifier"]["lr"]
    assert merged["model_bases"]["sarnet_vae"]["hidden"] == full["model_bases"]["sarnet_vae"]["hidden"]
    assert set(merged) == set(full)
    # a base's override reaches the entries that take it, unless an entry sets the key itself
    from sarnet.core.params import resolve_models

    models = resolve_models(merged)
    assert models["sarnet_vae_L128"]["epochs"] == 2 and models["sarnet"]["epochs"] == 2
    assert models["sarnet_vae_fashion_L128"]["epochs"] == 1
    assert models["sarnet_vae_fashion_L128"]["train_limit"] == 512  # from the overridden base
    assert models["beta_vae_b2_l8"]["epochs"] == 1 and "epochs" not in full["models"]["beta_vae_b2_l8"]  # gains a base's key
    # `remove` drops whole entries, and only those
    removed = {key.split(".", 1)[1] for key in profile["remove"]}
    assert set(merged["models"]) == set(full["models"]) - removed and "sarnet_vae_L64" in removed


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def test_ci_profile_keeps_comments_and_touches_only_overridden_lines(tmp_path):
    """`make ci-profile` must not rewrite params.yaml: every comment stays, one line changes per overridden
    value at most (flow-style entries hold several), a removed entry takes its lines with it, and every
    value is the profile's where it sets one and the full file's elsewhere."""
    original = (ROOT / "params.yaml").read_text()
    after = _apply_ci_profile(tmp_path)
    profile = yaml.safe_load((ROOT / "params-ci.yaml").read_text())
    removed = {key.split(".", 1)[1] for key in profile.pop("remove")}
    before_lines = [line for line in original.splitlines() if not any(line.startswith(f"  {m}: ") for m in removed)]
    after_lines = after.splitlines()
    assert len(before_lines) == len(original.splitlines()) - len(removed) == len(after_lines)
    changed = [(a, b) for a, b in zip(before_lines, after_lines) if a != b]
    comments = lambda lines: [line.split("#", 1)[1] for line in lines if "#" in line]  # noqa: E731
    assert comments(before_lines) == comments(after_lines)
    full, overrides = yaml.safe_load(original), _leaves(profile)
    assert 0 < len(changed) <= sum(_leaves(full).get(k) != v for k, v in overrides.items())
    kept = {k: v for k, v in _leaves(full).items() if not (k.startswith("models.") and k.split(".")[1] in removed)}
    assert _leaves(yaml.safe_load(after)) == kept | overrides


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


ID = "kind: sarnet_vae, family: sarnet_vae, uses: masked/semidense.py"
TABLE = f"""
model_bases:
  vae: {{digit: 5, train_limit: null, epochs: 200, lr: 0.001}}
models:
  sarnet_vae_L8: {{{ID}, dataset: mnist, latent_dim: 8, base: vae}}
  sarnet_vae_fashion_L128: {{{ID}, dataset: fashion, latent_dim: 128, base: vae, digit: null, epochs: 20}}
  sarnet_vae_cifar_L8: {{{ID}, dataset: cifar, latent_dim: 8, base: vae}}
"""


def _model_spec_module(tmp_path, text: str):
    import importlib

    (tmp_path / "params.yaml").write_text(text)
    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        importlib.import_module("_stage")
        return importlib.import_module("_model_spec")
    finally:
        sys.path.remove(str(ROOT / "pipeline"))


def test_an_entry_takes_its_base_and_overrides_only_its_own_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = _model_spec_module(tmp_path, TABLE)
    plain, fashion = module.model_spec("sarnet_vae_L8"), module.model_spec("sarnet_vae_fashion_L128")
    assert plain.params == {"dataset": "mnist", "digit": 5, "train_limit": None, "epochs": 200, "lr": 0.001}
    assert (fashion.kind, fashion.latent, fashion.name) == ("sarnet_vae", 128, "sarnet_vae_fashion_L128")
    assert (fashion.params["dataset"], fashion.params["digit"], fashion.params["epochs"], fashion.params["lr"]) == (
        "fashion", None, 20, 0.001)
    assert str(fashion.model_path) == "models/sarnet_vae/sarnet_vae_fashion_L128.safetensors"
    assert (fashion.stage("train"), fashion.stage("evaluate")) == ("train@sarnet_vae_fashion_L128",
                                                                   "evaluate@sarnet_vae_fashion_L128")
    with pytest.raises(SarnetError, match="unknown dataset 'cifar'"):
        module.model_spec("sarnet_vae_cifar_L8")


ENTRY = {"kind": "beta_vae", "family": "conv_vae", "uses": "families/base.py", "latent_dim": 8, "kl_weight": 2.0,
         "dataset": "mnist", "base": "b", "train_limit": None, "epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.001}
BASES = {"b": {"digit": 5}, "empty": {}}


@pytest.mark.parametrize("args, entries, message", [
    (("gan",), {"dcgan": ENTRY}, "no model 'gan' under `models` (have: dcgan)"),
    ((), {"dcgan": ENTRY}, "usage: <name>, a key of params.yaml's `models`"),
    (("x",), {"x": {**ENTRY, "kind": "vae"}}, "`models.x.kind`: unknown kind 'vae'"),
    (("x",), {"x": {**ENTRY, "family": "gans"}}, "`models.x.family` must be 'conv_vae' for a beta_vae, got 'gans'"),
    (("x",), {"x": {**ENTRY, "latent_dim": 0}}, "`models.x.latent_dim` must be a positive integer, got 0"),
    (("X y",), {"X y": ENTRY}, "use letters, digits and single underscores"),
    (("x",), {"x": {**ENTRY, "base": "empty"}}, "`models.x` has no 'digit' (nor has its base)"),
    (("x",), {"x": {**ENTRY, "base": "c"}}, "`models.x.base` must name an entry of `model_bases` (b, empty), got 'c'"),
    (("x",), {"x": [1, 2]}, "`models.x` must be a mapping with a `kind`"),
    (("x",), {"x": {k: v for k, v in ENTRY.items() if k != "latent_dim"}}, "`models.x`: a beta_vae needs a `latent_dim`"),
    (("x",), {"x": {**ENTRY, "kind": "dcgan", "family": "gans"}}, "`models.x`: a dcgan has no latent dimension (got latent_dim 8)"),
    (("x",), {"x": {**ENTRY, "uses": "masked/conv.py"}},
     "`models.x.uses` must be 'families/base.py' (what the beta_vae family builds on), got 'masked/conv.py'"),
])
def test_a_bad_model_entry_is_one_line_before_any_work(tmp_path, monkeypatch, args, entries, message):
    monkeypatch.chdir(tmp_path)
    module = _model_spec_module(tmp_path, yaml.safe_dump({"model_bases": BASES, "models": entries}))
    with pytest.raises(SarnetError, match=re.escape(message)) as info:
        module.model_spec(*args)
    assert "\n" not in str(info.value)


def test_a_model_entry_keeps_only_its_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = yaml.safe_dump({"model_bases": BASES, "models": {"beta_vae_b2_l8": ENTRY}})
    spec = _model_spec_module(tmp_path, text).model_spec("beta_vae_b2_l8")
    assert (spec.kind, spec.latent, spec.name) == ("beta_vae", 8, "beta_vae_b2_l8")
    assert not {"kind", "family", "uses", "latent_dim", "base"} & set(spec.params)
    assert spec.params["kl_weight"] == 2.0 and spec.params["digit"] == 5 and spec.params["dataset"] == "mnist"
    assert str(spec.model_path) == "models/beta_vae/beta_vae_b2_l8.safetensors"


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


def test_an_unknown_model_is_a_one_line_error_before_training(tmp_path):
    result = run_stage(tmp_path, "train_model.py", "boots", params=yaml.safe_load(TABLE))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: no model 'boots' under `models` (have: sarnet_vae_L8, sarnet_vae_cifar_L8, sarnet_vae_fashion_L128)")
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
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning: not evaluated: "))
    assert "sarnet_vae_L64" in warning.split(": ", 2)[2].split(", ") and "sarnet_vae_L128" not in warning
    table = (tmp_path / "metrics" / "fid_table.md").read_text()
    assert "| 128 | 5.000 ± 1.000 (3) | — | 1.535 ± 0.080 | not run | — | 2.018 ± 0.122 |" in table  # — : no MLP FID
    assert "No comparison has been scored by both instruments yet." in table
    blur = json.loads((ROOT / "metrics" / "calibration.json").read_text())["rows"]["blur_0.5"]
    assert f"scores {blur['cnn']['fid']:.3f} with our classifier and {blur['thesis_fid']:.3f}" in table
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
    monkeypatch.setenv("DVC_STAGE", "evaluate@sarnet_vae_L128")
    assert _stage.run_name("whatever") == "evaluate@sarnet_vae_L128"
    monkeypatch.delenv("DVC_STAGE")
    assert _stage.run_name("evaluate@sarnet_vae_L128") == "evaluate@sarnet_vae_L128"


def test_scripts_spell_their_dvc_stage_names_like_dvc():
    """Outside DVC a run is named by the script; those names must be dvc.yaml's stage names."""
    from dvc.repo import Repo

    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        from _model_spec import ModelSpec
    finally:
        sys.path.remove(str(ROOT / "pipeline"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    specs = [ModelSpec(name, entry["kind"], entry.get("latent_dim"), {}) for name, entry in params["models"].items()]
    spelled = {spec.stage(action) for spec in specs for action in ("train", "evaluate")}
    spelled.add(ModelSpec("gen_xgboost", "gen_xgboost", None, {}).stage("evaluate"))
    assert len(spelled) == 2 * len(specs) + 1 and "evaluate_xgboost" in spelled
    with Repo(str(ROOT)) as repo:
        names = {stage.name for stage in repo.index.stages}
    assert spelled <= names, spelled - names


def test_an_evaluation_keeps_its_images_as_uint8_that_sarnet_score_reads_back(tmp_path):
    import importlib

    import numpy as np
    import torch

    from sarnet.cli import _read_images

    sys.path.insert(0, str(ROOT / "pipeline"))
    try:
        evaluate = importlib.import_module("evaluate")
    finally:
        sys.path.remove(str(ROOT / "pipeline"))
    images = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 1.2 - 0.1  # some outside [0, 1]
    evaluate.save_samples(images, str(tmp_path / "kept.npz"))
    with np.load(tmp_path / "kept.npz") as kept:
        assert list(kept) == ["images"]
        pixels = kept["images"]
    by_hand = np.rint(np.clip(images.numpy().reshape(30, 28, 28), 0, 1) * np.float32(255)).astype(np.float64)  # float32, half to even
    assert pixels.dtype == np.uint8 and pixels.shape == (30, 28, 28)
    assert np.array_equal(pixels.astype(np.float64), by_hand)
    assert torch.allclose(_read_images(str(tmp_path / "kept.npz")), torch.from_numpy(by_hand / 255).float(), rtol=0, atol=1e-7)
