"""The one loader: any model file of the project -> the model it describes, with its weights.

Used by the pipeline and the CLI alike; the kinds it knows are the generator classes of registry.py
and the FID classifier.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from sarnet.classifier import INSTRUMENTS
from sarnet.errors import ConfigError, DataError
from sarnet.model_files import load_weights, read_description
from sarnet.registry import GENERATOR_CLASSES

MODEL_CLASSES: dict[str, type[nn.Module]] = {**GENERATOR_CLASSES, **{cls.kind: cls for cls in INSTRUMENTS.values()}}


def load_model(path: str | os.PathLike, device: torch.device | str | None = None, kind: str | None = None) -> nn.Module:
    """The model a file describes, with its weights, in eval mode on `device` (default CPU).

    `kind`: refuse a file of another kind (e.g. a classifier where a generator is expected).
    """
    info = read_description(path)
    if info["kind"] not in MODEL_CLASSES:
        raise DataError(f"{path}: unknown model kind {info['kind']!r} (known: {', '.join(MODEL_CLASSES)})")
    if kind is not None and info["kind"] != kind:
        raise DataError(f"{path}: a {info['kind']} model file, expected a {kind}")
    try:
        model = MODEL_CLASSES[info["kind"]](**info["args"])
    except (TypeError, ConfigError) as exc:
        raise DataError(f"{path}: cannot rebuild the {info['kind']} it describes ({exc})") from None
    load_weights(model, path, info)
    return model.to(device or "cpu").eval()
