"""Generative XGBoost: patch layout, autoregressive features, determinism, persistence, bad params."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_dir import DATA_DIR, HAS_DATA
from sarnet.core.errors import ConfigError
from sarnet.families.xgboost import (GenerativeXGBoost, GenXGBConfig, feature_table, from_patches, patch_permutation,
                                predictor_width, to_patches)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

# A complete configuration (GenXGBConfig has no defaults): the thesis's model with 256 histogram bins.
BASE = dict(patch=2, predictor_trees=50, predictor_depth=7, refiner_trees=40, refiner_depth=6, learning_rate=0.3,
            max_bin=256, blur_sigma=1.0, multi_strategy="one_output_per_tree", workers=2, seed=0, alpha=1.5, i_max=78)
SETTINGS = {"batch_size": 10_000}  # params.yaml sampling.gen_xgboost


def config(**overrides):
    return GenXGBConfig(**(BASE | overrides))


def mnist_images(n=300):
    """The first n MNIST test images (no stand-in: a model fitted to blobs would hide what real digits show)."""
    import gzip
    if not HAS_DATA:
        pytest.skip(f"offline MNIST not found under {DATA_DIR} (set SARNET_DATA_DIR)")
    raw = gzip.decompress((DATA_DIR / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n].astype(np.float32) / 255.0


def test_permutation_matches_thesis_layout():
    """Thesis eq. 3.2 (1-based): p1, p2, p29, p30 form the first 2×2 patch; the second starts at p3."""
    order = patch_permutation(2) + 1
    assert order[:8].tolist() == [1, 2, 29, 30, 3, 4, 31, 32]
    assert order[-4:].tolist() == [755, 756, 783, 784]
    assert sorted(order.tolist()) == list(range(1, 785))


@pytest.mark.parametrize("patch", [1, 2, 4, 7, 14])
def test_patches_round_trip_on_real_images(patch):
    images = mnist_images(50)
    patches = to_patches(images, patch)
    assert patches.shape == (50, (28 // patch) ** 2, patch * patch)
    np.testing.assert_array_equal(from_patches(patches, patch), images)
    # patch k holds exactly the pixels of its square
    grid = 28 // patch
    k_row, k_col = 1, min(2, grid - 1)
    k = k_row * grid + k_col
    square = images[:, k_row * patch : (k_row + 1) * patch, k_col * patch : (k_col + 1) * patch].reshape(50, -1)
    np.testing.assert_array_equal(patches[:, k], square)


def test_features_of_patch_i_are_pixels_and_means_of_earlier_patches():
    images = mnist_images(5)
    patches = to_patches(images, 2)
    table = feature_table(patches)
    i = 37
    x = table[:, : predictor_width(i, 4)].reshape(5, i, 5)
    np.testing.assert_allclose(x[:, :, :4], patches[:, :i])
    np.testing.assert_allclose(x[:, :, 4], patches[:, :i].mean(axis=2), rtol=1e-6)


@pytest.fixture(scope="module")
def small_model():
    model = GenerativeXGBoost(config(patch=7, predictor_trees=4, predictor_depth=3, refiner_trees=3, refiner_depth=2,
                                     seed=3, i_max=10))
    model.fit(mnist_images())
    return model


def test_prediction_for_patch_i_ignores_patches_at_or_after_i(small_model):
    """Reconstruction from the first k patches must not depend on what the input held at patches >= k."""
    images = mnist_images(20)
    keep = 6
    other = to_patches(images.copy(), 7)
    other[:, keep:] = np.random.default_rng(1).random(other[:, keep:].shape)
    changed = from_patches(other, 7)
    assert not np.array_equal(changed, images)
    np.testing.assert_array_equal(small_model.reconstruct(changed, keep), small_model.reconstruct(images, keep))
    # ... and it does depend on the kept ones (the test is not vacuous)
    earlier = to_patches(images.copy(), 7)
    earlier[:, keep - 1] = 1.0
    assert not np.array_equal(small_model.reconstruct(from_patches(earlier, 7), keep), small_model.reconstruct(images, keep))


def test_reconstruction_keeps_given_patches(small_model):
    images = mnist_images(8)
    out = small_model.reconstruct(images, 5)
    np.testing.assert_array_equal(to_patches(out, 7)[:, :5], to_patches(images, 7)[:, :5])
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_images(small_model):
    a = small_model.generate(64, 5, SETTINGS)
    b = small_model.generate(64, 5, SETTINGS)
    c = small_model.generate(64, 6, SETTINGS)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (64, 28, 28) and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_the_images_do_not_depend_on_the_batch_size(small_model, batch_size):
    """An FID set is 10,000 images drawn in batches: with n > batch_size, each image is still the one
    that a single batch of all n gives (the FID must not depend on `sampling.gen_xgboost.batch_size`)."""
    whole = small_model.generate(40, 5, {"batch_size": 10_000})
    np.testing.assert_array_equal(small_model.generate(40, 5, {"batch_size": batch_size}), whole)


def test_save_and_load_in_xgboost_format_gives_same_predictions(small_model, tmp_path):
    small_model.save(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.startswith("predictor_")]) == 15
    assert len([f for f in files if f.startswith("refiner_")]) == 16
    assert all(f.endswith(".ubj") or f == "config.json" for f in files)
    assert (tmp_path / "predictor_001.ubj").read_bytes()[:1] == b"{"  # UBJSON object, not a pickle
    loaded = GenerativeXGBoost.load(tmp_path)
    images = mnist_images(10)
    np.testing.assert_array_equal(loaded.reconstruct(images, 3), small_model.reconstruct(images, 3))
    np.testing.assert_array_equal(loaded.generate(10, 1, SETTINGS), small_model.generate(10, 1, SETTINGS))


@pytest.mark.parametrize("damage", ["truncated_booster", "garbage_booster", "undecodable_error", "config_not_json",
                                    "config_unknown_field"])
def test_damaged_model_folder_gives_one_line(damage, small_model, tmp_path):
    from sarnet.core.errors import DataError

    small_model.save(tmp_path)
    booster, config_file = tmp_path / "predictor_007.ubj", tmp_path / "config.json"
    if damage == "truncated_booster":
        booster.write_bytes(booster.read_bytes()[: booster.stat().st_size // 3])
    elif damage == "garbage_booster":
        booster.write_bytes(b"\x00\xff" * 50)
    elif damage == "undecodable_error":  # xgboost quotes these bytes in its error and cannot decode it itself
        booster.write_bytes(b"{" + b"\x80" * 200)
    elif damage == "config_not_json":
        config_file.write_text("{patch: 7,")
    else:
        config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"max_bins": 64}))
    with pytest.raises(DataError) as info:
        GenerativeXGBoost.load(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "Stack trace" not in message and str(tmp_path) in message


@pytest.mark.parametrize("bad", [dict(patch=3), dict(patch=5), dict(predictor_trees=-1), dict(refiner_trees=0),
                                 dict(predictor_depth=0), dict(multi_strategy="both"), dict(learning_rate=0)])
def test_bad_params_fail_before_training(bad):
    config()  # the base configuration itself is valid
    with pytest.raises(ConfigError):
        config(**bad)


def test_untrained_model_refuses_to_generate():
    with pytest.raises(ConfigError):
        GenerativeXGBoost(config()).generate(2, 0, SETTINGS)


def test_an_interrupted_fit_stops_after_the_models_in_training(tmp_path):
    """A kill (KeyboardInterrupt, which SIGTERM becomes in a stage) must not wait for all 391 models:
    the queued ones are cancelled. Before, the stage kept training for minutes after `sarnet repro` stopped.
    The interrupt reaches the main thread as a real signal (SIGINT), as a kill does; each model after it
    waits 0.2 s, so the main thread has the time a real model's training gives it to cancel the queue."""
    model = GenerativeXGBoost(config(patch=2, predictor_trees=2, predictor_depth=2, refiner_trees=1, refiner_depth=1,
                                     workers=2))
    trained = []

    def progress(done, total):
        trained.append(done)
        if done == 3:
            os.kill(os.getpid(), signal.SIGINT)
        if done >= 3:
            time.sleep(0.2)

    # Python's own SIGINT handler: a shell that starts a job in the background (`nohup bash .ci/run &`)
    # ignores SIGINT in it, and an ignored signal stays ignored in the Python it starts.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(mnist_images(50), progress=progress)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(trained) < 10  # the models already running when the signal came, not all 391 (195 before the fix)


