"""The numbers read from the FID's own classifier pass (docs/baselines.md "Scores from the FID's classifier pass"): inception score,
class rate, sharpness, logit spread, nearest training image; and how the report shows them."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sarnet.instruments.fid import (FidProtocol, FidScorer, class_rate, fid_over_sets, inception_score, mean_nearest_distance,
                        mean_pairwise_distance, sharpness)
from sarnet.report import FidRow, budget_markdown, scores_markdown

CONFIDENT = 60.0  # a logit gap that makes softmax one-hot to float64 precision


def one_hot_logits(classes: list[int], k: int = 10) -> np.ndarray:
    logits = np.zeros((len(classes), k))
    logits[np.arange(len(classes)), classes] = CONFIDENT
    return logits


def hand_inception_score(logits: np.ndarray) -> float:
    """exp(mean_x Σ_y p log(p / p̄)), written as loops from the definition."""
    rows = []
    for row in logits:
        e = [math.exp(v - max(row)) for v in row]
        rows.append([v / sum(e) for v in e])
    marginal = [sum(r[y] for r in rows) / len(rows) for y in range(len(rows[0]))]
    kl = [sum(p * (math.log(max(p, 1e-12)) - math.log(max(q, 1e-12))) for p, q in zip(r, marginal)) for r in rows]
    return math.exp(sum(kl) / len(kl))


def test_identical_confident_predictions_score_one():
    assert inception_score(one_hot_logits([5] * 50)) == pytest.approx(1.0, abs=1e-9)


def test_confident_predictions_spread_over_k_classes_score_k():
    assert inception_score(one_hot_logits(list(range(10)) * 7)) == pytest.approx(10.0, rel=1e-9)
    assert inception_score(one_hot_logits([0, 1, 2, 3] * 5)) == pytest.approx(4.0, rel=1e-9)


def test_uniform_predictions_score_one():
    assert inception_score(np.zeros((30, 10))) == pytest.approx(1.0, abs=1e-12)


def test_the_score_ignores_order_and_equals_the_definition_by_hand():
    logits = np.random.default_rng(0).normal(0, 3, (200, 10))
    value = inception_score(logits)
    assert value == pytest.approx(inception_score(logits[::-1]), rel=1e-12)
    assert value == pytest.approx(hand_inception_score(logits), rel=1e-12)


def test_sharpness_and_class_rate_from_the_definitions():
    assert sharpness(one_hot_logits([1, 2, 3])) == pytest.approx(1.0, abs=1e-9)
    assert sharpness(np.zeros((4, 10))) == pytest.approx(0.1, rel=1e-12)  # exp(−log 10)
    assert class_rate(one_hot_logits([5, 5, 3, 5]), 5) == 0.75


def test_pairwise_and_nearest_distances_against_brute_force():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(12, 3))
    pairs = [np.linalg.norm(points[i] - points[j]) for i in range(12) for j in range(i + 1, 12)]
    assert mean_pairwise_distance(points) == pytest.approx(np.mean(pairs), rel=1e-12)
    images, reference = torch.rand(7, 28, 28), torch.rand(30, 28, 28)
    brute = np.mean([min(float((a - b).pow(2).sum().sqrt()) for b in reference) for a in images])
    assert mean_nearest_distance(images, reference, chunk=8) == pytest.approx(brute, rel=1e-6)
    assert mean_nearest_distance(reference[:5], reference) == pytest.approx(0.0, abs=1e-4)  # memorised: 0 up to round-off; these random images lie ~10 apart


class CountingFives(nn.Module):
    """A mock classifier: always a confident 5, counting the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        logits = torch.zeros(len(x), 10)
        logits[:, 5] = CONFIDENT
        return logits + 1e-3 * x.view(len(x), -1)[:, :10]  # a little spread, so covariances are not all zero


def test_every_score_comes_from_one_classifier_pass_per_set():
    classifier = CountingFives()
    real = torch.rand(40, 28, 28)
    protocol = FidProtocol(n_images=30, sets=3, seed=0)
    result = fid_over_sets(lambda n, seed: torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed)),
                           {"cnn": FidScorer(classifier, batch_size=1000)}, real, protocol, label=5, train_pool=real, probe=20)
    assert classifier.images == len(real) + protocol.sets * protocol.n_images  # the pool once, each set once
    assert len(result.fids["cnn"]) == len(result.inception) == len(result.sharpness) == len(result.class_rate) == 3
    assert result.class_rate == [1.0, 1.0, 1.0]  # a mock that always says 5: five-rate 1
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in result.inception)
    assert math.isfinite(result.spread_ratio) and result.nearest_train > 0


def test_budgets_are_flagged_over_one_and_a_half_times():
    text = budget_markdown({"gan_mlp": 8, "dcgan": 12, "beta_vae_b2_l8": 6}, {"gan_mlp": 7 * 60, "dcgan": 19 * 60})
    assert "- `gan_mlp`: 7.0 min of 8\n" in text
    assert "- `dcgan`: 19.0 min of 12 — **over 1.5× its budget**" in text
    assert "- `beta_vae_b2_l8`: not run (budget 6 min)" in text
    assert "over" not in text.split("gan_mlp")[1].split("\n")[0]


def test_the_scores_table_shows_the_references_then_every_scored_model():
    rows = [FidRow("sarnet_vae_L128", "sarnet_vae", 128, {"cnn": [5.0]}, 5.0, 0.0),
            FidRow("sarnet_vae_fashion_L128", "sarnet_vae", 128, {"cnn": [28.0]}, 28.0, 0.0, "fashion", "fashion")]
    records = {"sarnet_vae_L128": {"is_mean": 1.05, "is_std": 0.01, "five_rate": 0.97, "sharpness": 0.95,
                                   "logit_spread_ratio": 0.9, "nearest_train_distance": 5.1},
               "sarnet_vae_fashion_L128": {"is_mean": 6.2, "is_std": 0.1, "sharpness": 0.8, "logit_spread_ratio": 1.1,
                                           "nearest_train_distance": 6.0}}
    references = {"class": {"is_mean": 1.03, "is_std": 0.004, "class_rate": 0.99, "sharpness": 0.97,
                            "nearest_train_distance": 5.5},
                  "all_digits": {"is_mean": 9.8, "is_std": 0.05, "sharpness": 0.96}}
    text = scores_markdown(rows, records, references)
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert lines == ["| real test fives | 1.030 ± 0.004 | 0.990 | 0.970 | 1 | 5.50 |",
                     "| real test images, all digits | 9.800 ± 0.050 | — | 0.960 | — | — |",
                     "| sarnet_vae_L128 | 1.050 ± 0.010 | 0.970 | 0.950 | 0.90 | 5.10 |",
                     "| sarnet_vae_fashion_L128 | 6.200 ± 0.100 | — | 0.800 | 1.10 | 6.00 |"]
    assert "not a ranking" in text
