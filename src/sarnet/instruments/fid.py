"""The FID instrument: Fréchet distance between Gaussian fits of classifier logits (thesis §3.5).

Protocol (docs/protocol.md "FID protocol"): features are the 10 logits of an MNIST classifier, images scaled to
[-1, 1], statistics in float64 with the unbiased (n-1) covariance. The same logits give the inception
score, the share of images classed as the trained digit and their sharpness, and the spread of the
logits against real images' (collapse); the pixels give the distance to the nearest training image
(memorisation) (docs/baselines.md "Scores from the FID's classifier pass").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sarnet.core.errors import ConfigError


def _clip_roundoff(eigvals: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off noise (|λ| ≲ d·ε·λ_max, either sign) set to 0.

    Without this, a singular covariance's zero eigenvalues come out as ~ε·λ_max, and their square
    roots (~√ε·λ_max) would bias the trace term.
    """
    tol = max(float(eigvals.max(initial=0.0)), 0.0) * len(eigvals) * np.finfo(np.float64).eps * 10
    return np.where(eigvals > tol, eigvals, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(_clip_roundoff(eigvals))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) in float64.

    Tr((Σ₁Σ₂)^½) equals the sum of square roots of the eigenvalues of the symmetric PSD matrix
    Σ₁^½ Σ₂ Σ₁^½ (it is similar to Σ₁Σ₂). Working with that symmetric form keeps everything real
    and finite even when the covariances are singular, where a general sqrtm of Σ₁Σ₂ breaks down.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ConfigError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    cross_eigvals = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(_clip_roundoff(cross_eigvals)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(value, 0.0)  # tiny negative values are round-off on identical inputs


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (n-1) of row-wise features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ConfigError(f"need at least 2 feature rows of shape (n, d), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1)


def to_signed_unit(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images of shape (N, 28, 28) or (N, 1, 28, 28) -> (N, 1, 28, 28) in [-1, 1]."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images * 2.0 - 1.0


class FidScorer:
    """Turns image sets into logit statistics and FID values with one frozen classifier."""

    def __init__(self, classifier: nn.Module, batch_size: int = 2000, device: str | torch.device = "cpu") -> None:
        self.classifier = classifier.eval().to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """The classifier's logits for [0, 1] images, as float64 rows."""
        x = to_signed_unit(images)
        out = [
            self.classifier(x[i : i + self.batch_size].to(self.device)).double().cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out).numpy()

    def statistics(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return feature_statistics(self.features(images))

    def fid(self, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
        return frechet_distance(*self.statistics(images_a), *self.statistics(images_b))


# --- Scores from the same logits (docs/baselines.md "Scores from the FID's classifier pass") ---------------------------------------------

LOG_FLOOR = 1e-12  # inside every log, as TF-GAN's classifier score


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))), p = softmax(logits) and p(y) their mean over the same images (float64)."""
    p = _softmax64(logits)
    marginal = p.mean(axis=0)
    kl = (p * (np.log(np.maximum(p, LOG_FLOOR)) - np.log(np.maximum(marginal, LOG_FLOOR)))).sum(axis=1)
    return float(np.exp(kl.mean()))


def sharpness(logits: np.ndarray) -> float:
    """exp(−E_x H(p(y|x))) in (0, 1]: 1 when every image is classified with certainty."""
    p = _softmax64(logits)
    entropy = -(p * np.log(np.maximum(p, LOG_FLOOR))).sum(axis=1)
    return float(np.exp(-entropy.mean()))


def class_rate(logits: np.ndarray, label: int) -> float:
    """Share of images whose likeliest class is `label` (the five-rate for label 5)."""
    return float((np.asarray(logits).argmax(axis=1) == label).mean())


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows: how spread a set is (a collapsed generator's is small)."""
    from scipy.spatial.distance import pdist

    return float(pdist(np.asarray(features, dtype=np.float64)).mean())


def mean_nearest_distance(images: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> float:
    """Mean over `images` of the L2 pixel distance ([0, 1] pixels) to the nearest `reference` image;
    a memorising generator's is small. The reference is read in chunks (60,000 images fit no matrix)."""
    a = torch.as_tensor(images).reshape(len(images), -1).double()
    nearest = torch.full((len(a),), float("inf"), dtype=torch.float64)
    for start in range(0, len(reference), chunk):
        b = torch.as_tensor(reference[start : start + chunk]).reshape(-1, a.shape[1]).double()
        nearest = torch.minimum(nearest, torch.cdist(a, b).min(dim=1).values)
    return float(nearest.mean())


# --- The evaluation protocol of Table 4.1 (docs/protocol.md "FID protocol") -----------------------

@dataclass(frozen=True)
class FidProtocol:
    """`sets` sets of `n_images` generated images, each against `n_images` real images drawn with
    replacement from the real pool and redrawn for every set; everything derives from `seed`."""

    n_images: int = 10_000
    sets: int = 10
    seed: int = 2024

    def __post_init__(self) -> None:
        if self.n_images < 2 or self.sets < 1:
            raise ConfigError(f"FID protocol needs n_images >= 2 and sets >= 1, got {self.n_images} and {self.sets}")

    def set_seeds(self, index: int) -> tuple[np.random.Generator, int]:
        """Set `index`'s real-image draw and the seed for its generated images: independent
        streams, the same for every model, so models see identical real draws."""
        real_seq, generator_seq = np.random.SeedSequence([self.seed, index]).spawn(2)
        return np.random.default_rng(real_seq), int(generator_seq.generate_state(1, np.uint64)[0] >> 1)


@dataclass
class FidSets:
    """Per-set results of `fid_over_sets`: every instrument's FIDs by its name (`cnn`, `mlp`), and the
    scores read from the first instrument's logits."""

    fids: dict[str, list[float]]  # instrument -> its FID of each set
    preview: torch.Tensor  # the first images of set 0, for a sample grid
    generation_seconds: float
    inception: list[float] = field(default_factory=list)  # per set, from the first instrument's logits
    sharpness: list[float] = field(default_factory=list)
    class_rate: list[float] = field(default_factory=list)  # per set, when a label is given
    spread_ratio: float = float("nan")  # set 0's first `probe` images: logit spread / the real pool's
    nearest_train: float = float("nan")  # set 0's first `probe` images: mean distance to the nearest training image

    def mean(self, instrument: str) -> float:
        return float(np.mean(self.fids[instrument]))

    def std(self, instrument: str) -> float:
        """Population std over sets (numpy's default, ddof=0); 0 for a single set."""
        return float(np.std(self.fids[instrument]))


def fid_over_sets(
    generate: Callable[[int, int], torch.Tensor],
    instruments: Mapping[str, FidScorer],
    real_pool: torch.Tensor,
    protocol: FidProtocol,
    on_set: Callable[[int, float], None] | None = None,
    preview: int = 100,
    label: int | None = None,
    train_pool: torch.Tensor | None = None,
    probe: int = 1000,
) -> FidSets:
    """FID of `protocol.sets` generated sets against fresh with-replacement draws of `real_pool`, by
    every instrument (name -> scorer) on the very same images and real draws; from the first
    instrument's logits also each set's inception score, sharpness and (with `label`) class rate.

    `generate(n, seed)` returns n images (n, 28, 28) in [0, 1]. The real pool's features are computed
    once: a draw with replacement of images is the same draw of their features. Each generated set goes
    through each instrument once. Set 0's first `probe` images also give the logit spread against the
    real pool's and, with `train_pool`, the distance to the nearest training image. `on_set(index, fid)`
    gets the first instrument's FID. No set is kept.
    """
    if len(real_pool) < 2:
        raise ConfigError(f"the real image pool needs at least 2 images, got {len(real_pool)}")
    if not instruments:
        raise ConfigError("fid_over_sets needs at least one instrument")
    first = next(iter(instruments))
    real_features = {name: scorer.features(real_pool) for name, scorer in instruments.items()}
    result = FidSets({name: [] for name in instruments}, torch.empty(0), 0.0)
    generation_seconds = 0.0
    for index in range(protocol.sets):
        rng, generator_seed = protocol.set_seeds(index)
        draw = rng.integers(0, len(real_pool), protocol.n_images)
        started = time.perf_counter()
        images = generate(protocol.n_images, generator_seed)
        generation_seconds += time.perf_counter() - started
        if tuple(images.shape[1:]) not in ((28, 28), (1, 28, 28)) or len(images) != protocol.n_images:
            raise ConfigError(f"generator returned shape {tuple(images.shape)}, expected ({protocol.n_images}, 28, 28)")
        features = instruments[first].features(images)  # the one pass of this set through the first instrument
        for name, scorer in instruments.items():
            own = features if name == first else scorer.features(images)
            result.fids[name].append(frechet_distance(*feature_statistics(own), *feature_statistics(real_features[name][draw])))
        result.inception.append(inception_score(features))
        result.sharpness.append(sharpness(features))
        if label is not None:
            result.class_rate.append(class_rate(features, label))
        if index == 0:
            result.preview = images[:preview].detach().cpu().clone()
            result.spread_ratio = mean_pairwise_distance(features[:probe]) / mean_pairwise_distance(real_features[first][:probe])
            if train_pool is not None:
                result.nearest_train = mean_nearest_distance(images[:probe].detach().cpu(), train_pool)
        if on_set is not None:
            on_set(index, result.fids[first][-1])
    result.generation_seconds = generation_seconds
    return result
