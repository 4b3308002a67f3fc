"""Every generator kind the pipeline trains, by its `kind`: the thesis's models (models.py), the
β-VAE, the seeds' GANs (gans.py), pixel models (autoregressive.py) and the VQ-VAE with its prior
(vqvae.py). The loader, the training stage and the CLI look kinds up here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sarnet.autoregressive import PixelCNN, PixelRNN
from sarnet.errors import ConfigError
from sarnet.gans import DCGAN, GanMLP
from sarnet.models import BetaVAE, ConvVAE, Generator, SarNet, SarNetVAE
from sarnet.vqvae import VQVAE

GENERATOR_CLASSES: dict[str, type[Generator]] = {
    cls.kind: cls for cls in (SarNet, SarNetVAE, ConvVAE, BetaVAE, GanMLP, DCGAN, PixelCNN, VQVAE, PixelRNN)}


def generator_class(kind: str) -> type[Generator]:
    if kind not in GENERATOR_CLASSES:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(GENERATOR_CLASSES)}")
    return GENERATOR_CLASSES[kind]


def build_model(kind: str, params: Mapping[str, Any], latent_dim: int | None = None) -> Generator:
    """The model a params.yaml section describes (its architecture keys; the rest is training's)."""
    return generator_class(kind).from_params(params, latent_dim)
