"""Tests for sarnet.core.data: IDX parsing, dataset preparation, error reporting, real data checks.

Synthetic IDX files are written here byte by byte (big-endian header), so nothing the code
under test produces is used as its own reference.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import sarnet.core.data as data
from sarnet.core.data import (
    DATASETS,
    SPLIT_FILES,
    DatasetSpec,
    load_prepared,
    parse_idx,
    prepare_dataset,
    read_idx_bytes,
)
from sarnet.core.errors import DataError
from data_dir import DATA_DIR, needs_data


# --------------------------------------------------------------------------- helpers

def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written out by hand."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.tobytes(order="C")


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


N_TRAIN, N_TEST = 30, 12


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    train_labels = np.arange(N_TRAIN, dtype=np.uint8) % 10  # every class present, 3 each
    test_labels = np.array([0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 5], dtype=np.uint8)
    return {
        "train_images": rng.integers(0, 256, size=(N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": train_labels,
        "test_images": rng.integers(0, 256, size=(N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": test_labels,
    }


def write_dataset(folder: Path, arrays: dict[str, np.ndarray], gzipped: bool = True) -> dict[str, bytes]:
    """Write the four IDX files into `folder`; returns the decompressed content by file stem."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for key, stem in SPLIT_FILES.items():
        content = idx_bytes(arrays[key])
        contents[stem] = content
        if gzipped:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / stem).write_bytes(content)
    return contents


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch):
    """The tests choose the data folder themselves; a SARNET_DATA_DIR in the caller's env must not leak in."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """A data folder with a synthetic 'mnist' whose checksums are registered in a patched spec."""
    arrays = synthetic_arrays()
    root = tmp_path / "datasets"
    contents = write_dataset(root / "mnist", arrays)
    spec = dataclasses.replace(DATASETS["mnist"], sha256={stem: sha256(c) for stem, c in contents.items()})
    monkeypatch.setitem(DATASETS, "mnist", spec)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return {"root": root, "raw": root / "mnist", "arrays": arrays, "contents": contents, "out_dir": out_dir}


def assert_one_line_naming(exc: BaseException, name: str) -> None:
    msg = str(exc)
    assert name in msg, f"{name!r} not in {msg!r}"
    assert "\n" not in msg and "\r" not in msg, repr(msg)


def assert_failed_cleanly(out_path: Path) -> None:
    assert not out_path.exists()
    if out_path.parent.exists():
        assert sorted(p.name for p in out_path.parent.iterdir()) == []


# --------------------------------------------------------------------------- IDX round trip

@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path, gzipped, shape):
    rng = np.random.default_rng(len(shape))
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    content = idx_bytes(array)
    path = tmp_path / ("x.idx.gz" if gzipped else "x.idx")
    path.write_bytes(gzip.compress(content) if gzipped else content)
    read = read_idx_bytes(path)
    assert read == content
    parsed = parse_idx(read, path)
    assert parsed.dtype == np.uint8
    assert parsed.shape == shape
    np.testing.assert_array_equal(parsed, array)


def test_parse_idx_reads_big_endian_dims(tmp_path):
    # 256 = 0x00000100: a little-endian reader would see 65536
    content = bytes([0, 0, 8, 1, 0, 0, 1, 0]) + bytes(range(256))
    parsed = parse_idx(content, tmp_path / "f")
    assert parsed.shape == (256,)
    np.testing.assert_array_equal(parsed, np.arange(256, dtype=np.uint8))


@pytest.mark.parametrize(
    "content",
    [
        b"\x01\x00\x08\x01\x00\x00\x00\x01\x05",  # bad magic
        b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05",  # float element type
        b"\x00\x00\x08\x03\x00\x00\x00\x01",  # header cut short
        b"\x00\x00\x08\x01\x00\x00\x00\x03\x05\x06",  # one data byte missing
        b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06",  # one byte too many
        b"\x00\x00",  # too short for a magic number
    ],
)
def test_parse_idx_rejects_malformed(tmp_path, content):
    path = tmp_path / "broken-idx1-ubyte"
    with pytest.raises(DataError) as info:
        parse_idx(content, path)
    assert_one_line_naming(info.value, "broken-idx1-ubyte")


# --------------------------------------------------------------------------- prepare_dataset on synthetic data

@pytest.mark.parametrize("gzipped", [True, False])
def test_prepare_dataset_synthetic(tmp_path, monkeypatch, gzipped):
    arrays = synthetic_arrays(1)
    root = tmp_path / "d"
    contents = write_dataset(root / "mnist", arrays, gzipped=gzipped)
    spec = DatasetSpec(
        name="mnist",
        folders=("mnist",),
        debian_dir=None,
        torchvision_class="MNIST",
        sha256={stem: sha256(c) for stem, c in contents.items()},
    )
    monkeypatch.setitem(DATASETS, "mnist", spec)
    out = tmp_path / "prepared" / "mnist.npz"
    summary = prepare_dataset("mnist", root, out)
    assert summary["train"] == N_TRAIN and summary["test"] == N_TEST
    assert summary["dataset"] == "mnist"
    assert out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["mnist.npz"]  # no temporary left over
    with np.load(out) as npz:
        assert set(npz.files) == set(SPLIT_FILES)
        for key, expected in arrays.items():
            assert npz[key].dtype == np.uint8, key
            assert npz[key].shape == expected.shape, key
            np.testing.assert_array_equal(npz[key], expected)
    assert dict(np.load(out))["train_images"].shape == (N_TRAIN, 28, 28)


def test_prepare_dataset_bytes_do_not_depend_on_the_clock(synthetic, monkeypatch):
    # DVC hashes the file: a re-run at another time must give the same bytes, or every stage
    # downstream of `prepare` would re-run.
    import hashlib
    import time as time_module

    first, second = synthetic["out_dir"] / "a.npz", synthetic["out_dir"] / "b.npz"
    prepare_dataset("mnist", synthetic["root"], first)
    later = time_module.time() + 3 * 86400
    monkeypatch.setattr(time_module, "time", lambda: later)
    monkeypatch.setattr(time_module, "localtime", lambda *a: time_module.gmtime(later))
    prepare_dataset("mnist", synthetic["root"], second)
    assert hashlib.md5(first.read_bytes()).hexdigest() == hashlib.md5(second.read_bytes()).hexdigest()


def test_load_prepared_digit_subset(synthetic):
    out = synthetic["out_dir"] / "m.npz"
    prepare_dataset("mnist", synthetic["root"], out)
    arrays = synthetic["arrays"]
    full = load_prepared(out)
    np.testing.assert_array_equal(full.train.labels, arrays["train_labels"])
    for k in range(10):
        sub = load_prepared(out, digit=k)
        for split, key in ((sub.train, "train"), (sub.test, "test")):
            keep = arrays[f"{key}_labels"] == k
            assert np.all(split.labels == k)
            assert len(split.labels) == int(keep.sum()) == len(split.images)
            np.testing.assert_array_equal(split.images, arrays[f"{key}_images"][keep])
    five = load_prepared(out, digit=5)
    assert len(five.train.images) == 3 and len(five.test.images) == 3


def test_load_prepared_errors(tmp_path, synthetic):
    with pytest.raises(DataError) as info:
        load_prepared(tmp_path / "nothing.npz")
    assert_one_line_naming(info.value, "nothing.npz")
    out = synthetic["out_dir"] / "m.npz"
    prepare_dataset("mnist", synthetic["root"], out)
    with pytest.raises(DataError):
        load_prepared(out, digit=42)  # no such label


def test_env_var_takes_precedence_over_argument(synthetic, tmp_path, monkeypatch):
    elsewhere = tmp_path / "argument-folder-that-does-not-exist"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(synthetic["root"]))
    out = synthetic["out_dir"] / "env.npz"
    summary = prepare_dataset("mnist", elsewhere, out)
    assert summary["source"] == str(synthetic["raw"])
    assert out.is_file()
    # and the other way round: a bad env folder wins over a good argument
    monkeypatch.setenv(data.DATA_DIR_ENV, str(elsewhere))
    out2 = synthetic["out_dir"] / "env2.npz"
    with pytest.raises(DataError) as info:
        prepare_dataset("mnist", synthetic["root"], out2)
    assert_one_line_naming(info.value, elsewhere.name)
    assert not out2.exists()


# --------------------------------------------------------------------------- error cases

def run_failing(name, data_dir, out_path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        prepare_dataset(name, data_dir, out_path)
    assert_failed_cleanly(out_path)
    return info.value


def test_missing_data_folder(tmp_path, synthetic):
    missing = tmp_path / "no-such-data-folder"
    exc = run_failing("mnist", missing, synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, "no-such-data-folder")


def test_data_folder_without_dataset_subfolder(tmp_path, synthetic):
    empty = tmp_path / "empty-data-folder"
    (empty / "unrelated").mkdir(parents=True)
    exc = run_failing("mnist", empty, synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, "empty-data-folder")


@pytest.mark.parametrize("stem", list(SPLIT_FILES.values()))
def test_missing_one_file(synthetic, stem):
    (synthetic["raw"] / f"{stem}.gz").unlink()
    exc = run_failing("mnist", synthetic["root"], synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, stem)


@pytest.mark.parametrize("stem", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize("cut", [1, 100])
def test_truncated_gzip_file(synthetic, stem, cut):
    path = synthetic["raw"] / f"{stem}.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut])
    exc = run_failing("mnist", synthetic["root"], synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, path.name)


@pytest.mark.parametrize("cut", [1, 784])
def test_truncated_plain_file(synthetic, cut):
    stem = "train-images-idx3-ubyte"
    gz = synthetic["raw"] / f"{stem}.gz"
    gz.unlink()
    plain = synthetic["raw"] / stem
    plain.write_bytes(synthetic["contents"][stem][:-cut])
    exc = run_failing("mnist", synthetic["root"], synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, stem)


def test_truncated_plain_file_with_matching_checksum(synthetic, monkeypatch):
    """Even if the checksum were of the truncated content, the IDX size check catches it."""
    stem = "train-labels-idx1-ubyte"
    (synthetic["raw"] / f"{stem}.gz").unlink()
    cut = synthetic["contents"][stem][:-3]
    (synthetic["raw"] / stem).write_bytes(cut)
    spec = DATASETS["mnist"]
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(spec, sha256={**spec.sha256, stem: sha256(cut)}))
    exc = run_failing("mnist", synthetic["root"], synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, stem)


@pytest.mark.parametrize("where", ["stream", "crc", "header"])
def test_corrupt_gzip(synthetic, where):
    stem = "t10k-images-idx3-ubyte"
    path = synthetic["raw"] / f"{stem}.gz"
    raw = bytearray(path.read_bytes())
    if where == "stream":
        for i in range(20, 60):
            raw[i] ^= 0xFF
    elif where == "crc":
        raw[-6] ^= 0xFF  # CRC32 in the 8-byte trailer
    else:
        raw[2] = 0x07  # compression method other than deflate
    path.write_bytes(bytes(raw))
    exc = run_failing("mnist", synthetic["root"], synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, path.name)


def test_wrong_checksum(synthetic):
    stem = "train-labels-idx1-ubyte"
    labels = synthetic["arrays"]["train_labels"].copy()
    labels[0] = (labels[0] + 1) % 10  # valid IDX, same size, different content
    path = synthetic["raw"] / f"{stem}.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    exc = run_failing("mnist", synthetic["root"], synthetic["out_dir"] / "o.npz")
    assert_one_line_naming(exc, path.name)
    assert "SHA-256" in str(exc)


def test_real_checksums_reject_synthetic_data(tmp_path):
    """Without the patched spec, the built-in MNIST checksums reject synthetic files."""
    root = tmp_path / "d"
    write_dataset(root / "mnist", synthetic_arrays())
    out = tmp_path / "out" / "o.npz"
    exc = run_failing("mnist", root, out)
    assert_one_line_naming(exc, "train-images-idx3-ubyte")


def test_image_label_count_mismatch(tmp_path, monkeypatch):
    arrays = synthetic_arrays()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    root = tmp_path / "d"
    contents = write_dataset(root / "mnist", arrays)
    spec = dataclasses.replace(DATASETS["mnist"], sha256={s: sha256(c) for s, c in contents.items()})
    monkeypatch.setitem(DATASETS, "mnist", spec)
    exc = run_failing("mnist", root, tmp_path / "out" / "o.npz")
    assert_one_line_naming(exc, "mnist")


def test_unknown_dataset(tmp_path):
    out = tmp_path / "out" / "o.npz"
    exc = run_failing("cifar-ten", tmp_path, out)
    assert_one_line_naming(exc, "cifar-ten")


# --------------------------------------------------------------------------- real data

SHARED_DATA = DATA_DIR
needs_real_data = needs_data

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def real_mnist(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip("offline MNIST copies not available")
    saved = os.environ.pop(data.DATA_DIR_ENV, None)
    try:
        out = tmp_path_factory.mktemp("real") / "mnist.npz"
        summary = prepare_dataset("mnist", SHARED_DATA, out)
    finally:
        if saved is not None:
            os.environ[data.DATA_DIR_ENV] = saved
    return out, summary


@needs_real_data
def test_real_mnist_label_counts(real_mnist):
    out, summary = real_mnist
    assert summary["train"] == 60000 and summary["test"] == 10000
    with np.load(out) as npz:
        assert npz["train_images"].dtype == np.uint8 and npz["train_images"].shape == (60000, 28, 28)
        assert npz["test_images"].dtype == np.uint8 and npz["test_images"].shape == (10000, 28, 28)
        assert npz["train_labels"].dtype == np.uint8 and npz["train_labels"].shape == (60000,)
        assert np.bincount(npz["train_labels"], minlength=10).tolist() == MNIST_TRAIN_COUNTS
        assert np.bincount(npz["test_labels"], minlength=10).tolist() == MNIST_TEST_COUNTS


@needs_real_data
def test_real_mnist_digit_five(real_mnist):
    out, _ = real_mnist
    five = load_prepared(out, digit=5)
    assert len(five.train.images) == 5421 and len(five.train.labels) == 5421
    assert len(five.test.images) == 892 and len(five.test.labels) == 892
    assert np.all(five.train.labels == 5) and np.all(five.test.labels == 5)


@needs_real_data
def test_real_mnist_images_match_raw_bytes(real_mnist):
    out, _ = real_mnist
    content = gzip.decompress((SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(content).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"  # README's independent fact
    assert content[:4] == b"\x00\x00\x08\x03"
    expected = np.frombuffer(content[16:], dtype=np.uint8).reshape(60000, 28, 28)
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["train_images"], expected)
    label_content = gzip.decompress((SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["test_labels"], np.frombuffer(label_content[8:], dtype=np.uint8))


@needs_real_data
def test_real_fashion_label_counts(tmp_path):
    out = tmp_path / "fashion.npz"
    summary = prepare_dataset("fashion", SHARED_DATA, out)
    assert summary["source"] == str(SHARED_DATA / "fashion-mnist")
    with np.load(out) as npz:
        assert npz["train_images"].shape == (60000, 28, 28) and npz["train_images"].dtype == np.uint8
        assert npz["test_images"].shape == (10000, 28, 28) and npz["test_images"].dtype == np.uint8
        assert np.bincount(npz["train_labels"], minlength=10).tolist() == [6000] * 10
        assert np.bincount(npz["test_labels"], minlength=10).tolist() == [1000] * 10
