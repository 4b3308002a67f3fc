"""The benchmarks still run against the project as it is: each on its smallest setting, so a renamed
module or params section breaks a test here rather than a benchmark nobody ran (their ratios are
measured by running them, never asserted here)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, args, expected", [
    ("training_profile.py", ["--steps", "1", "--top", "1"], "conv_vae L = 128, batch 64:"),
    ("autoregressive_sampling.py", ["--n-naive", "1", "--n", "2", "--names", "pixelcnn"], "pixelcnn: 1 images naive"),
    ("sampling_speed.py", ["--n-naive", "2", "--train-epochs", "1"], "training SarNetVAE(L = 128):"),
    ("sarnet_sampling.py", ["--n", "2", "--rounds", "1", "--names", "sarnet_patch7"], "sarnet_patch7 (16 patches): naive"),
])
def test_a_benchmark_runs_on_its_smallest_setting(script, args, expected):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout


def test_the_training_speed_benchmark_times_one_tree():
    spec = importlib.util.spec_from_file_location("training_speed", ROOT / "benchmarks" / "training_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from sarnet.core.params import resolve_models

    models = resolve_models(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert set(module.NAMES) <= set(models)
    assert module.time_tree(ROOT / "src", "conv_vae", models["conv_vae_L128"], 1, "cpu", images=256) > 0
    assert module.time_tree(ROOT / "src", "vqvae", models["vqvae"], 2, "cpu", images=64) > 0  # its two phases
