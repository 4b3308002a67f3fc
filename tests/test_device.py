"""`$SARNET_DEVICE` chooses where torch work runs; deterministic settings for CUDA."""

import os

import pytest
import torch

from sarnet.core.device import DEVICE_ENV, default_device
from sarnet.core.errors import ConfigError


def test_without_the_variable_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_can_be_forced_on_any_machine(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert default_device() == torch.device("cpu")


@pytest.mark.parametrize("name, message", [("gpu", "is not a device"), ("meta", "only cpu and cuda"),
                                           ("cuda:99", "CUDA device")])
def test_a_bad_or_absent_device_is_one_line(monkeypatch, name, message):
    monkeypatch.setenv(DEVICE_ENV, name)
    with pytest.raises(ConfigError, match=message) as info:
        default_device()
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_asked_for_on_a_cpu_machine_says_so(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        default_device()


@pytest.mark.parametrize("given, expected", [(None, ":4096:8"), (":16:8", ":16:8")])
def test_cublas_workspace_is_set_for_deterministic_gpu_runs_unless_the_user_chose(given, expected):
    """Set on import, before any CUDA work; a fresh process, since this one imported it already."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    if given is not None:
        env["CUBLAS_WORKSPACE_CONFIG"] = given
    code = "import os, sarnet.core.device; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected


def test_seed_everything_turns_off_cudnn_autotuning():
    from sarnet.core.training import seed_everything

    torch.backends.cudnn.benchmark = True
    seed_everything(0)
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
