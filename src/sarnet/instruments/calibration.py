"""The thesis's FID calibration table (§3.5, docs/protocol.md "Calibration"), rebuilt with our classifier.

Each row compares two sets of `n` digit-5 images. Sets are drawn with replacement from the 892
test fives unless the row says otherwise; a transformed set is the transform of an independent
draw, so every row also carries the sampling noise that "test vs test" measures on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from torchvision.transforms import RandomPerspective
from torchvision.transforms.functional import perspective

from sarnet.instruments.fid import FidScorer, class_rate, inception_score, mean_nearest_distance, sharpness

Images = torch.Tensor  # (N, 28, 28) float in [0, 1]


def blur_columns(images: Images, sigma: float) -> Images:
    """1-D Gaussian blur down each column (along the image rows axis), black outside the image."""
    out = gaussian_filter1d(images.numpy().astype(np.float64), sigma=sigma, axis=1, mode="constant", cval=0.0)
    return torch.from_numpy(out).float()


def pad_and_resize(images: Images, pad: int) -> Images:
    """Add a black border of `pad` pixels, then resize back to 28×28 (bilinear, antialiased)."""
    padded = F.pad(images.unsqueeze(1), (pad,) * 4, value=0.0)
    resized = F.interpolate(padded, size=images.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
    return resized.squeeze(1).clamp(0.0, 1.0)


def random_perspective(images: Images, distortion: float, generator: torch.Generator) -> Images:
    """torchvision's random perspective (always applied) with corners drawn from `generator`."""
    h, w = images.shape[-2:]
    out = torch.empty_like(images)
    state = torch.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    try:
        for i, img in enumerate(images):
            start, end = RandomPerspective.get_params(w, h, distortion)
            out[i] = perspective(img.unsqueeze(0), start, end, fill=[0.0]).squeeze(0)
    finally:
        torch.set_rng_state(state)
    return out


@dataclass(frozen=True)
class CalibrationRow:
    key: str
    label: str
    thesis_fid: float
    make_sets: Callable[[np.random.Generator, torch.Generator, Images, Images, int], tuple[Images, Images]]


def _draw(rng: np.random.Generator, pool: Images, n: int, p: np.ndarray | None = None) -> Images:
    return pool[torch.from_numpy(rng.choice(len(pool), size=n, replace=True, p=p))]


def _without_replacement(rng: np.random.Generator, pool: Images, n: int) -> Images:
    return pool[torch.from_numpy(rng.choice(len(pool), size=min(n, len(pool)), replace=False))]


