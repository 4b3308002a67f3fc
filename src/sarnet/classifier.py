"""The FID feature extractor: a small CNN trained by the pipeline on each dataset.

The thesis used TF-GAN's frozen MNIST classifier, which is not redistributable; this one is
trained deterministically here instead, so absolute FID values differ from the thesis's and are
put on its scale by the calibration stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.fid import to_signed_unit


class MnistClassifier(nn.Module):
    """Three conv blocks (conv, batch norm, ReLU, 2x2 max-pool) and a two-layer head -> 10 logits.

    Input: (N, 1, 28, 28) in [-1, 1], the FID protocol's scaling.
    """

    kind = "classifier"

    def __init__(self, channels: Sequence[int], hidden: int, dropout: float) -> None:
        super().__init__()
        self.model_args = {"channels": [int(c) for c in channels], "hidden": int(hidden), "dropout": float(dropout)}
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = 28
        for _ in channels:
            side //= 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each (N, 1, H, W) image by up to `max_shift` pixels, filling with the background."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)  # -1 is black in [-1, 1]
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator, device=images.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator, device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


def classification_loss(max_shift: int = 0):
    """Per-sample cross-entropy on (images in [0,1], labels), with shift augmentation while training."""

    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, labels = batch
        x = to_signed_unit(images)
        if model.training:
            x = random_shift(x, max_shift)
        return F.cross_entropy(model(x), labels.long(), reduction="none")

    return loss


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> float:
    """Fraction of correctly classified [0, 1] images."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = model(to_signed_unit(images[i : i + batch_size]).to(device))
        correct += int((logits.argmax(1).cpu() == labels[i : i + batch_size].long()).sum())
    return correct / len(images)


ARCH_KEYS = ("channels", "hidden", "dropout")


def build_classifier(params: dict) -> MnistClassifier:
    """The classifier described by a `train_classifier` params section."""
    return MnistClassifier(channels=tuple(params["channels"]), hidden=params["hidden"], dropout=params["dropout"])
