"""What every generative model shares (docs/protocol.md "Models"): the base class `GenerativeModel`,
and the VAE scaffolding (the conv encoder, the loss, the reparametrised forward) that the SarNET VAE and the
conv VAE families both build on.

Images enter and leave as (B, 784) rows in [0, 1] (the NCHW flatten of 1×28×28). Every model says what it
is (`kind`, `model_args`: its constructor arguments) so a model file can rebuild it, and owns its
`sample(...)`, whose settings are its `sampling.<kind>` section of params.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.core.data import IMAGE_SIZE
from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError
from sarnet.core.params import check_keys
from sarnet.core.training import TrainConfig


class GenerativeModel(nn.Module):
    """A torch model that generates 28×28 images and can be rebuilt from its file.

    Subclasses set `kind` (its params.yaml section and model-file tag), `arch_keys` (the section's
    keys that are constructor arguments) and `sampling_keys` (the keys of `sampling.<kind>`).
    """

    kind: ClassVar[str]
    arch_keys: ClassVar[tuple[str, ...]] = ()
    sampling_keys: ClassVar[tuple[str, ...]] = ()
    needs_latent: ClassVar[bool] = False
    reconstructs: ClassVar[bool] = True  # has `reconstruct` (a GAN cannot map an image back)
    model_args: dict[str, Any]
    # A family whose step is not one optimiser on `loss` (a GAN's two players, the VQ-VAE's two phases)
    # defines `training_step(config, total_steps)`; core.training.fit then runs that step in its loop.
    training_step: Callable[[TrainConfig, int], Any] | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], latent_dim: int | None = None) -> "GenerativeModel":
        """The model a params.yaml section describes (its architecture keys; the rest is training's)."""
        missing = [k for k in cls.arch_keys if k not in params]
        if missing:
            raise ConfigError(f"params.yaml: `{cls.kind}` has no '{missing[0]}'")
        args = {k: params[k] for k in cls.arch_keys}
        if cls.needs_latent:
            if latent_dim is None:
                raise ConfigError(f"{cls.kind} needs a latent dimension")
            args["latent_dim"] = int(latent_dim)
        return cls(**args)

    def sample(self, n: int, generator: torch.Generator | None, **settings: Any) -> torch.Tensor:
        """n images (n, 28, 28) in [0, 1]."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) real images -> (B, 28, 28) reconstructions in [0, 1], in eval mode."""
        raise NotImplementedError

    @torch.no_grad()
    def test_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """What the training stage records on the (B, 784) test images: the reconstruction errors per
        pixel (`test_mse`, `test_l1`) of a model that reconstructs; a likelihood model says its NLL."""
        if not self.reconstructs:
            return {}
        recon = self.reconstruct(x).flatten(1)
        return {"test_mse": float((recon - x).pow(2).mean()), "test_l1": float((recon - x).abs().mean())}

    def generate(self, n: int, seed: int, settings: Mapping[str, Any]) -> torch.Tensor:
        """n images (n, 28, 28) as float32 on the CPU, seeded, with this kind's sampling settings."""
        check_keys(f"sampling.{self.kind}", settings, self.sampling_keys, required=True)
        return self.sample(n, torch.Generator().manual_seed(seed), **settings).float().cpu()

    def _param(self) -> torch.Tensor:
        return next(self.parameters())


def loss_precision(t: torch.Tensor) -> torch.Tensor:
    """A bf16/fp16 output of an autocast forward as float32, so losses are summed in float32; other dtypes as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class WholeMapConv2d(nn.Conv2d):
    """Conv2d (stride 1, no padding) whose kernel covers its whole input map: each output channel is
    one dot product with the flattened map, computed as one matmul. Same parameters and state dict
    as nn.Conv2d; on 2 CPU cores oneDNN's kernel for a 7×7 map ran ~3× slower than the matmul."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.kernel_size:
            return super().forward(x)  # a larger map: a plain convolution
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]


class PointMapConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d (stride 1, no padding) fed 1×1 maps: the output is the kernels weighted by the
    input channels, one matmul (B, in) @ (in, out·k·k). Same parameters and state dict as
    nn.ConvTranspose2d; ~3× faster than oneDNN's kernel on 2 CPU cores for 128 → 64, k = 7."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (1, 1) or output_size is not None:
            return super().forward(x, output_size)
        maps = (x.flatten(1) @ self.weight.flatten(1)).view(len(x), self.out_channels, *self.kernel_size)
        return maps + self.bias[:, None, None]

class ConvEncoder(nn.Module):
    """Conv 1→32 s2, Conv 32→64 s2, Conv 64→128 7×7, then μ and log σ² heads (both VAEs)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            WholeMapConv2d(64, 128, 7), nn.Flatten(),  # on the 7×7 map: a matmul
        )
        self.mu = nn.Linear(128, latent_dim)
        self.logvar = nn.Linear(128, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE))
        return self.mu(h), self.logvar(h)


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 1.0) -> torch.Tensor:
    """Per-sample BCE (summed over pixels) + kl_weight · KL divergence to N(0, I) (summed over latents)."""
    recon, mu, logvar = loss_precision(recon), loss_precision(mu), loss_precision(logvar)
    bce = F.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x, reduction="none").sum(dim=1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    return bce + kl_weight * kl  # × 1.0 is exact: weight 1 is the plain VAE bit for bit


class VAEModel(GenerativeModel):
    latent_dim: int
    encoder: ConvEncoder
    needs_latent = True
    kl_weight: float = 1.0  # β of a β-VAE

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim)

    def decode(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(x, z), mu, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded from z = μ (the SarNET VAE teacher-forced by the real image)."""
        with evaluating(self):
            recon = self(x)[0]
        return recon.view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = batch[0]
        recon, mu, logvar = self(x)
        return vae_loss(recon, x, mu, logvar, self.kl_weight)

    def prior(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """z ~ N(0, I), drawn on the CPU generator (the same numbers on any device)."""
        param = self._param()
        return torch.randn(n, self.latent_dim, generator=generator, dtype=param.dtype).to(param.device)


