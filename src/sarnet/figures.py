"""Image grids as PNG files (sample sheets, inpainting rows)."""

from __future__ import annotations

import os

import torch
from torchvision.utils import save_image

from sarnet.files import atomic_path


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 10, padding: int = 2) -> None:
    """Save (N, 28, 28) or (N, 1, 28, 28) images in [0, 1] as one PNG grid, written atomically."""
    images = images.detach().float().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    with atomic_path(path) as tmp:
        save_image(images.clamp(0, 1), tmp, nrow=nrow, padding=padding, pad_value=0.5, format="png")
