"""The SemiDense layer (thesis §3.2): a linear layer whose weight mask makes it autoregressive over patches.

Units are flattened channel-major then row-major (a plain NCHW flatten). A patch is a square of
the image, numbered in raster order over the patch grid; patch k of a layer is the same square in
every channel. In and out sides may differ in channels, image size and patch size, but must share
the patch grid.

- type (a), `first=True`: output patch 0 sees input patch 0, output patch i>0 sees input patches 0..i-1;
- type (b): output patch i sees input patches 0..i.
An optional latent vector z is appended to the input; every output unit sees all of z.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.errors import ConfigError


def patch_of_units(channels: int, size: int, patch: int) -> torch.Tensor:
    """Patch index of every unit of a (channels, size, size) NCHW-flattened layer, shape (channels·size²,)."""
    grid = size // patch
    rows = torch.arange(size) // patch
    per_pixel = (rows[:, None] * grid + rows[None, :]).reshape(-1)  # raster order over the patch grid
    return per_pixel.repeat(channels)


def allowed_inputs(out_patch: torch.Tensor, in_patch: torch.Tensor, first: bool) -> torch.Tensor:
    """Boolean (out_units, in_units) connectivity of type (a) (`first`) or type (b)."""
    po, pi = out_patch[:, None], in_patch[None, :]
    if first:
        return (pi < po) | ((po == 0) & (pi == 0))
    return pi <= po


class SemiDense(nn.Module):
    """Masked linear layer, autoregressive over a shared patch grid."""

    def __init__(self, in_channels: int, out_channels: int, in_size: int, out_size: int,
                 in_patch: int, out_patch: int, latent_dim: int = 0, first: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("in_size", in_size),
                            ("out_size", out_size), ("in_patch", in_patch), ("out_patch", out_patch)):
            if value < 1:
                raise ConfigError(f"SemiDense: {name} must be >= 1, got {value}")
        if latent_dim < 0:
            raise ConfigError(f"SemiDense: latent_dim must be >= 0, got {latent_dim}")
        if in_size % in_patch or out_size % out_patch:
            raise ConfigError(f"SemiDense: patch sizes must divide image sizes, got {in_size}/{in_patch} and {out_size}/{out_patch}")
        if in_size // in_patch != out_size // out_patch:
            raise ConfigError(
                f"SemiDense: incompatible patch grids: {in_size}² in {in_patch}² patches is a "
                f"{in_size // in_patch}×{in_size // in_patch} grid, {out_size}² in {out_patch}² patches a "
                f"{out_size // out_patch}×{out_size // out_patch} grid"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = in_size, out_size
        self.in_patch, self.out_patch = in_patch, out_patch
        self.latent_dim, self.first = latent_dim, first
        self.grid = in_size // in_patch
        self.n_patches = self.grid**2
        self.in_features = in_channels * in_size**2
        self.out_features = out_channels * out_size**2

        self.register_buffer("in_patch_index", patch_of_units(in_channels, in_size, in_patch), persistent=False)
        self.register_buffer("out_patch_index", patch_of_units(out_channels, out_size, out_patch), persistent=False)
        allowed = allowed_inputs(self.out_patch_index, self.in_patch_index, first)
        latent = torch.ones(self.out_features, latent_dim, dtype=torch.bool)
        self.register_buffer("mask", torch.cat([allowed, latent], dim=1).float())

        fan_in = self.in_features + latent_dim  # the full, unmasked fan-in (docs/protocol.md "Init")
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(self.out_features, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(self.out_features).uniform_(-bound, bound))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ConfigError(f"SemiDense: expected input (B, {self.in_features}), got {tuple(x.shape)}")
        if self.latent_dim:
            if z is None or z.shape != (x.shape[0], self.latent_dim):
                raise ConfigError(f"SemiDense: expected latent (B, {self.latent_dim}), got {None if z is None else tuple(z.shape)}")
            x = torch.cat([x, z], dim=1)
        elif z is not None:
            raise ConfigError("SemiDense: this layer has no latent input (latent_dim=0) but z was given")
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}×{self.in_size}² ({self.in_patch}² patches) -> "
                f"{self.out_channels}×{self.out_size}² ({self.out_patch}² patches), grid {self.grid}×{self.grid}, "
                f"latent {self.latent_dim}, type {'a' if self.first else 'b'}")