# ---------------------------------------------------------------- generation switches (issue 17: fives, not fragments)

class Constant:
    """A stand-in booster: every prediction is one value (`inplace_predict` as XGBoost's)."""

    def __init__(self, value: float, width: int = 4) -> None:
        self.value, self.width = value, width

    def inplace_predict(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), self.width), self.value, dtype=np.float32)


class Identity:
    def inplace_predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)


def stub_model(predicted: float = 0.5, **overrides) -> GenerativeXGBoost:
    c = config(**({"alpha": 0.0, "i_max": 196} | overrides))  # alpha 0: every patch randomised (p_s = 1)
    return GenerativeXGBoost(c, [Constant(predicted) for _ in range(195)], [Identity() for _ in range(196)])


def test_the_thesis_randomisation_keeps_v_with_probability_v_so_its_mean_is_v_squared():
    """The expectation the fragments come from: a 0.5 stroke pixel averages 0.25 after randomisation."""
    images = stub_model(0.5, randomisation="zero").generate(2000, 0, SETTINGS)
    later = to_patches(images, 2)[:, 1:]
    assert set(np.unique(later).tolist()) == {0.0, 0.5}
    assert abs(later.mean() - 0.25) < 0.01


def test_a_bernoulli_randomisation_draws_black_or_white_with_mean_v():
    images = stub_model(0.5, randomisation="bernoulli").generate(2000, 0, SETTINGS)
    later = to_patches(images, 2)[:, 1:]
    assert set(np.unique(later).tolist()) == {0.0, 1.0}
    assert abs(later.mean() - 0.5) < 0.01


