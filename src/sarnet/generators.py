"""Every trained generator behind one call, `generate(n, seed) -> (n, 28, 28)` images in [0, 1],
so evaluation code never needs to know which family it is scoring."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from sarnet.errors import ConfigError, DataError

GENERATOR_KINDS = ("sarnet", "sarnet_vae", "conv_vae", "gen_xgboost")
Generate = Callable[[int, int], torch.Tensor]


def generator_name(kind: str, latent_dim: int | None = None) -> str:
    """The name a generator's files and runs go by: `sarnet_vae_L128`, `sarnet`, `gen_xgboost`."""
    if kind not in GENERATOR_KINDS:
        raise ConfigError(f"unknown generator {kind!r}; choose one of {', '.join(GENERATOR_KINDS)}")
    if kind in ("sarnet_vae", "conv_vae"):
        if latent_dim is None:
            raise ConfigError(f"{kind} needs a latent dimension")
        return f"{kind}_L{int(latent_dim)}"
    if latent_dim is not None:
        raise ConfigError(f"{kind} has no latent dimension (got {latent_dim})")
    return kind


def model_path(kind: str, latent_dim: int | None = None, root: str | os.PathLike = "models") -> Path:
    """Where the training stages write a generator (a folder for XGBoost, a state dict otherwise)."""
    name = generator_name(kind, latent_dim)
    return Path(root) / kind if kind == "gen_xgboost" else Path(root) / kind / f"{name}.pt"


def load_generator(kind: str, model_params: dict, sampling_params: dict, latent_dim: int | None = None,
                   path: str | os.PathLike | None = None, device: torch.device | None = None) -> Generate:
    """A trained generator as `generate(n, seed)`; `model_params` is its params.yaml section."""
    path = Path(path or model_path(kind, latent_dim))
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
