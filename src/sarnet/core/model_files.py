"""Model files: where a generator's file is (its name, the key of params.yaml's `models` table, and its
kind) and what every model file holds: safetensors weights whose metadata says what the model is (its
kind and constructor arguments), so one loader rebuilds any of the project's torch models from the file
alone: no pickle, no params.yaml.

Metadata: a single key "sarnet" holding sorted-key JSON {"format", "kind", "args"} (one key, so the
header's bytes never depend on a hash map's order); the same weights always give the same bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sarnet.core.errors import ConfigError, DataError
from sarnet.core.files import atomic_path

FORMAT = "sarnet-model/1"
META_KEY = "sarnet"
SUFFIX = ".safetensors"


def describe(model: nn.Module) -> dict[str, Any]:
    """{"format", "kind", "args"} of a model that knows its kind and constructor arguments."""
    kind, args = getattr(model, "kind", None), getattr(model, "model_args", None)
    if kind is None or args is None:
        raise ConfigError(f"{type(model).__name__} does not say what it is (needs `kind` and `model_args`)")
    return {"format": FORMAT, "kind": kind, "args": args}


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: flipped bytes show."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's weights and description atomically; identical weights give identical bytes."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    header = json.dumps(describe(model) | {"sha256": weights_digest(tensors)}, sort_keys=True, separators=(",", ":"))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: header})


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file; one line otherwise. O_NONBLOCK: a FIFO
    opens at once (and is refused) instead of waiting for a writer; checked on the open file, not the name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DataError(f"{path}: no such model file; train it with `dvc repro` first") from None
    except OSError as exc:
        why = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror or type(exc).__name__
        raise DataError(f"{path}: cannot open the model file ({why})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = next((name for test, name in _NOT_REGULAR if test(mode)), "an unusual file")
        raise DataError(f"{path}: not a regular file ({what}); give a model file")
    return os.fdopen(fd, "rb")


def _bytes(n: int) -> str:
    """A byte count for messages: 228 bytes, 3.4 MiB, 512.0 GiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def read_description(path: str | os.PathLike) -> dict[str, Any]:
    """The file's {"format", "kind", "args"}; DataError (one line) for anything else."""
    path = Path(path)
    try:
        with _open_regular(path) as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= min(100_000_000, os.fstat(fh.fileno()).st_size - 8):
                raise ValueError("bad header size")
            meta = json.loads(fh.read(size)).get("__metadata__") or {}
        info = json.loads(meta[META_KEY])
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise DataError(f"{path}: not a sarnet model file (expected safetensors with sarnet metadata)") from None
    if info.get("format") != FORMAT or not isinstance(info.get("kind"), str) or not isinstance(info.get("args"), dict):
        raise DataError(f"{path}: unsupported model file (format {info.get('format')!r}, kind {info.get('kind')!r})")
    return info


def load_weights(model: nn.Module, path: str | os.PathLike, info: dict[str, Any] | None = None) -> nn.Module:
    """Load a model file's weights into an existing module of the same architecture."""
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable model file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    info = info or read_description(path)  # the caller may have read the header already
    if info.get("sha256") != weights_digest(state):
        raise DataError(f"{path}: weights do not match the checksum recorded with them (a damaged file)")
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DataError(f"{path}: non-finite weights in {bad[0]} (a diverged or damaged model)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit the model ({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})") from None
    return model



def _construct(cls: type[nn.Module], path: str | os.PathLike, info: dict[str, Any], device: str) -> nn.Module:
    """cls(**args) built on `device`; arguments the class refuses or torch cannot size are one line."""
    try:
        with torch.device(device):
            return cls(**info["args"])
    except (TypeError, ValueError, OverflowError, RuntimeError, ConfigError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot rebuild the {info['kind']} it describes ({reason})") from None


def rebuild(cls: type[nn.Module], path: str | os.PathLike, info: dict[str, Any],
            device: torch.device | str | None = None) -> nn.Module:
    """The model of class `cls` that `info` (read_description(path)) describes, with the file's weights, in
    eval mode on `device` (default CPU); arguments the class does not take are one line."""
    # Sized on the meta device first (shapes, no memory): a forged file's arguments could ask for terabytes,
    # and its weights must all be in the file, so a model bigger than the file is refused before allocating.
    needed = sum(t.nelement() * t.element_size() for t in _construct(cls, path, info, "meta").state_dict().values())
    held = os.stat(path).st_size
    if needed > held:
        raise DataError(f"{path}: the {info['kind']} it describes needs {_bytes(needed)} of weights, but the file "
                        f"holds {_bytes(held)} (a truncated or forged file)")
    model = _construct(cls, path, info, "cpu")
    load_weights(model, path, info)
    return model.to(device or "cpu").eval()

# --- names: where a generator's files are ----------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*")
THESIS_KINDS = ("sarnet", "sarnet_vae", "conv_vae", "gen_xgboost")  # the thesis's models; the other kinds are the seeds' baselines


def check_model_name(name: str) -> None:
    """ConfigError unless `name` is fit for file and stage names: letters, digits, single underscores."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r}: use letters, digits and single underscores")


def model_path(kind: str, name: str, root: str | os.PathLike = "models") -> Path:
    """Where training writes a generator: models/<kind>/<name>.safetensors, or the folder models/<name>
    for the generative XGBoost (its boosters are files of their own)."""
    check_model_name(name)
    return Path(root) / name if kind == "gen_xgboost" else Path(root) / kind / f"{name}{SUFFIX}"


def variant_of(name: str, kind: str, latent_dim: int | None) -> str | None:
    """What a thesis model's name adds to its kind and latent size: `fashion` of `sarnet_vae_fashion_L128`,
    `mse` of `sarnet_mse`; None for the model itself (`sarnet_vae_L128`, `sarnet`)."""
    suffix = "" if latent_dim is None else f"_L{int(latent_dim)}"
    if name == f"{kind}{suffix}":
        return None
    if name.startswith(f"{kind}_") and name.endswith(suffix):
        return name[len(kind) + 1 : len(name) - len(suffix)]
    return name
