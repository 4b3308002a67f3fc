"""Where and how torch work runs: `$SARNET_DEVICE` when set (`cpu`, `cuda`, `cuda:1`), else CUDA when
present, else the CPU (a GPU machine can so still run, and reproduce, the CPU results); and eval mode
for a block of work."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from sarnet.core.errors import ConfigError

DEVICE_ENV = "SARNET_DEVICE"
# cuBLAS is deterministic only with a fixed workspace, which must be set before CUDA starts; this
# module is imported before any model touches the GPU. A value the user set is kept.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def default_device() -> torch.device:
    """The device named by $SARNET_DEVICE, or CUDA when present, or the CPU; a bad name is one line."""
    name = os.environ.get(DEVICE_ENV, "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"${DEVICE_ENV}={name!r} is not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"${DEVICE_ENV}={name!r}, but this machine has no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"${DEVICE_ENV}={name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"${DEVICE_ENV}={name!r}: only cpu and cuda are supported")
    return device


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block, the caller's mode restored after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
