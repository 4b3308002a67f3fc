"""Tests for sarnet.instruments.calibration: the image transforms and the calibration table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter1d
from torch import nn

from sarnet.instruments.calibration import CALIBRATION_ROWS, blur_columns, calibrate, pad_and_resize, random_perspective
from sarnet.instruments.fid import FidScorer


# --------------------------------------------------------------------------- blur_columns

def single_pixel(n: int = 3, row: int = 14, col: int = 10, which: int = 1) -> torch.Tensor:
    x = torch.zeros(n, 28, 28)
    x[which, row, col] = 1.0
    return x


def sampled_gaussian(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Normalised Gaussian weights at integer offsets -r..r, r = int(truncate·σ + 0.5)."""
    r = int(truncate * sigma + 0.5)
    k = np.arange(-r, r + 1)
    w = np.exp(-(k**2) / (2.0 * sigma**2))
    return w / w.sum()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_blur_spreads_only_down_the_column(sigma):
    x = single_pixel(row=14, col=10)
    out = blur_columns(x, sigma)
    assert out.shape == x.shape and out.dtype == torch.float32
    o = out.numpy()
    # other images of the batch untouched (no blur across the batch axis)
    assert np.all(o[0] == 0) and np.all(o[2] == 0)
    # only column 10 is non-zero
    others = np.delete(o[1], 10, axis=1)
    assert np.all(others == 0)
    assert np.count_nonzero(o[1][:, 10]) > 1  # it did spread
    # sum preserved far from the border
    assert o[1].sum() == pytest.approx(1.0, rel=1e-6)
    # the column is the sampled Gaussian centred on row 14 (closed form, written out here)
    w = sampled_gaussian(sigma)
    r = (len(w) - 1) // 2
    expected_col = np.zeros(28)
    expected_col[14 - r : 14 + r + 1] = w
    np.testing.assert_allclose(o[1][:, 10], expected_col, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_blur_matches_scipy_along_columns(sigma):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 28, 28, generator=g)
    out = blur_columns(x, sigma).numpy()
    arr = x.numpy().astype(np.float64)
    for i in range(len(arr)):
        # a 2-D image: axis 0 runs down a column; black (0) outside the image
        ref = gaussian_filter1d(arr[i], sigma=sigma, axis=0, mode="constant", cval=0.0)
        np.testing.assert_allclose(out[i], ref, rtol=1e-6, atol=1e-6)
        # and per column with 1-D calls
        for c in (0, 13, 27):
            col = gaussian_filter1d(arr[i][:, c], sigma=sigma, mode="constant", cval=0.0)
            np.testing.assert_allclose(out[i][:, c], col, rtol=1e-6, atol=1e-6)


