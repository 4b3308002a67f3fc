"""Every trained generator behind one call, `generate(n, seed) -> (n, 28, 28)` images in [0, 1],
so evaluation code never needs to know which family it is scoring: the model file (or, for the
generative XGBoost, its folder) says what it is, and the model samples itself."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from sarnet.errors import ConfigError
from sarnet.gen_xgboost import GenerativeXGBoost
from sarnet.loader import load_model
from sarnet.models import Generator

Generate = Callable[[int, int], torch.Tensor]


def load_generator(path: str | os.PathLike, sampling_params: Mapping[str, Any],
                   device: torch.device | None = None) -> tuple[str, Generate]:
    """(kind, generate(n, seed)) of a trained generator; `sampling_params` is params.yaml's `sampling`
    section, of which the generator uses its own kind's entry."""
    path = Path(path)
    model: Generator | GenerativeXGBoost
    model = GenerativeXGBoost.load(path) if path.is_dir() else load_model(path, device)
    if not hasattr(model, "generate"):
        raise ConfigError(f"{path}: a {model.kind} model file, not a generator")
    settings = sampling_params.get(model.kind, {})
    return model.kind, lambda n, seed: torch.as_tensor(model.generate(n, seed, settings)).float().cpu()
