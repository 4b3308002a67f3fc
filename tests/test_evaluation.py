"""The FID protocol over sets, the generator interface and the Table 4.1 report.

Expected values come from an independent route: scipy's general matrix square root on features
computed here, and the table's numbers read back from the rendered text.
"""

from __future__ import annotations

import copy
import csv
import re

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from sarnet.core.errors import ConfigError, DataError
from sarnet.core.model_files import check_model_name, model_path, variant_of
from sarnet.families import load_generator
from sarnet.instruments.classifier import MlpClassifier
from sarnet.instruments.fid import FidProtocol, FidScorer, fid_over_sets
from sarnet.report import FidRow, fid_table_markdown, plot_fid_vs_latent, write_latent_csv, write_sets_csv
from reference import SAMPLING


class LinearFeatures(nn.Module):
    """A fixed random projection to 10 'logits': enough to exercise the protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(784, 10)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(10, 784, generator=torch.Generator().manual_seed(0)) / 28)
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


@pytest.fixture
def pool() -> torch.Tensor:
    return torch.rand(60, 28, 28, generator=torch.Generator().manual_seed(1))


def noise_generator(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed)) * 0.5


def textbook_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))))


def test_each_set_matches_the_textbook_fid_of_its_own_draws_on_both_instruments(pool):
    """Every instrument's FID of a set: the textbook formula (scipy's sqrtm) on that instrument's logits of
    the set against the logits of that set's own real draw, for the CNN stand-in and the real MLP class."""
    protocol = FidProtocol(n_images=200, sets=3, seed=7)
    torch.manual_seed(8)
    mlp = MlpClassifier([32, 16]).eval()
    result = fid_over_sets(noise_generator, {"cnn": FidScorer(LinearFeatures()), "mlp": FidScorer(mlp)}, pool, protocol)
    assert len(result.fids["cnn"]) == len(result.fids["mlp"]) == 3
    models = {"cnn": LinearFeatures().double(), "mlp": copy.deepcopy(mlp).double()}
    for index in range(3):
        rng, seed = protocol.set_seeds(index)
        real = pool[rng.integers(0, len(pool), 200)].double().unsqueeze(1) * 2 - 1
        fake = noise_generator(200, seed).double().unsqueeze(1) * 2 - 1
        for name, model in models.items():
            with torch.no_grad():
                expected = textbook_fid(model(fake).numpy(), model(real).numpy())
            assert result.fids[name][index] == pytest.approx(expected, rel=1e-4), (name, index)


def test_sets_differ_and_reruns_are_identical(pool):
    protocol = FidProtocol(n_images=100, sets=4, seed=2024)
    scorer = FidScorer(LinearFeatures())
    first = fid_over_sets(noise_generator, {"cnn": scorer}, pool, protocol)
    again = fid_over_sets(noise_generator, {"cnn": scorer}, pool, protocol)
    assert first.fids["cnn"] == again.fids["cnn"]
    assert len(set(first.fids["cnn"])) == 4  # a fresh real draw and fresh generated images per set
    other_seed = fid_over_sets(noise_generator, {"cnn": scorer}, pool, FidProtocol(100, 4, 2025))
    assert other_seed.fids["cnn"] != first.fids["cnn"]
    assert first.mean("cnn") == pytest.approx(np.mean(first.fids["cnn"])) and first.std("cnn") == pytest.approx(np.std(first.fids["cnn"]))


def test_real_draws_are_with_replacement_and_shared_across_models():
    protocol = FidProtocol(n_images=1000, sets=2, seed=3)
    draws = [protocol.set_seeds(0)[0].integers(0, 50, 1000) for _ in range(2)]
    assert np.array_equal(draws[0], draws[1])  # every model is scored against the same real sets
    assert len(np.unique(draws[0])) < 1000  # 1,000 draws from 50 images must repeat
    assert not np.array_equal(draws[0], protocol.set_seeds(1)[0].integers(0, 50, 1000))


def test_real_images_score_lower_than_noise(pool):
    protocol = FidProtocol(n_images=300, sets=2, seed=0)
    scorer = FidScorer(LinearFeatures())

    def from_pool(n: int, seed: int) -> torch.Tensor:
        return pool[torch.randint(0, len(pool), (n,), generator=torch.Generator().manual_seed(seed))]

    real = fid_over_sets(from_pool, {"cnn": scorer}, pool, protocol)
    noise = fid_over_sets(noise_generator, {"cnn": scorer}, pool, protocol)
    assert max(real.fids["cnn"]) < min(noise.fids["cnn"])


