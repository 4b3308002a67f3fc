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
        """(taps·in_channels, out_channels): the allowed taps as one matrix, tap-major like `PaddedMap.gather`."""
        k = self.kernel_size[0]
        rows = torch.tensor([dy + k // 2 for dy, _ in self.taps])
        cols = torch.tensor([dx + k // 2 for _, dx in self.taps])
        return self.weight[:, :, rows, cols].permute(0, 2, 1).reshape(self.out_channels, -1).t()


class PaddedMap:
    """A layer's activations kept position-major with a zero border, (size + 2·pad, size + 2·pad, N, C),
    filled in one position at a time. Position-major makes a position's (N, C) block, and the taps of one
    row, contiguous: a gather is a few views and one copy, not an indexed read spread over the whole
    batch's maps (the samplers' cost)."""

    def __init__(self, n: int, channels: int, pad: int, like: torch.Tensor, size: int = IMAGE_SIZE) -> None:
        self.pad = pad
        self.data = torch.zeros(size + 2 * pad, size + 2 * pad, n, channels, dtype=like.dtype, device=like.device)
        self._runs: dict[tuple[tuple[int, int], ...], list[tuple[int, int, int]]] = {}

    def _row_runs(self, taps: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """The taps as (dy, first dx, last dx + 1) runs of consecutive columns, in the taps' order."""
        key = tuple(taps)
        if key not in self._runs:
            runs: list[tuple[int, int, int]] = []
            for dy, dx in key:
                if runs and runs[-1][0] == dy and runs[-1][2] == dx:
                    runs[-1] = (dy, runs[-1][1], dx + 1)
                else:
                    runs.append((dy, dx, dx + 1))
            self._runs[key] = runs
        return self._runs[key]

    def gather(self, r: int, c: int, taps: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(N, taps·C) of the taps around (r, c), tap-major (as MaskedConv2d.tap_weight)."""
        r, c = r + self.pad, c + self.pad
        parts = [self.data[r + dy, c + x0 : c + x1] for dy, x0, x1 in self._row_runs(taps)]
        return torch.cat(parts).transpose(0, 1).reshape(self.data.shape[2], -1)

    def write(self, r: int, c: int, values: torch.Tensor) -> None:
        self.data[r + self.pad, c + self.pad] = values


def draw_levels(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """Inverse-CDF draw of a class per row of (N, levels) logits at the given (N,) uniforms in [0, 1)."""
    cdf = torch.softmax(logits.double().cpu() / temperature, dim=1).cumsum(dim=1)
    draws = uniforms.reshape(-1, 1).to(cdf).contiguous()  # often a column of the (N, pixels) draws
    return torch.searchsorted(cdf, draws, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
