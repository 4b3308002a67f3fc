"""Masked convolutions of the pixel models and the VQ-VAE's prior: causal masks over the raster order
(type A excludes the centre tap, type B includes it), the padded activation maps their cached samplers
fill one position at a time, and the inverse-CDF level draw those samplers share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.core.data import IMAGE_SIZE
from sarnet.core.errors import ConfigError


def causal_mask(k: int, mask_type: str) -> torch.Tensor:
    """(k, k) raster-order mask: rows above the centre, and the centre row left of the centre; the centre
    itself for type B only."""
    if mask_type not in ("A", "B") or k % 2 == 0:
        raise ConfigError(f"a causal mask needs type A or B and an odd size, got {mask_type!r} and {k}")
    # On the CPU even where a model is built on the meta device to size it (core.model_files.rebuild):
    # the taps are read from its values, and it is k² numbers.
    mask = torch.zeros(k, k, device="cpu")
    mask[: k // 2] = 1
    mask[k // 2, : k // 2 + (mask_type == "B")] = 1
    return mask


class MaskedConv2d(nn.Conv2d):
    """A k×k convolution (stride 1, same padding) whose taps are masked causally (type A or B)."""

    def __init__(self, in_channels: int, out_channels: int, k: int, mask_type: str) -> None:
        super().__init__(in_channels, out_channels, k, padding=k // 2)
        self.register_buffer("mask", causal_mask(k, mask_type), persistent=False)
        self.taps = [(ky - k // 2, kx - k // 2) for ky in range(k) for kx in range(k) if self.mask[ky, kx]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def tap_weight(self) -> torch.Tensor:
        """(in_channels·taps, out_channels): the allowed taps as one matrix, channel-major like `gather`."""
        k = self.kernel_size[0]
        rows = torch.tensor([dy + k // 2 for dy, _ in self.taps])
        cols = torch.tensor([dx + k // 2 for _, dx in self.taps])
        return self.weight[:, :, rows, cols].reshape(self.out_channels, -1).t()


class PaddedMap:
    """A layer's activations (N, C, size, size) kept with a zero border, filled in one position at a time."""

    def __init__(self, n: int, channels: int, pad: int, like: torch.Tensor, size: int = IMAGE_SIZE) -> None:
        self.pad = pad
        self.data = torch.zeros(n, channels, size + 2 * pad, size + 2 * pad, dtype=like.dtype, device=like.device)

    def gather(self, r: int, c: int, taps: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(N, C·taps) of the taps around (r, c), channel-major (as MaskedConv2d.tap_weight)."""
        rows = torch.tensor([r + dy + self.pad for dy, _ in taps], device=self.data.device)
        cols = torch.tensor([c + dx + self.pad for _, dx in taps], device=self.data.device)
        return self.data[:, :, rows, cols].reshape(len(self.data), -1)

    def write(self, r: int, c: int, values: torch.Tensor) -> None:
        self.data[:, :, r + self.pad, c + self.pad] = values


def draw_levels(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse-CDF draw of a class per row of (N, levels) logits at the given (N,) uniforms in [0, 1)."""
    cdf = torch.softmax(logits.double().cpu() / temperature, dim=1).cumsum(dim=1)
    draws = uniforms.reshape(-1, 1).to(cdf).contiguous()  # often a column of the (N, pixels) draws
    return torch.searchsorted(cdf, draws, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