def test_on_set_sees_every_set_in_order_and_preview_is_set_zero(pool):
    seen = []
    protocol = FidProtocol(n_images=50, sets=3, seed=1)
    result = fid_over_sets(noise_generator, {"cnn": FidScorer(LinearFeatures())}, pool, protocol,
                           on_set=lambda i, fid: seen.append((i, fid)), preview=7)
    assert [i for i, _ in seen] == [0, 1, 2] and [f for _, f in seen] == result.fids["cnn"]
    assert torch.equal(result.preview, noise_generator(50, protocol.set_seeds(0)[1])[:7])


def test_bad_protocol_and_bad_generator_are_clear_errors(pool):
    with pytest.raises(ConfigError, match="sets"):
        FidProtocol(n_images=100, sets=0)
    with pytest.raises(ConfigError, match="shape"):
        fid_over_sets(lambda n, s: torch.zeros(n, 14, 14), {"cnn": FidScorer(LinearFeatures())}, pool, FidProtocol(10, 1))


def test_model_paths_follow_the_one_naming_rule():
    assert str(model_path("conv_vae", "conv_vae_L8")) == "models/conv_vae/conv_vae_L8.safetensors"
    assert str(model_path("sarnet_vae", "sarnet_vae_mnist_all_L128")) == "models/sarnet_vae/sarnet_vae_mnist_all_L128.safetensors"
    assert str(model_path("gen_xgboost", "gen_xgboost")) == "models/gen_xgboost"  # the folder train_xgboost writes
    for bad in ("../x", "a b", "fashion$(touch x)", "double__underscore", "", "_lead"):
        with pytest.raises(ConfigError):
            check_model_name(bad)


def test_a_thesis_model_s_variant_is_what_its_name_adds_to_its_kind():
    assert variant_of("sarnet_vae_L128", "sarnet_vae", 128) is None
    assert variant_of("sarnet", "sarnet", None) is None
    assert variant_of("sarnet_vae_fashion_L128", "sarnet_vae", 128) == "fashion"
    assert variant_of("sarnet_mse_ssim", "sarnet", None) == "mse_ssim"
    assert variant_of("my_vae", "conv_vae", 8) == "my_vae"  # a name that does not start with its kind: itself


def test_missing_model_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such model file"):
        load_generator(tmp_path / "absent.safetensors", SAMPLING)


def test_loaded_generator_reproduces_the_saved_model(tmp_path):
    from sarnet.core.model_files import save_model
    from sarnet.families.conv_vae import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(4)
    save_model(model, tmp_path / "m.safetensors")
    kind, generate = load_generator(tmp_path / "m.safetensors", SAMPLING)
    assert kind == "conv_vae"
    expected = model.sample(5, torch.Generator().manual_seed(11), **SAMPLING["conv_vae"])
    assert torch.equal(generate(5, 11), expected)


# --------------------------------------------------------------------------- the report

THESIS = {"sarnet_vae": {128: [1.535, 0.08], 8: [2.125, 0.089]}, "conv_vae": {128: [2.018, 0.122]},
          "sarnet": [29.0, None], "gen_xgboost": None}


def rows() -> list[FidRow]:
    return [
        FidRow("sarnet_vae_L128", "sarnet_vae", 128, {"cnn": [1.0, 1.2, 1.4]}, 1.2, 0.163299),
        FidRow("conv_vae_L128", "conv_vae", 128, {"cnn": [2.0, 2.5]}, 2.25, 0.25),
        FidRow("sarnet_vae_L8", "sarnet_vae", 8, {"cnn": [3.0]}, 3.0, 0.0),
        FidRow("gen_xgboost", "gen_xgboost", None, {"cnn": [9.5, 10.5]}, 10.0, 0.5),
    ]


def table_rows(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]


