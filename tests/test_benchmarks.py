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
    ("autoregressive_sampling.py", ["--n-naive", "1", "--n", "2", "--names", "pixelrnn_row", "--baseline", "HEAD",
                                    "--rounds", "1"], "same images: True"),
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


def test_the_protocol_time_report_converts_and_groups_stages_by_hand():
    spec = importlib.util.spec_from_file_location("protocol_time", ROOT / "benchmarks" / "protocol_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # 10.8 s at 5.4 ms per GEMM-1024 is 2,000 units; a recorded unit count wins over the seconds
    before = module.stage_units({"stages": {"train/a": 10.8, "fid/a": 5.4, "gen_xgboost": 2.7, "classifier/mnist": 1.08}},
                                5.4)
    assert before == pytest.approx({"train/a": 2000.0, "fid/a": 1000.0, "gen_xgboost": 500.0, "classifier/mnist": 200.0})
    after = module.stage_units({"stages": {"train/a": 99.0, "fid/a": 2.8, "fid/b": 1.0, "gen_xgboost": 5.6},
                                "gemm_units": {"train/a": 1500}}, 5.6)
    assert after == pytest.approx({"train/a": 1500.0, "fid/a": 500.0, "fid/b": 1000 / 5.6, "gen_xgboost": 1000.0})
    rows = module.by_family(before, after, {"a": "fam", "b": "fam"})
    # fid/b and classifier/mnist are on one side only: left out of the families' comparison
    assert [(family, n) for family, _, _, n in rows] == [("fam", 2), ("xgboost", 1)]
    assert [x for _, b, a, _ in rows for x in (b, a)] == pytest.approx([3000.0, 2000.0, 500.0, 1000.0])
    kinds = module.by_family(before, after, {}, module.kind_of)
    assert [(kind, n) for kind, _, _, n in kinds] == [("FID sets", 1), ("other stages", 1), ("trainings", 1)]
    assert [x for _, b, a, _ in kinds for x in (b, a)] == pytest.approx([1000.0, 500.0, 500.0, 1000.0, 2000.0, 1500.0])
