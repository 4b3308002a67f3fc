"""MNIST and Fashion-MNIST: find the IDX files offline, verify them, store compact uint8 arrays.

Search order for the raw files of a dataset:
  1. `$SARNET_DATA_DIR` (runtime override), else the folder given by the caller (params.yaml);
  2. Debian's packaged copy (`/usr/share/datasets/<name>`), where one exists;
  3. torchvision's download into `download_dir` (only for users who are online).
Whatever the source, the decompressed content must match the known SHA-256 sums.
"""

from __future__ import annotations

import gzip
import math
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sarnet.core.errors import DataError
from sarnet.core.files import atomic_path

IMAGE_SIZE = 28  # every image of the project is 28×28 grey levels
PIXELS = IMAGE_SIZE * IMAGE_SIZE

DATA_DIR_ENV = "SARNET_DATA_DIR"

SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folders: tuple[str, ...]  # sub-folders of a data dir that may hold the four IDX files
    debian_dir: str | None
    torchvision_class: str
    sha256: dict[str, str]  # of the decompressed IDX content, keyed by file stem


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        folders=("mnist", "MNIST/raw", "MNIST"),
        debian_dir=None,
        torchvision_class="MNIST",
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion": DatasetSpec(
        name="fashion",
        folders=("fashion-mnist", "fashion", "FashionMNIST/raw", "FashionMNIST"),
        debian_dir="/usr/share/datasets/fashion-mnist",
        torchvision_class="FashionMNIST",
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
}

_IDX_DTYPE_UBYTE = 0x08


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}") from None


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _holds_dataset(folder: Path) -> bool:
    return any(_find_file(folder, stem) for stem in SPLIT_FILES.values())


def find_raw_dir(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> Path | None:
    """The folder holding this dataset's IDX files, or None if no configured source has them.

    A configured folder that does not exist, or holds no sub-folder for the dataset, is an
    error rather than a silent fall-through: the user asked for that folder.
    """
    configured = os.environ.get(DATA_DIR_ENV) or data_dir
    if configured:
        root = Path(configured).expanduser()
        source = f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else "prepare.data_dir"
        if root.exists() and not root.is_dir():
            raise DataError(f"{root}: data folder (from {source}) is a file, not a folder; point it at a folder holding {spec.folders[0]}/")
        if not root.is_dir():
            raise DataError(f"{root}: data folder (from {source}) does not exist; point it at a folder holding {spec.folders[0]}/")
        for sub in spec.folders:
            if (root / sub).is_dir() and _holds_dataset(root / sub):
                return root / sub
        raise DataError(
            f"{root}: no {spec.name} files in any of {', '.join(s + '/' for s in spec.folders)}; "
            f"copy the four IDX files of {spec.name} into {root / spec.folders[0]}/"
        )
    if spec.debian_dir and Path(spec.debian_dir).is_dir() and _holds_dataset(Path(spec.debian_dir)):
        return Path(spec.debian_dir)
    return None


MAX_IDX_BYTES = 200_000_000  # MNIST's largest file is 47 MB; anything near this is not MNIST-style data


def read_idx_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file (gzipped or not). The header says how big the file
    must be, so no more than that is ever decompressed (a small gzip bomb costs nothing)."""
    try:
        with path.open("rb") as raw:
            opener = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else None
            raw.seek(0)
            stream = opener or raw
            head = stream.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != _IDX_DTYPE_UBYTE:
                return head + stream.read(64)  # parse_idx names what is wrong with it
            dims = stream.read(4 * head[3])
            if len(dims) < 4 * head[3]:
                return head + dims  # a truncated header: parse_idx says so
            shape = [int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(len(dims) // 4)]
            size = 4 + len(dims) + math.prod(shape)  # Python ints: a corrupt header cannot overflow
            if size > MAX_IDX_BYTES:
                raise DataError(f"{path}: its header claims {size:,} bytes of shape {tuple(shape)}; not MNIST-style data")
            return head + dims + stream.read(size - 4 - len(dims) + 1)  # one byte more shows a too-long file
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or corrupt, replace it with a fresh copy") from None


def parse_idx(content: bytes, path: Path) -> np.ndarray:
    """Parse the IDX format (big-endian header, unsigned bytes) with size checks."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number); replace it with the standard file")
    if content[2] != _IDX_DTYPE_UBYTE:
        raise DataError(f"{path}: IDX element type {content[2]:#x} is not unsigned byte; this is not MNIST-style data")
    ndim = content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{path}: truncated IDX header; replace it with a fresh copy")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(content) != expected:
        raise DataError(f"{path}: {len(content)} bytes, expected {expected} for shape {shape}; the file is truncated or corrupt")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def load_raw(spec: DatasetSpec, raw_dir: Path) -> dict[str, np.ndarray]:
    """Read and checksum the four IDX files of a dataset."""
    arrays = {}
    for key, stem in SPLIT_FILES.items():
        path = _find_file(raw_dir, stem)
        if path is None:
            raise DataError(f"{raw_dir / stem}(.gz): missing; copy the standard {spec.name} file there")
        content = read_idx_bytes(path)
        digest = hashlib.sha256(content).hexdigest()
        if digest != spec.sha256[stem]:
            raise DataError(
                f"{path}: SHA-256 of the content is {digest[:12]}…, expected {spec.sha256[stem][:12]}…; "
                f"the file is corrupt or not the standard {spec.name}, replace it with a fresh copy"
            )
        arrays[key] = parse_idx(content, path)
    n_train, n_test = len(arrays["train_images"]), len(arrays["test_images"])
    if len(arrays["train_labels"]) != n_train or len(arrays["test_labels"]) != n_test:
        raise DataError(f"{raw_dir}: image and label counts differ; the files do not belong together")
    return arrays


