"""Every trained generator behind one call, `generate(n, seed) -> (n, 28, 28)` images in [0, 1],
so evaluation code never needs to know which family it is scoring."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from sarnet.errors import ConfigError, DataError

GENERATOR_KINDS = ("sarnet", "sarnet_vae", "conv_vae", "gen_xgboost")
Generate = Callable[[int, int], torch.Tensor]


def generator_name(kind: str, latent_dim: int | None = None, data: str | None = None) -> str:
    """The name a generator's files and runs go by: `sarnet_vae_L128`, `sarnet`, `gen_xgboost`; a VAE
    trained on another training set (a key of params.yaml's `<kind>_data`) is `sarnet_vae_fashion_L128`."""
    if kind not in GENERATOR_KINDS:
        raise ConfigError(f"unknown generator {kind!r}; choose one of {', '.join(GENERATOR_KINDS)}")
    if kind in ("sarnet_vae", "conv_vae"):
        if latent_dim is None:
            raise ConfigError(f"{kind} needs a latent dimension")
        if data is not None and not re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", data):
            raise ConfigError(f"training-set name {data!r}: use lower-case letters, digits and single underscores")
        return f"{kind}_L{int(latent_dim)}" if data is None else f"{kind}_{data}_L{int(latent_dim)}"
    if data is not None:
        raise ConfigError(f"{kind} has no training-set variants (got {data!r})")
    if latent_dim is not None:
        raise ConfigError(f"{kind} has no latent dimension (got {latent_dim})")
    return kind


def model_path(kind: str, latent_dim: int | None = None, root: str | os.PathLike = "models",
               data: str | None = None) -> Path:
    """Where the training stages write a generator (a folder for XGBoost, a state dict otherwise)."""
    name = generator_name(kind, latent_dim, data)
    return Path(root) / kind if kind == "gen_xgboost" else Path(root) / kind / f"{name}.pt"


def load_generator(kind: str, model_params: dict, sampling_params: dict, latent_dim: int | None = None,
                   path: str | os.PathLike | None = None, device: torch.device | None = None,
                   data: str | None = None) -> Generate:
    """A trained generator as `generate(n, seed)`; `model_params` is its params.yaml section."""
    path = Path(path or model_path(kind, latent_dim, data=data))
    if not path.exists():
        raise DataError(f"{path}: no trained model; run `dvc repro` for it first")
    if kind == "gen_xgboost":
        from sarnet.gen_xgboost import GenerativeXGBoost

        xgb_model = GenerativeXGBoost.load(path)
        return lambda n, seed: torch.from_numpy(xgb_model.generate(n, seed))

    from sarnet.models import build_model
    from sarnet.sampling import generate_model_samples
    from sarnet.training import load_state_dict

    generator_name(kind, latent_dim)  # validates kind and latent size
    model = load_state_dict(build_model(kind, model_params, latent_dim), path, device)

    def generate(n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return generate_model_samples(kind, model, n, generator, sampling_params).float().cpu()

    return generate
