"""The names a generator's files and runs go by (no model code: stages that only need a name,
such as the FID table, do not depend on the models)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sarnet.errors import ConfigError
from sarnet.model_files import SUFFIX

GENERATOR_KINDS = ("sarnet", "sarnet_vae", "conv_vae", "gen_xgboost", "beta_vae", "gan_mlp", "dcgan", "pixelcnn",
                   "vqvae", "pixelrnn_row")
LATENT_KINDS = ("sarnet_vae", "conv_vae", "beta_vae")
_NAME = re.compile(r"[a-z0-9]+(_[a-z0-9]+)*")


def generator_name(kind: str, latent_dim: int | None = None, data: str | None = None) -> str:
    """The name a generator's files and runs go by: `sarnet_vae_L128`, `sarnet`, `gen_xgboost`. A variant
    (a key of params.yaml's `<kind>_data`: another training set, or §4.1's loss and patch settings) adds
    its key: `sarnet_vae_fashion_L128`, `sarnet_mse`."""
    if kind not in GENERATOR_KINDS:
        raise ConfigError(f"unknown generator {kind!r}; choose one of {', '.join(GENERATOR_KINDS)}")
    if data is not None and not _NAME.fullmatch(data):
        raise ConfigError(f"variant name {data!r}: use lower-case letters, digits and single underscores")
    base = kind if data is None else f"{kind}_{data}"
    if kind in LATENT_KINDS:
        if latent_dim is None:
            raise ConfigError(f"{kind} needs a latent dimension")
        return f"{base}_L{int(latent_dim)}"
    if latent_dim is not None:
        raise ConfigError(f"{kind} has no latent dimension (got {latent_dim})")
    return base


def model_path(kind: str, latent_dim: int | None = None, root: str | os.PathLike = "models",
               data: str | None = None) -> Path:
    """Where the training stages write a generator (a folder for XGBoost, a model file otherwise)."""
    name = generator_name(kind, latent_dim, data)
    return Path(root) / name if kind == "gen_xgboost" else Path(root) / kind / f"{name}{SUFFIX}"