def _biased_weights(n_pool: int) -> np.ndarray:
    weights = np.ones(n_pool)
    weights[: n_pool // 2] = 1.5  # first half of the test set 50 % more likely
    return weights / weights.sum()


def _transformed(transform: Callable[[Images, torch.Generator], Images]):
    def make(rng, gen, test, train, n):
        return _draw(rng, test, n), transform(_draw(rng, test, n), gen)
    return make


CALIBRATION_ROWS: tuple[CalibrationRow, ...] = (
    CalibrationRow("test_vs_test", "test vs test (both with replacement)", 0.0488,
                   lambda rng, gen, test, train, n: (_draw(rng, test, n), _draw(rng, test, n))),
    CalibrationRow("train_vs_train", "train vs train (without replacement)", 0.0448,
                   lambda rng, gen, test, train, n: (_without_replacement(rng, train, n), _without_replacement(rng, train, n))),
    CalibrationRow("biased_draw", "biased draw (first half of test 50 % more likely)", 0.370,
                   lambda rng, gen, test, train, n: (_draw(rng, test, n), _draw(rng, test, n, _biased_weights(len(test))))),
    CalibrationRow("blur_0.5", "1-D column blur σ = 0.5", 2.218, _transformed(lambda x, g: blur_columns(x, 0.5))),
    CalibrationRow("blur_1", "1-D column blur σ = 1", 37.05, _transformed(lambda x, g: blur_columns(x, 1.0))),
    CalibrationRow("pad_1", "pad 1 pixel, resized to 28×28", 8.02, _transformed(lambda x, g: pad_and_resize(x, 1))),
    CalibrationRow("pad_5", "pad 5 pixels, resized to 28×28", 81.24, _transformed(lambda x, g: pad_and_resize(x, 5))),
    CalibrationRow("perspective_0.2", "random perspective, distortion 0.2", 15.43, _transformed(lambda x, g: random_perspective(x, 0.2, g))),
    CalibrationRow("perspective_0.5", "random perspective, distortion 0.5", 214.6, _transformed(lambda x, g: random_perspective(x, 0.5, g))),
)


def calibrate(instruments: Mapping[str, FidScorer], test: Images, train: Images, n: int, seed: int,
              progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Every instrument's FID (name -> scorer: `cnn`, `mlp`) for every calibration row, on the same two
    sets, beside the thesis's value: {row: {"label", "thesis_fid", instrument: {"fid", "ratio" ours/thesis}}}."""
    if not instruments:
        raise ValueError("calibrate needs at least one instrument")
    results: dict[str, dict] = {}
    for i, row in enumerate(CALIBRATION_ROWS):
        rng = np.random.default_rng([seed, i])  # each row its own stream: rows are independent of order
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        set_a, set_b = row.make_sets(rng, gen, test, train, n)
        results[row.key] = {"label": row.label, "thesis_fid": row.thesis_fid}
        for name, scorer in instruments.items():
            fid = scorer.fid(set_a, set_b)
            results[row.key][name] = {"fid": fid, "ratio": fid / row.thesis_fid}
        if progress:
            first = next(iter(instruments))
            progress(f"{row.key}: FID {results[row.key][first]['fid']:.4g} (thesis {row.thesis_fid})")
    return results


def real_references(scorer: FidScorer, test: Images, train: Images, all_digits_test: Images, label: int,
                    n: int, sets: int, seed: int, probe: int = 1000) -> dict[str, dict[str, float]]:
    """What real images score on the FID's companion numbers (docs/baselines.md "Scores from the FID's classifier pass"), measured as a
    generator is: `sets` sets of `n` test images of the class drawn with replacement (inception score,
    class rate, sharpness), the first `probe` test images' distance to the nearest training image, and
    the all-digit test set in `sets` splits (where the inception score means what it was made for)."""
    rng = np.random.default_rng([seed, len(CALIBRATION_ROWS)])  # a stream no calibration row uses
    features = scorer.features(test)
    draws = [features[rng.integers(0, len(test), n)] for _ in range(sets)]
    splits = np.array_split(scorer.features(all_digits_test), sets)
    fives = [inception_score(d) for d in draws]
    digits = [inception_score(d) for d in splits]
    return {
        "class": {"is_mean": float(np.mean(fives)), "is_std": float(np.std(fives)),
                  "class_rate": float(np.mean([class_rate(d, label) for d in draws])),
                  "sharpness": float(np.mean([sharpness(d) for d in draws])),
                  "nearest_train_distance": mean_nearest_distance(test[:probe], train)},
        "all_digits": {"is_mean": float(np.mean(digits)), "is_std": float(np.std(digits)),
                       "sharpness": float(np.mean([sharpness(d) for d in splits]))},
    }


def calibration_markdown(results: dict[str, dict], n: int, classifier_note: str) -> str:
    """The calibration table: the CNN instrument's FID and ratio, then the MLP instrument's where it scored."""
    lines = [
        "# FID calibration (digit 5)",
        "",
        f"{n:,} images per set. {classifier_note}",
        "",
        "| comparison | our FID | thesis FID | ratio ours/thesis | MLP instrument's FID | its ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results.values():
        mlp = f"{r['mlp']['fid']:.4g} | {r['mlp']['ratio']:.3g}" if "mlp" in r else "— | —"
        lines.append(f"| {r['label']} | {r['cnn']['fid']:.4g} | {r['thesis_fid']:.4g} | {r['cnn']['ratio']:.3g} | {mlp} |")
    return "\n".join(lines) + "\n"