def test_blur_near_border_loses_mass_to_black_outside():
    x = single_pixel(row=0, col=5)
    out = blur_columns(x, 1.0).numpy()[1]
    w = sampled_gaussian(1.0)
    assert out.sum() == pytest.approx(w[len(w) // 2 :].sum(), rel=1e-5)  # the upper half falls outside


def test_larger_sigma_spreads_more():
    x = single_pixel(row=14, col=10)
    rows = np.arange(28)
    spreads = []
    for sigma in (0.5, 1.0):
        col = blur_columns(x, sigma).numpy()[1][:, 10]
        spreads.append(float(np.sum(col * (rows - 14) ** 2) / col.sum()))
        if sigma == 0.5:
            peak_small = col[14]
        else:
            peak_large = col[14]
    assert spreads[1] > spreads[0] * 2
    assert peak_large < peak_small


# --------------------------------------------------------------------------- pad_and_resize

def test_pad_zero_is_identity():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 28, 28, generator=g)
    out = pad_and_resize(x, 0)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad", [1, 2, 5])
def test_pad_matches_pil_bilinear(pad):
    """torch's antialiased bilinear resize follows PIL's; PIL on the padded image is an independent route."""
    g = torch.Generator().manual_seed(pad)
    x = torch.rand(3, 28, 28, generator=g)
    out = pad_and_resize(x, pad).numpy()
    for i, img in enumerate(x.numpy()):
        padded = np.pad(img, pad, mode="constant", constant_values=0.0).astype(np.float32)
        ref = np.asarray(Image.fromarray(padded, mode="F").resize((28, 28), Image.BILINEAR))
        np.testing.assert_allclose(out[i], np.clip(ref, 0, 1), atol=1e-5)


@pytest.mark.parametrize("pad", [1, 3, 5])
def test_pad_shrinks_centred_white_square(pad):
    x = torch.zeros(2, 28, 28)
    x[:, 9:19, 9:19] = 1.0  # 10×10 white square, centred
    out = pad_and_resize(x, pad)
    assert out.shape == (2, 28, 28)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # bright area (pixels above half intensity) drops
    before = int((x[0] > 0.5).sum())
    after = int((out[0] > 0.5).sum())
    assert after < before
    # total intensity scales roughly with the area factor (28 / (28 + 2·pad))²
    factor = (28 / (28 + 2 * pad)) ** 2
    assert float(out[0].sum()) == pytest.approx(float(x[0].sum()) * factor, rel=0.05)
    # still centred: the image is symmetric under flips like the input
    torch.testing.assert_close(out[0], out[0].flip(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[0], out[0].flip(1), rtol=0, atol=1e-5)
    # the border rows are black for pad ≥ 2 (the padding is more than one output pixel)
    if pad >= 2:
        assert float(out[0, 0].abs().max()) == 0.0


def test_more_padding_shrinks_more():
    x = torch.zeros(1, 28, 28)
    x[:, 8:20, 8:20] = 1.0
    sums = [float(pad_and_resize(x, p).sum()) for p in (0, 1, 3, 5)]
    assert sums == sorted(sums, reverse=True) and len(set(sums)) == 4


# --------------------------------------------------------------------------- random_perspective

def digits_like(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 28, 28, generator=g)
    x[:, :4] = 0
    x[:, -4:] = 0
    return x


def test_perspective_reproducible_and_seed_dependent():
    x = digits_like()
    a = random_perspective(x, 0.5, torch.Generator().manual_seed(7))
    b = random_perspective(x, 0.5, torch.Generator().manual_seed(7))
    c = random_perspective(x, 0.5, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x)
    # different images of the batch get different corner draws: the same image twice is warped differently
    twin = torch.stack([x[0], x[0]])
    t = random_perspective(twin, 0.5, torch.Generator().manual_seed(3))
    assert not torch.allclose(t[0], t[1])


def test_perspective_leaves_global_rng_untouched():
    torch.manual_seed(1234)
    before = torch.get_rng_state().clone()
    random_perspective(digits_like(), 0.3, torch.Generator().manual_seed(5))
    after = torch.get_rng_state()
    assert torch.equal(before, after)
    # the next global draw is the one it would have been without the call
    draw = torch.rand(3)
    torch.manual_seed(1234)
    torch.testing.assert_close(draw, torch.rand(3), rtol=0, atol=0)


def test_perspective_zero_distortion_is_identity():
    x = digits_like(3)
    out = random_perspective(x, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- calibrate

@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    return FidScorer(model, batch_size=64)


@pytest.fixture(scope="module")
def pools():
    g = torch.Generator().manual_seed(42)
    test = torch.rand(120, 28, 28, generator=g) * 0.9
    train = torch.rand(200, 28, 28, generator=g)
    return test, train


def test_calibrate_structure(scorer, pools):
    test, train = pools
    messages = []
    res = calibrate({"cnn": scorer}, test, train, n=50, seed=3, progress=messages.append)
    assert list(res) == [row.key for row in CALIBRATION_ROWS]
    assert len(messages) == len(CALIBRATION_ROWS)
    for row in CALIBRATION_ROWS:
        entry = res[row.key]
        assert set(entry) == {"label", "thesis_fid", "cnn"} and set(entry["cnn"]) == {"fid", "ratio"}
        assert entry["label"] == row.label
        assert entry["thesis_fid"] == row.thesis_fid
        fid = entry["cnn"]["fid"]
        assert isinstance(fid, float) and math.isfinite(fid) and fid >= 0.0
        assert entry["cnn"]["ratio"] == fid / entry["thesis_fid"]
    # strong transforms move the statistics more than the sampling noise does
    assert res["pad_5"]["cnn"]["fid"] > res["test_vs_test"]["cnn"]["fid"]


def naive_column_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each pixel the sampled Gaussian's weighted sum of its column's pixels, black outside the image."""
    w = sampled_gaussian(sigma)
    r = (len(w) - 1) // 2
    x = images.double()
    out = torch.zeros_like(x)
    for k in range(-r, r + 1):  # out[y] += w[k] · x[y - k]
        shifted = torch.zeros_like(x)
        if k >= 0:
            shifted[:, k:, :] = x[:, : 28 - k, :]
        else:
            shifted[:, :k, :] = x[:, -k:, :]
        out += float(w[k + r]) * shifted
    return out.float()


def _row_sets_from_their_names(key, rng, gen, test, train, n):
    """The two sets each row's label names, written out here from the label alone (docs/protocol.md
    "Calibration"): draws with replacement from the test pool unless the label says otherwise; a
    transformed set is the transform of a second, independent draw."""
    def draw(pool, p=None):
        return pool[torch.from_numpy(rng.choice(len(pool), size=n, replace=True, p=p))]

    if key == "test_vs_test":
        return draw(test), draw(test)
    if key == "train_vs_train":
        return (train[torch.from_numpy(rng.choice(len(train), size=n, replace=False))],
                train[torch.from_numpy(rng.choice(len(train), size=n, replace=False))])
    if key == "biased_draw":
        weights = np.array([1.5] * (len(test) // 2) + [1.0] * (len(test) - len(test) // 2))
        return draw(test), draw(test, weights / weights.sum())
    a, b = draw(test), draw(test)
    name, value = key.rsplit("_", 1)
    transform = {"blur": lambda x: naive_column_blur(x, float(value)),
                 "pad": lambda x: pad_and_resize(x, int(value)),
                 "perspective": lambda x: random_perspective(x, float(value), gen)}[name]
    return a, transform(b)


def test_every_calibration_row_is_the_fid_of_the_transform_it_names(scorer, pools):
    """The blur σ = 0.5 row sets the README's whole FID scale: each row's FID must be the FID of the sets
    its label names (the transform and its parameter), drawn from the row's own streams."""
    test, train = pools
    res = calibrate({"cnn": scorer}, test, train, n=50, seed=3)
    fids = {}
    for i, row in enumerate(CALIBRATION_ROWS):
        rng, gen = np.random.default_rng([3, i]), torch.Generator().manual_seed(3 * 1000 + i)
        expected = scorer.fid(*_row_sets_from_their_names(row.key, rng, gen, test, train, 50))
        assert res[row.key]["cnn"]["fid"] == pytest.approx(expected, rel=1e-4), row.key
        fids[row.key] = expected
    assert len(set(fids.values())) == len(fids)  # no two rows measure the same thing


def test_calibrate_same_seed_same_results(scorer, pools):
    test, train = pools
    a = calibrate({"cnn": scorer}, test, train, n=50, seed=11)
    b = calibrate({"cnn": scorer}, test, train, n=50, seed=11)
    assert a == b
    c = calibrate({"cnn": scorer}, test, train, n=50, seed=12)
    assert c["test_vs_test"]["cnn"]["fid"] != a["test_vs_test"]["cnn"]["fid"]
