"""Tests for sarnet.instruments.fid: the Fréchet distance, feature statistics and the FidScorer.

Every expected value comes from an independent route: scipy's general matrix square root,
closed forms for special cases, or statistics written out by hand here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from sarnet.core.errors import ConfigError
from sarnet.instruments.fid import FidScorer, feature_statistics, frechet_distance, to_signed_unit


# --------------------------------------------------------------------------- helpers

def random_spd(rng: np.random.Generator, d: int, low: float = 0.5, high: float = 5.0) -> np.ndarray:
    """A well-conditioned symmetric positive definite matrix (eigenvalues in [low, high])."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eigvals = rng.uniform(low, high, size=d)
    m = (q * eigvals) @ q.T
    return (m + m.T) / 2


def scipy_reference(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general (non-symmetric) matrix square root."""
    diff = np.asarray(mu1, float) - np.asarray(mu2, float)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(np.real(covmean)))


def low_rank_cov(rng: np.random.Generator, d: int, rank: int, n: int = 400, scale: float = 1.0):
    """Mean, covariance and orthonormal basis of features lying in a `rank`-dim subspace of R^d."""
    basis = rng.normal(size=(d, rank)) * scale
    x = rng.normal(size=(n, rank)) @ basis.T + rng.normal(size=d)
    q, _ = np.linalg.qr(basis)
    return x.mean(axis=0), np.cov(x, rowvar=False), q


# --------------------------------------------------------------------------- frechet_distance

@pytest.mark.parametrize("d", [2, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_sqrtm_reference(d, seed):
    rng = np.random.default_rng(1000 * d + seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    expected = scipy_reference(mu1, s1, mu2, s2)
    assert expected > 0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("d", [2, 5, 10])
def test_equal_covariances_give_squared_mean_distance(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s = random_spd(rng, d)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("d", [1, 3, 10])
def test_diagonal_covariances_closed_form(d):
    rng = np.random.default_rng(7 + d)
    a, b = rng.uniform(0.1, 9.0, size=d), rng.uniform(0.1, 9.0, size=d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2))
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    "mu1, var1, mu2, var2",
    [(0.0, 4.0, 1.0, 9.0), (-2.5, 0.25, 3.0, 0.25), (1.0, 1e-4, 1.0, 16.0), (0.0, 0.0, 0.0, 2.0)],
)
def test_one_dimensional_case_with_variances(mu1, var1, mu2, var2):
    # 1-D Gaussians: W2² = (μ1−μ2)² + (σ1−σ2)², with sigma passed as the variance σ².
    expected = (mu1 - mu2) ** 2 + (math.sqrt(var1) - math.sqrt(var2)) ** 2
    assert frechet_distance(mu1, var1, mu2, var2) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # the same with explicit 1-element arrays
    got = frechet_distance(np.array([mu1]), np.array([[var1]]), np.array([mu2]), np.array([[var2]]))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_zero_covariance_against_closed_form():
    # Σ1 = 0: the cross term vanishes, FID = ‖Δμ‖² + tr(Σ2).
    rng = np.random.default_rng(3)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s2 = random_spd(rng, d)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s2))
    zero = np.zeros((d, d))
    for got in (frechet_distance(mu1, zero, mu2, s2), frechet_distance(mu2, s2, mu1, zero)):
        assert isinstance(got, float) and math.isfinite(got)
        assert got == pytest.approx(expected, rel=1e-10)
    both_zero = frechet_distance(mu1, zero, mu2, zero)
    assert both_zero == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-12)
    assert frechet_distance(mu1, zero, mu1, zero) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rank_deficient_covariances_finite_real_nonnegative(seed):
    rng = np.random.default_rng(seed)
    d = 10
    mu1, s1, _ = low_rank_cov(rng, d, rank=3)
    mu2, s2, _ = low_rank_cov(rng, d, rank=3)
    assert np.linalg.matrix_rank(s1) == 3  # really singular
    for value in (
        frechet_distance(mu1, s1, mu2, s2),
        frechet_distance(mu1, s1, mu1, s1),
        frechet_distance(mu2, s2, mu2, s2),
        frechet_distance(mu1, np.zeros((d, d)), mu2, s2),
    ):
        assert type(value) is float
        assert math.isfinite(value) and not math.isnan(value)
        assert value >= 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_identical_rank_deficient_inputs_give_zero(seed):
    rng = np.random.default_rng(100 + seed)
    mu, s, _ = low_rank_cov(rng, 10, rank=3)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    # mean-only difference with a shared singular covariance: exactly ‖Δμ‖² in exact arithmetic
    shift = np.zeros(10)
    shift[0] = 0.7
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(0.49, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_deficient_same_subspace_against_reduced_reference(seed):
    """Two singular covariances sharing a 3-D subspace: the FID equals the FID of the 3×3
    covariances expressed in an orthonormal basis of that subspace (full rank, so scipy is exact)."""
    rng = np.random.default_rng(200 + seed)
    d, r = 10, 3
    basis = rng.normal(size=(d, r))
    q, _ = np.linalg.qr(basis)
    x = rng.normal(size=(300, r)) @ basis.T
    y = rng.normal(size=(300, r)) @ (basis * rng.uniform(0.5, 1.5, size=r)).T + rng.normal(size=d) * 0.3
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    # the mean difference has a component outside the subspace; it enters only through ‖Δμ‖²
    reduced = scipy_reference(np.zeros(r), q.T @ s1 @ q, np.zeros(r), q.T @ s2 @ q)
    expected = reduced + float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(11)
    for d in (2, 5, 10):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d, 0.1, 20.0)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    # also for singular inputs (round-off there is larger, hence the looser tolerance)
    mu1, s1, _ = low_rank_cov(rng, 10, rank=3)
    mu2, s2, _ = low_rank_cov(rng, 10, rank=4)
    a, b = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert a == pytest.approx(b, rel=1e-5)


def test_returns_python_float():
    rng = np.random.default_rng(5)
    s = random_spd(rng, 4)
    value = frechet_distance(np.zeros(4, np.float32), s.astype(np.float32), np.ones(4), s)
    assert type(value) is float


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros(3), np.eye(3), np.zeros(4), np.eye(3)),  # mu2 longer
        (np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)),  # sigma1 wrong size
        (np.zeros(3), np.eye(3), np.zeros(3), np.eye(2)),  # sigma2 wrong size
        (np.zeros(3), np.ones((3, 2)), np.zeros(3), np.eye(3)),  # non-square
    ],
)
def test_shape_mismatch_raises_config_error(args):
    with pytest.raises(ConfigError):
        frechet_distance(*args)


# --------------------------------------------------------------------------- feature_statistics

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_feature_statistics_unbiased_covariance(dtype):
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(37, 6)) * rng.uniform(0.5, 3.0, size=6) + 2.0).astype(dtype)
    mu, sigma = feature_statistics(x)
    x64 = x.astype(np.float64)
    n = x64.shape[0]
    mu_ref = x64.sum(axis=0) / n
    centred = x64 - mu_ref
    sigma_ref = centred.T @ centred / (n - 1)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu.shape == (6,) and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-10, atol=1e-12)
    # distinguishes n-1 from n
    assert not np.allclose(sigma, centred.T @ centred / n, rtol=1e-6, atol=0)


def test_feature_statistics_rejects_too_few_rows():
    with pytest.raises(ConfigError):
        feature_statistics(np.ones((1, 4)))
    with pytest.raises(ConfigError):
        feature_statistics(np.ones(4))


# --------------------------------------------------------------------------- to_signed_unit

def test_to_signed_unit_values_and_shape():
    x = torch.zeros(3, 28, 28)
    x[1] = 1.0
    x[2] = 0.5
    out = to_signed_unit(x)
    assert out.shape == (3, 1, 28, 28)
    assert torch.all(out[0] == -1.0)
    assert torch.all(out[1] == 1.0)
    assert torch.all(out[2] == 0.0)
    # already (N, 1, 28, 28): shape kept
    assert to_signed_unit(torch.rand(4, 1, 28, 28)).shape == (4, 1, 28, 28)


# --------------------------------------------------------------------------- FidScorer

def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].weight.mul_(3.0)
    return model


def images(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 28, 28, generator=g)


def own_statistics(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        feats = model((2.0 * x - 1.0).reshape(len(x), 1, 28, 28)).double().numpy()
    mu = feats.mean(axis=0)
    centred = feats - mu
    return mu, centred.T @ centred / (len(feats) - 1)


def test_fid_scorer_same_set_is_zero():
    scorer = FidScorer(tiny_classifier(), batch_size=64)
    a = images(1, 120)
    assert scorer.fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_scorer_matches_own_statistics():
    model = tiny_classifier(1)
    scorer = FidScorer(model, batch_size=1000)
    a = images(2, 150)
    b = images(3, 130) * 0.8  # darker: a clearly different distribution
    mu_a, s_a = own_statistics(model, a)
    mu_b, s_b = own_statistics(model, b)
    expected = frechet_distance(mu_a, s_a, mu_b, s_b)
    assert expected > 1.0
    assert scipy_reference(mu_a, s_a, mu_b, s_b) == pytest.approx(expected, rel=1e-7)
    assert scorer.fid(a, b) == pytest.approx(expected, rel=1e-6)
    feats = scorer.features(a)
    assert feats.dtype == np.float64 and feats.shape == (150, 10)


def test_fid_scorer_batch_size_does_not_matter():
    model = tiny_classifier(2)
    a, b = images(4, 101), images(5, 97) ** 2
    big = FidScorer(model, batch_size=1000).fid(a, b)
    small = FidScorer(model, batch_size=16).fid(a, b)  # 101 and 97 are not multiples of 16
    assert big > 0.1
    assert small == pytest.approx(big, rel=1e-6)
    np.testing.assert_allclose(
        FidScorer(model, batch_size=7).features(a), FidScorer(model, batch_size=500).features(a), rtol=1e-6, atol=1e-6
    )


def test_large_singular_covariances_do_not_bias_the_trace_term():
    """Round-off eigenvalues of a large singular covariance must not count as real ones:
    with Σ₁ = Σ₂ = S (rank 3 in 10-D, λ_max ~ 1e5..1e7) the exact answer is ‖Δμ‖² = 0.01."""
    rng = np.random.default_rng(7)
    for scale in (100.0, 1000.0):
        basis = rng.standard_normal((10, 3)) * scale
        sigma = basis @ basis.T
        mu1 = np.zeros(10)
        mu2 = mu1.copy()
        mu2[0] = 0.1
        assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(0.01, rel=1e-3)
