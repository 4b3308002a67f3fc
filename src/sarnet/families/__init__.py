"""The generative model families, one module each, and the registry that finds a kind's module.

Each family module names its models in `MODELS` (kind -> class). The registry imports a family only
when one of its kinds is asked for, so a stage's code is its own family and the base, never the
others (docs/staleness.md "What a change makes stale"): the model table's `family` says which module
that is, and tests/test_foundation.py checks the two agree.

`load_model` is the one loader of generator files; `load_generator` puts every trained generator behind
one call, `generate(n, seed) -> (n, 28, 28)` images in [0, 1], so evaluation code never needs to know
which family it is scoring: the model file (or, for the generative XGBoost, its folder) says what it is.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from sarnet.core.errors import ConfigError, DataError
from sarnet.core.model_files import read_description, rebuild

FAMILY_OF_KIND = {"sarnet": "sarnet", "sarnet_vae": "sarnet_vae", "conv_vae": "conv_vae", "beta_vae": "conv_vae",
                  "gan_mlp": "gans", "dcgan": "gans", "pixelcnn": "pixel", "pixelrnn_row": "pixel", "vqvae": "vqvae",
                  "gen_xgboost": "xgboost"}
KINDS = tuple(FAMILY_OF_KIND)

Generate = Callable[[int, int], torch.Tensor]


def family_module(kind: str) -> ModuleType:
    """The family module of a model kind (imported now, if it was not yet)."""
    if kind not in FAMILY_OF_KIND:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    return importlib.import_module(f"sarnet.families.{FAMILY_OF_KIND[kind]}")


def model_class(kind: str) -> type:
    """The class of a model kind, from its family's `MODELS`."""
    return family_module(kind).MODELS[kind]


def build_model(kind: str, params: Mapping[str, Any], latent_dim: int | None = None) -> torch.nn.Module:
    """The model a params.yaml model entry describes (its architecture keys; the rest is training's)."""
    return model_class(kind).from_params(params, latent_dim)


def load_model(path: str | os.PathLike, device: torch.device | str | None = None, kind: str | None = None) -> torch.nn.Module:
    """The generator a model file describes, with its weights, in eval mode on `device` (default CPU).

    `kind`: refuse a file of another kind (e.g. a conv VAE where a SarNET VAE is expected)."""
    info = read_description(path)
    if info["kind"] not in FAMILY_OF_KIND or FAMILY_OF_KIND[info["kind"]] == "xgboost":
        raise DataError(f"{path}: a {info['kind']} model file, not a generator (known: {', '.join(KINDS)})")
    if kind is not None and info["kind"] != kind:
        raise DataError(f"{path}: a {info['kind']} model file, expected a {kind}")
    return rebuild(model_class(info["kind"]), path, info, device)


def load_generator(path: str | os.PathLike, sampling_params: Mapping[str, Any],
                   device: torch.device | None = None) -> tuple[str, Generate]:
    """(kind, generate(n, seed)) of a trained generator; `sampling_params` is params.yaml's `sampling`
    section, of which the generator uses its own kind's entry."""
    path = Path(path)
    model = family_module("gen_xgboost").GenerativeXGBoost.load(path) if path.is_dir() else load_model(path, device)
    settings = sampling_params.get(model.kind, {})
    return model.kind, lambda n, seed: torch.as_tensor(model.generate(n, seed, settings)).float().cpu()
