"""Generative XGBoost (thesis §3.1): one regressor per 2×2 patch, refiners, batched generation.

Images are cut into patches in raster order over the patch grid, each patch's pixels made
contiguous (row-major inside the patch). Predictor i (i = 1..P-1) maps the pixels of patches
0..i-1 and their means to the pixels of patch i; refiner i maps patch i of the image blurred
with a 2-D Gaussian (σ = 1) to the sharp patch i. Features are laid out patch by patch
([pixels of patch 0, mean 0, pixels of patch 1, mean 1, ...]) so that predictor i's features
are a prefix of one array: training and generation slice it instead of copying.

Generation (thesis order): predict patch i, clip to [0, 1], randomise it while i ≤ i_max
(each pixel, with probability p_s = (1 − (i+1)/P)^α, becomes 0 with probability 1 − v and keeps
v otherwise), refine, clip. Everything runs on the whole batch of images at once. The notebook's
generation differs (docs/protocol.md "Generative XGBoost"); its choices are switches: p_s rising
with i (`randomise_rising`), the refiner of patch i − 1 for patch i (`refiner_offset: 1`), and, ours
to test, a Bernoulli draw (`randomisation: bernoulli`: white with probability v, else black).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from sarnet.core.errors import ConfigError, DataError
from sarnet.core.params import check_keys

IMAGE_SIZE = 28


@dataclass(frozen=True)
class GenXGBConfig:
    """The `gen_xgboost` section of params.yaml (its data keys aside); saved with the model as config.json."""

    patch: int
    predictor_trees: int
    predictor_depth: int
    refiner_trees: int
    refiner_depth: int
    learning_rate: float
    max_bin: int
    blur_sigma: float
    multi_strategy: str  # "one_output_per_tree" or "multi_output_tree" (one tree per round for all pixels)
    workers: int  # models trained at once, one thread each (small models scale better this way)
    seed: int
    alpha: float  # randomisation exponent
    i_max: int  # last (1-based) patch that is randomised
    # Defaults: the thesis's generation (and what model folders saved before the switches did).
    randomisation: str = "zero"  # "zero": 0 w.p. 1 − v, else v (thesis text); "bernoulli": 1 w.p. v, else 0
    randomise_rising: bool = False  # p_s = ((i+1)/P)^α (the notebook) instead of (1 − (i+1)/P)^α
    refiner_offset: int = 0  # 1: patch i refined by refiner i − 1 (the notebook)

    def __post_init__(self) -> None:
        if self.patch < 1 or IMAGE_SIZE % self.patch:
            raise ConfigError(f"patch must divide {IMAGE_SIZE}, got {self.patch}")
        for name in ("predictor_trees", "predictor_depth", "refiner_trees", "refiner_depth", "max_bin", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0 or self.blur_sigma < 0 or self.alpha < 0 or self.i_max < 0:
            raise ConfigError("learning_rate must be > 0; blur_sigma, alpha and i_max must be >= 0")
        if self.randomisation not in ("zero", "bernoulli"):
            raise ConfigError(f"randomisation must be zero or bernoulli, got {self.randomisation!r}")
        if not isinstance(self.randomise_rising, bool) or self.refiner_offset not in (0, 1):
            raise ConfigError(f"randomise_rising must be true or false and refiner_offset 0 or 1, got "
                              f"{self.randomise_rising!r} and {self.refiner_offset!r}")
        if self.multi_strategy not in ("one_output_per_tree", "multi_output_tree"):
            raise ConfigError(f"multi_strategy must be one_output_per_tree or multi_output_tree, got {self.multi_strategy!r}")

    @classmethod
    def from_params(cls, params: dict, other_keys: Iterable[str] = ()) -> "GenXGBConfig":
        """The config of a `gen_xgboost` section whose other keys are `other_keys`; unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        check_keys("gen_xgboost", params, known | set(other_keys), required=known)
        return cls(**{k: v for k, v in params.items() if k in known})

    @property
    def grid(self) -> int:
        return IMAGE_SIZE // self.patch

    @property
    def n_patches(self) -> int:
        return self.grid**2

    @property
    def patch_pixels(self) -> int:
        return self.patch**2


