"""Crash-safe file writing: every output (JSON, text, PNG image grids) appears whole or not at all."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


STALE_TEMP_SECONDS = 3600  # a temp file this old was left by a killed writer (no write takes an hour)


def _sweep_stale_temps(path: Path) -> None:
    """Remove temp files of `path` that a SIGKILLed writer left behind (a live writer's are recent)."""
    now = time.time()
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                temp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --- image grids (sample sheets, inpainting rows) -------------------------------------------------

def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 10, padding: int = 2) -> None:
    """Save (N, 28, 28) or (N, 1, 28, 28) images in [0, 1] as one PNG grid, written atomically."""
    from torchvision.utils import save_image  # imported here: most writers of files draw no grid

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
    from torchvision.utils import save_image

    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    array = np.asarray(images_rgb, dtype=np.float32)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB images, got shape {array.shape}")
    images = torch.from_numpy(array).permute(0, 3, 1, 2)  # NHWC -> NCHW for torchvision
    images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    with atomic_path(path) as tmp:
        save_image(images.clamp(0, 1), tmp, nrow=nrow, padding=padding, pad_value=0.5, format="png")
