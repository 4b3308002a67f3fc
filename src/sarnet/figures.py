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


def save_rgb_grid(images_rgb: "np.ndarray", path: str | os.PathLike, nrow: int = 10, padding: int = 2,
                  scale: int = 4) -> None:
    """Save (N, H, W, 3) RGB images in [0, 1] as one PNG grid, written atomically.

    Each image is enlarged `scale` times by pixel repetition (nearest neighbour), so patch
    colours stay crisp and readable at 28×28.
    """
    import numpy as np

    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    array = np.asarray(images_rgb, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB images, got shape {array.shape}")
    images = torch.from_numpy(array).permute(0, 3, 1, 2)  # NHWC -> NCHW for torchvision
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    with atomic_path(path) as tmp:
        save_image(images.clamp(0, 1), tmp, nrow=nrow, padding=padding, pad_value=0.5, format="png")
