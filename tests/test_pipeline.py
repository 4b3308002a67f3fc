"""The stage scripts as DVC runs them: one-line errors, no partial outputs, the CI profile merge."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_stage(tmp_path, script, *args, env=None, params=None):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params or {"prepare": {"data_dir": None}}))
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


def test_profile_with_unknown_key_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("a: {b: 1}\n")
    (tmp_path / "bad.yaml").write_text("a: {c: 2}\n")
    result = subprocess.run([sys.executable, str(ROOT / "pipeline" / "apply_profile.py"), "bad.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "'c' is not in params.yaml" in result.stderr
    assert (tmp_path / "params.yaml").read_text() == "a: {b: 1}\n"