def test_table_has_table_41_layout_with_thesis_beside_ours():
    md = fid_table_markdown(rows(), [128, 8], THESIS, (8.011, 2.218), 10_000)
    body = table_rows(md)
    # Rows without second-instrument sets show "—" in the MLP columns (those columns have their own tests).
    assert body[0] == ["L", "SarNET VAE (ours)", "SarNET VAE (ours, MLP)", "SarNET VAE (thesis)",
                       "conv VAE (ours)", "conv VAE (ours, MLP)", "conv VAE (thesis)"]
    assert body[1] == ["128", "1.200 ± 0.163 (3)", "—", "1.535 ± 0.080", "2.250 ± 0.250 (2)", "—", "2.018 ± 0.122"]
    assert body[2] == ["8", "3.000 ± 0.000 (1)", "—", "2.125 ± 0.089", "not run", "—", "—"]
    singles = {r[0]: r[1:] for r in body[4:]}
    assert singles["simple SarNET"] == ["not run", "—", "29.000"]
    assert singles["generative XGBoost"] == ["10.000 ± 0.500 (2)", "—", "—"]
    assert re.search(r"8\.011 .* 2\.218 .*3\.61×", md)


def test_other_training_set_rows_stay_out_of_table_41():
    fashion = FidRow("sarnet_vae_fashion_L128", "sarnet_vae", 128, {"cnn": [6.0, 7.0]}, 6.5, 0.707107, "fashion", "fashion")
    thesis = THESIS | {"variants": {"sarnet_vae_fashion_L128": [6.28, 0.135]}}
    body = table_rows(fid_table_markdown([*rows(), fashion], [128, 8], thesis, (8.011, 2.218), 10_000))
    assert body[1][1] == "1.200 ± 0.163 (3)"  # the L = 128 cell is still the fives' model
    fashion_rows = [r for r in body if "training set `fashion`" in r[0]]
    assert len(fashion_rows) == 1 and fashion_rows[0][1:] == ["6.500 ± 0.707 (2)", "—", "6.280 ± 0.135"]
    assert "fashion classifier" in fashion_rows[0][0]


def test_sets_csv_holds_every_set(tmp_path):
    write_sets_csv(rows(), tmp_path / "sets.csv")
    lines = list(csv.DictReader(open(tmp_path / "sets.csv")))
    assert len(lines) == 3 + 2 + 1 + 2
    assert [float(r["fid"]) for r in lines if r["model"] == "conv_vae_L128"] == [2.0, 2.5]


def test_latent_csv_and_plot(tmp_path):
    write_latent_csv(rows(), [128, 8], THESIS, tmp_path / "latent.csv")
    lines = list(csv.DictReader(open(tmp_path / "latent.csv")))
    assert [int(r["latent_dim"]) for r in lines] == [8, 128]
    assert float(lines[1]["sarnet_vae_mean"]) == 1.2 and lines[0]["conv_vae_mean"] == ""
    assert float(lines[1]["conv_vae_thesis"]) == 2.018
    plot_fid_vs_latent(rows(), [128, 8], THESIS, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_overview_draws_every_row_with_both_instruments_and_the_thesiss_value(tmp_path):
    from PIL import Image

    from sarnet.report import plot_fid_overview

    rows = [
        FidRow("sarnet_vae_L128", "sarnet_vae", 128, {"cnn": [1.0, 3.0], "mlp": [2.0, 4.0]}, 2.0, 1.0),
        FidRow("sarnet_vae_fashion_L128", "sarnet_vae", 128, {"cnn": [6.0, 8.0]}, 7.0, 1.0, variant="fashion"),
        FidRow("sarnet", "sarnet", None, {"cnn": [30.0]}, 30.0, 0.0),
        FidRow("dcgan", "dcgan", None, {"cnn": [9.0, 11.0], "mlp": [5.0, 5.0]}, 10.0, 1.0, baseline=True),
    ]
    thesis = {"sarnet_vae": {128: [1.5, 0.1]}, "sarnet": [29.0, None], "variants": {"sarnet_vae_fashion_L128": [6.28, 0.1]},
              "dcgan": [99.0, None]}  # a baseline never takes a thesis value, even one of its kind's name
    points = plot_fid_overview(rows, thesis, tmp_path / "overview.png")
    assert [(p.name, p.family, p.thesis) for p in points] == [
        ("sarnet_vae_L128", "SarNET VAE", 1.5), ("sarnet_vae_fashion_L128", "SarNET VAE", 6.28),
        ("sarnet", "simple SarNET", 29.0), ("dcgan", "GANs", None)]
    assert points[0].cnn == (2.0, 1.0) and points[0].mlp == (3.0, 1.0)  # the MLP's mean and population std by hand
    assert points[1].mlp is None and points[3].mlp == (5.0, 0.0)
    with Image.open(tmp_path / "overview.png") as png:
        assert png.format == "PNG" and png.width > 600