def download_with_torchvision(spec: DatasetSpec, download_dir: Path) -> Path:
    """Fetch the raw files with torchvision (needs internet); returns the folder holding them."""
    import torchvision.datasets as tvd

    dataset_class = getattr(tvd, spec.torchvision_class)
    try:
        dataset_class(root=str(download_dir), train=True, download=True)
        dataset_class(root=str(download_dir), train=False, download=True)
    except Exception as exc:  # torchvision raises several kinds on no network
        raise DataError(
            f"{spec.name}: no local copy found and the download failed ({type(exc).__name__}); "
            f"set ${DATA_DIR_ENV} or prepare.data_dir to a folder holding {spec.folders[0]}/ with the four IDX files"
        ) from None
    return download_dir / spec.torchvision_class / "raw"


def prepare_dataset(name: str, data_dir: str | os.PathLike | None, out_path: str | os.PathLike,
                    download_dir: str | os.PathLike = "data/raw") -> dict[str, int | str]:
    """Locate, verify and store a dataset as one `.npz` of uint8 arrays; returns a summary."""
    spec = dataset_spec(name)
    raw_dir = find_raw_dir(spec, data_dir)
    source = str(raw_dir) if raw_dir else "torchvision download"
    if raw_dir is None:
        raw_dir = download_with_torchvision(spec, Path(download_dir))
    arrays = load_raw(spec, raw_dir)
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as fh:  # a file object stops numpy from appending ".npz" to the temp name
            np.savez(fh, **arrays)
    return {
        "dataset": name,
        "source": source,
        "train": int(len(arrays["train_images"])),
        "test": int(len(arrays["test_images"])),
    }


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8


@dataclass(frozen=True)
class Prepared:
    train: Split
    test: Split

    def digit(self, digit: int | None) -> "Prepared":
        """The subset of one class (the thesis uses digit 5); None keeps every class."""
        if digit is None:
            return self
        return Prepared(_select(self.train, digit), _select(self.test, digit))


def _select(split: Split, label: int) -> Split:
    keep = split.labels == label
    if not keep.any():
        raise DataError(f"no images with label {label}; labels present: {sorted(set(split.labels.tolist()))}")
    return Split(split.images[keep], split.labels[keep])


def load_prepared(path: str | os.PathLike, digit: int | None = None) -> Prepared:
    """Load a `prepare` output, optionally keeping only one class."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared data missing; run `dvc repro prepare` first")
    with np.load(path) as npz:
        data = Prepared(
            Split(npz["train_images"], npz["train_labels"]),
            Split(npz["test_images"], npz["test_labels"]),
        )
    return data.digit(digit)


def to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28) in [0, 1] (pixels / 255, no binarisation)."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
