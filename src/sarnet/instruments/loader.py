"""The instruments' own loader: an instrument's model file -> the classifier it describes, with its weights."""

from __future__ import annotations

import os

import torch
from torch import nn

from sarnet.core.errors import DataError
from sarnet.core.model_files import read_description, rebuild
from sarnet.instruments.classifier import INSTRUMENTS

INSTRUMENT_CLASSES: dict[str, type[nn.Module]] = {cls.kind: cls for cls in INSTRUMENTS.values()}


def load_instrument(path: str | os.PathLike, device: torch.device | str | None = None,
                    instrument: str | None = None) -> nn.Module:
    """The instrument a file describes, in eval mode on `device` (default CPU); `instrument` (`cnn`,
    `mlp`): refuse a file of another instrument."""
    info = read_description(path)
    if info["kind"] not in INSTRUMENT_CLASSES:
        raise DataError(f"{path}: a {info['kind']} model file, not an instrument (known: {', '.join(INSTRUMENT_CLASSES)})")
    cls = INSTRUMENT_CLASSES[info["kind"]]
    if instrument is not None and cls.instrument != instrument:
        raise DataError(f"{path}: the {cls.instrument} instrument's file, expected the {instrument} instrument's")
    return rebuild(cls, path, info, device)