def patch_permutation(patch: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """order[j] = raster pixel index of the j-th pixel in patch-contiguous order (thesis eq. 3.2)."""
    grid = size // patch
    rows, cols = np.divmod(np.arange(size * size), size)
    key = ((rows // patch) * grid + cols // patch) * patch * patch + (rows % patch) * patch + cols % patch
    order = np.empty(size * size, dtype=np.int64)
    order[key] = np.arange(size * size)
    return order


def to_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """(N, 28, 28) -> (N, P, patch²): patches in raster order, pixels contiguous."""
    n = len(images)
    return images.reshape(n, -1)[:, patch_permutation(patch, images.shape[-1])].reshape(n, -1, patch * patch)


def from_patches(patches: np.ndarray, patch: int) -> np.ndarray:
    """Inverse of `to_patches`."""
    n = len(patches)
    size = int(round(np.sqrt(patches.shape[1] * patches.shape[2])))
    flat = np.empty((n, size * size), dtype=patches.dtype)
    flat[:, patch_permutation(patch, size)] = patches.reshape(n, -1)
    return flat.reshape(n, size, size)


def feature_table(patches: np.ndarray) -> np.ndarray:
    """(N, P, k) -> (N, P·(k+1)) float32: [pixels of patch 0, mean 0, pixels of patch 1, mean 1, ...]."""
    return np.concatenate([patches, patches.mean(axis=2, keepdims=True)], axis=2).reshape(len(patches), -1).astype(np.float32)


def predictor_width(i: int, patch_pixels: int) -> int:
    """Number of features predictor i sees: pixels and means of patches 0..i-1."""
    return i * (patch_pixels + 1)


class _PatchDraws:
    """The uniforms of images start..start+b-1 for each patch, the same whatever the batch: patch i's
    stream s (0: whether to randomise, 1: the draw) is one PCG64 stream per (seed, i, s), advanced to
    the batch's first image. A single stream drawn batch by batch made the images (and the FID) depend
    on the batch size."""

    def __init__(self, seed: int, start: int, b: int, patch_pixels: int) -> None:
        self.seed, self.start, self.b, self.k = seed, start, b, patch_pixels

    def uniforms(self, patch: int, stream: int) -> np.ndarray:
        bits = np.random.PCG64(np.random.SeedSequence([self.seed, patch, stream]))
        bits.advance(self.start * self.k)  # one 64-bit draw per float64 uniform
        return np.random.Generator(bits).random((self.b, self.k))


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """2-D Gaussian blur of each (28, 28) image."""
    return gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma), mode="constant").astype(np.float32)


class GenerativeXGBoost:
    """P-1 patch predictors and P refiners (P = 196 for 2×2 patches)."""

    kind = "gen_xgboost"
    sampling_keys = ("batch_size",)  # its `sampling.gen_xgboost` section

    def __init__(self, config: GenXGBConfig, predictors: list | None = None, refiners: list | None = None) -> None:
        self.config = config
        self.predictors = predictors or []  # predictors[i-1] predicts patch i
        self.refiners = refiners or []  # refiners[i] refines patch i

    # ---------------------------------------------------------------- training
    def _booster_params(self, depth: int) -> dict:
        c = self.config
        return {"tree_method": "hist", "max_depth": depth, "eta": c.learning_rate, "max_bin": c.max_bin,
                "objective": "reg:squarederror", "multi_strategy": c.multi_strategy, "nthread": 1,
                "seed": c.seed, "verbosity": 0}

    def fit(self, images: np.ndarray, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train every predictor and refiner on (N, 28, 28) images in [0, 1]; returns timings."""
        import xgboost as xgb

        c = self.config
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"expected images (N, 28, 28), got {images.shape}")
        patches = to_patches(images.astype(np.float32), c.patch)
        features = feature_table(patches)
        blurred = to_patches(blur(images, c.blur_sigma), c.patch)
        k = c.patch_pixels
        done = [0]
        total = 2 * c.n_patches - 1

        def train(x: np.ndarray, y: np.ndarray, depth: int, trees: int):
            booster = xgb.train(self._booster_params(depth), xgb.DMatrix(x, label=y, nthread=1), num_boost_round=trees)
            done[0] += 1
            if progress:
                progress(done[0], total)
            return booster

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=c.workers) as pool:  # XGBoost releases the GIL while training
            try:
                predictors = [pool.submit(train, features[:, : predictor_width(i, k)], patches[:, i],
                                          c.predictor_depth, c.predictor_trees) for i in range(1, c.n_patches)]
                self.predictors = [f.result() for f in predictors]
                predictors_done = time.perf_counter()
                refiners = [pool.submit(train, blurred[:, i], patches[:, i], c.refiner_depth, c.refiner_trees)
                            for i in range(c.n_patches)]
                self.refiners = [f.result() for f in refiners]
            except BaseException:  # SIGTERM, Ctrl-C, an error: stop after the models in training, not after all
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return {"predictor_seconds": predictors_done - started, "refiner_seconds": time.perf_counter() - predictors_done}

    # ---------------------------------------------------------------- generation
    def _fill(self, patches: np.ndarray, first: int, draws: _PatchDraws | None) -> np.ndarray:
        """Fill patches first..P-1 of (N, P, k) in place, randomising with `draws` when given."""
        c = self.config
        if len(self.predictors) != c.n_patches - 1 or len(self.refiners) != c.n_patches:
            raise ConfigError("the model is not trained (or not fully loaded)")
        k = c.patch_pixels
        features = feature_table(patches)
        for i in range(first, c.n_patches):
            x = features[:, : predictor_width(i, k)]
            values = np.clip(self.predictors[i - 1].inplace_predict(x).reshape(len(x), k), 0.0, 1.0)
            if draws is not None and i + 1 <= c.i_max:
                share = (i + 1) / c.n_patches
                p_s = (share if c.randomise_rising else 1.0 - share) ** c.alpha
                randomise = draws.uniforms(i, 0) < p_s
                draw = draws.uniforms(i, 1) < values
                if c.randomisation == "zero":  # 0 with probability 1 − v, else v
                    values = np.where(randomise & ~draw, 0.0, values)
                else:  # white with probability v, else black
                    values = np.where(randomise, draw.astype(values.dtype), values)
            refiner = self.refiners[i - c.refiner_offset]
            values = np.clip(refiner.inplace_predict(values.astype(np.float32)).reshape(len(x), k), 0.0, 1.0)
            patches[:, i] = values
            features[:, i * (k + 1) : (i + 1) * (k + 1)] = np.concatenate([values, values.mean(1, keepdims=True)], 1)
        return patches

    def generate(self, n: int, seed: int, settings: Mapping[str, Any]) -> np.ndarray:
        """n images (n, 28, 28) in [0, 1] from an all-black start, with the thesis's randomisation;
        `settings` is params.yaml's `sampling.gen_xgboost` (images per batch)."""
        check_keys(f"sampling.{self.kind}", settings, self.sampling_keys, required=True)
        batch_size = settings["batch_size"]
        c = self.config
        out = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            patches = np.zeros((b, c.n_patches, c.patch_pixels), dtype=np.float32)
            out.append(from_patches(self._fill(patches, 1, _PatchDraws(seed, start, b, c.patch_pixels)), c.patch))
        return np.concatenate(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)

    def reconstruct(self, images: np.ndarray, keep_patches: int) -> np.ndarray:
        """Complete (N, 28, 28) images from their first `keep_patches` patches, without randomisation."""
        c = self.config
        if not 1 <= keep_patches <= c.n_patches:
            raise ConfigError(f"keep_patches must be in 1..{c.n_patches}, got {keep_patches}")
        patches = to_patches(images.astype(np.float32), c.patch)
        patches[:, keep_patches:] = 0.0
        return from_patches(self._fill(patches, keep_patches, None), c.patch)

    # ---------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike) -> None:
        """XGBoost's own UBJSON per model, plus config.json (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for i, booster in enumerate(self.predictors, start=1):
            booster.save_model(folder / f"predictor_{i:03d}.ubj")
        for i, booster in enumerate(self.refiners):
            booster.save_model(folder / f"refiner_{i:03d}.ubj")
        (folder / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "GenerativeXGBoost":
        import xgboost as xgb

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise DataError(f"{folder}: no config.json; train the model with `dvc repro train_xgboost` first")
        try:
            config = GenXGBConfig(**json.loads((folder / "config.json").read_text()))
        except (ValueError, TypeError, ConfigError) as exc:  # not JSON, unknown or missing fields, bad values
            raise DataError(f"{folder / 'config.json'}: not a generative XGBoost config ({str(exc).splitlines()[0][:200]})") from None

        def booster(path: Path):
            if not path.is_file():
                raise DataError(f"{path}: missing model file; re-run `dvc repro train_xgboost`")
            b = xgb.Booster()
            try:
                b.load_model(path)
            except (xgb.core.XGBoostError, UnicodeDecodeError):  # a C++ backtrace, or one xgboost cannot decode
                raise DataError(f"{path}: unreadable XGBoost model (truncated or corrupt); re-run `dvc repro train_xgboost`") from None
            b.set_param({"nthread": 2})
            return b

        predictors = [booster(folder / f"predictor_{i:03d}.ubj") for i in range(1, config.n_patches)]
        refiners = [booster(folder / f"refiner_{i:03d}.ubj") for i in range(config.n_patches)]
        return cls(config, predictors, refiners)


MODELS = {GenerativeXGBoost.kind: GenerativeXGBoost}  # not a torch model: loaded from its folder (GenerativeXGBoost.load)
