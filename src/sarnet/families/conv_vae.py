"""The convolutional VAE (thesis §4.2, the TensorFlow tutorial's) and the β-VAE (seed 004 §3)."""

from __future__ import annotations

import torch
from torch import nn

from sarnet.core.data import IMAGE_SIZE, PIXELS
from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError
from sarnet.families.base import PointMapConvTranspose2d, VAEModel


class ConvVAE(VAEModel):
    """The TensorFlow-tutorial convolutional VAE (the thesis's baseline)."""

    kind = "conv_vae"
    sampling_keys = ("batch_size",)

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.model_args = {"latent_dim": int(latent_dim)}
        self.project = nn.Linear(latent_dim, 128)
        self.deconv = nn.Sequential(
            PointMapConvTranspose2d(128, 64, 7), nn.ReLU(),  # on the 1×1 map: a matmul
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
        )

    def decode(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(z).view(-1, 128, 1, 1)).view(-1, PIXELS)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *, batch_size: int) -> torch.Tensor:
        """n images (n, 28, 28) decoded from z ~ N(0, I), no threshold, `batch_size` codes at a time."""
        z = self.prior(n, generator)
        with evaluating(self):
            images = torch.cat([self.decode(None, z[i : i + batch_size]) for i in range(0, n, batch_size)])
        return images.view(-1, IMAGE_SIZE, IMAGE_SIZE)


class BetaVAE(ConvVAE):
    """β-VAE (seed 004 §3, docs/baselines.md "β-VAE"): the conv VAE with its KL term weighted by β = `kl_weight`;
    β is the only difference from `conv_vae` (β = 1 trains the same model bit for bit)."""

    kind = "beta_vae"
    arch_keys = ("kl_weight",)

    def __init__(self, latent_dim: int, kl_weight: float) -> None:
        super().__init__(latent_dim)
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not kl_weight > 0:
            raise ConfigError(f"kl_weight must be a number > 0, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        self.model_args = {"latent_dim": int(latent_dim), "kl_weight": float(kl_weight)}


USES = "families/base.py"  # the one module this family builds on besides the core and the base (params.yaml's `uses`)
MODELS: dict[str, type[VAEModel]] = {cls.kind: cls for cls in (ConvVAE, BetaVAE)}