def test_the_configured_randomisation_keeps_the_predicted_ink_so_strokes_do_not_thin_into_fragments():
    """The test that would have caught the fragments (issue 17): with params.yaml's switches, a pixel predicted
    at v must average v after randomisation (hand computation: Bernoulli(v) has mean v). The thesis text's rule
    averages v² (0.25 here), so each randomised patch lost ink and the next patches were predicted from
    thinner strokes: FID 171 against 80 on the trained model. The five-rate did not catch it (0.98)."""
    p = yaml.safe_load(PARAMS.read_text())["gen_xgboost"]
    switches = {key: p[key] for key in ("randomisation", "randomise_rising", "refiner_offset")}
    later = to_patches(stub_model(0.5, **switches).generate(2000, 0, SETTINGS), 2)[:, 1:]
    assert abs(later.mean() - 0.5) < 0.01


@pytest.mark.parametrize("rising", [False, True])
def test_the_randomisation_falls_or_rises_with_the_patch_index(rising):
    images = stub_model(0.5, alpha=1.0, randomise_rising=rising, randomisation="bernoulli").generate(4000, 1, SETTINGS)
    patches = to_patches(images, 2)
    early, late = patches[:, 2:20], patches[:, 176:194]
    randomised = lambda block: np.isin(block, (0.0, 1.0)).mean()  # noqa: E731 (untouched pixels stay 0.5)
    assert (randomised(early) < randomised(late)) == rising


def test_the_notebooks_refiner_of_the_previous_patch():
    c = config(i_max=0, refiner_offset=1)
    refiners = [Constant(i / 1000) for i in range(196)]
    images = GenerativeXGBoost(c, [Constant(0.5) for _ in range(195)], refiners).generate(3, 0, SETTINGS)
    patches = to_patches(images, 2)
    assert np.allclose(patches[:, 10], 9 / 1000) and np.allclose(patches[:, 195], 194 / 1000)
    with pytest.raises(ConfigError):
        config(refiner_offset=2)
    with pytest.raises(ConfigError):
        config(randomisation="ones")


# ---------------------------------------------------------------- stage xgboost_variants (issue 17)

def _variants_stage():
    import importlib
    import sys

    pipeline = str(Path(__file__).resolve().parents[1] / "pipeline")
    sys.path.insert(0, pipeline)
    try:
        return importlib.import_module("xgboost_variants")
    finally:
        sys.path.remove(pipeline)


def test_a_variant_shares_the_trained_models_and_changes_only_the_generation():
    stage = _variants_stage()
    base = stub_model(0.5, randomisation="bernoulli")
    thesis = stage.variant_model(base, "thesis_text", {"randomisation": "zero"})
    assert thesis.predictors is base.predictors and thesis.refiners is base.refiners
    assert base.config.randomisation == "bernoulli"  # the trained model is left as it was
    means = [to_patches(m.generate(2000, 0, SETTINGS), 2)[:, 1:].mean() for m in (thesis, base)]
    assert abs(means[0] - 0.25) < 0.01 and abs(means[1] - 0.5) < 0.01  # v² and v, by hand


@pytest.mark.parametrize("switches, message", [
    ({"max_bin": 256}, "sets 'max_bin'; a variant may set only the generation switches"),
    ({}, "must map switches to values"),
    ({"randomisation": "ones"}, "randomisation must be zero or bernoulli"),
])
def test_a_variant_that_is_not_a_generation_switch_is_one_line(switches, message):
    with pytest.raises(ConfigError, match=message):
        _variants_stage().variant_model(stub_model(), "v", switches)


def test_the_variants_table_spells_each_variant_and_its_scores():
    from sarnet.instruments.fid import FidProtocol

    record = {"cnn": {"mean": 80.314, "std": 1.551}, "mlp": {"mean": 106.82, "std": 2.0}, "class_rate": 0.9604,
              "sharpness": 0.8941}
    table = _variants_stage().variants_markdown({"bernoulli": {"randomisation": "bernoulli"}}, {"bernoulli": record},
                                                FidProtocol(10_000, 3, 2024))
    assert "over 3 sets of 10,000" in table
    # both: √(80.314 · 106.82) = 92.62, by hand
    assert "| `bernoulli` | randomisation bernoulli | 80.31 ± 1.55 | 106.82 ± 2.00 | 92.62 | 0.960 | 0.894 |" in table
