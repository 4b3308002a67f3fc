"""The FID feature extractors ("instruments"), trained by the pipeline on each dataset: a small CNN,
and as a second, independent instrument an MLP on raw pixels.

The thesis used TF-GAN's frozen MNIST classifier, which is not redistributable; these are trained
deterministically here instead, so absolute FID values differ from the thesis's and are put on its
scale by the calibration stage. Two instruments of clearly different architecture tell which
conclusions are properties of the models and which of the instrument.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.core.errors import ConfigError
from sarnet.instruments.fid import to_signed_unit


class MnistClassifier(nn.Module):
    """Three conv blocks (conv, batch norm, ReLU, 2x2 max-pool) and a two-layer head -> 10 logits.

    Input: (N, 1, 28, 28) in [-1, 1], the FID protocol's scaling.
    """

    kind = "classifier"
    instrument: ClassVar[str] = "cnn"
    section: ClassVar[str] = "train_classifier"  # its params.yaml section
    arch_keys: ClassVar[tuple[str, ...]] = ("channels", "hidden", "dropout")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "MnistClassifier":
        return cls(channels=tuple(params["channels"]), hidden=params["hidden"], dropout=params["dropout"])

    def __init__(self, channels: Sequence[int], hidden: int, dropout: float) -> None:
        super().__init__()
        if len(channels) > 4:  # each block halves the 28-pixel map: after four it is 1×1
            raise ConfigError(f"classifier: at most 4 conv blocks, got {len(channels)}")
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


class MlpClassifier(nn.Module):
    """The second instrument: an MLP on the raw pixels, 784 → hidden… → 10 logits with ReLU; no
    convolution, no pooling, no shift augmentation. Input as the CNN's: (N, 1, 28, 28) in [-1, 1]."""

    kind = "mlp_classifier"
    instrument: ClassVar[str] = "mlp"
    section: ClassVar[str] = "train_mlp_classifier"
    arch_keys: ClassVar[tuple[str, ...]] = ("hidden",)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "MlpClassifier":
        return cls(hidden=params["hidden"])

    def __init__(self, hidden: Sequence[int]) -> None:
        super().__init__()
        if len(hidden) > 64:  # one module each: a forged file's list could be millions long
            raise ConfigError(f"mlp_classifier: at most 64 hidden layers, got {len(hidden)}")
        widths = [int(h) for h in hidden]
        self.model_args = {"hidden": widths}
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = 28 * 28
        for width in widths:
            layers += [nn.Linear(width_in, width), nn.ReLU(inplace=True)]
            width_in = width
        self.net = nn.Sequential(*layers, nn.Linear(width_in, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


INSTRUMENTS: dict[str, type[nn.Module]] = {cls.instrument: cls for cls in (MnistClassifier, MlpClassifier)}
INSTRUMENT_NAMES = tuple(INSTRUMENTS)  # every FID is measured by each, in this order: `cnn` first


def instrument_path(dataset: str, instrument: str = "cnn") -> Path:
    """Where `train_classifier` writes an instrument's model file: models/classifier/<dataset>[_mlp].safetensors."""
    suffix = "" if instrument == "cnn" else f"_{instrument}"
    return Path("models") / "classifier" / f"{dataset}{suffix}.safetensors"


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


def build_classifier(params: dict, instrument: str = "cnn") -> nn.Module:
    """The instrument described by its params section (`train_classifier`, `train_mlp_classifier`)."""
    return INSTRUMENTS[instrument].from_params(params)
