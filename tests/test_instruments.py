"""The second FID instrument (an MLP on raw pixels): it scores the very same images as the CNN, and the
report says which comparisons hold on both."""

import hashlib

import pytest
import torch
from torch import nn

from sarnet.core.model_files import save_model
from sarnet.instruments.calibration import calibrate, calibration_markdown
from sarnet.instruments.classifier import INSTRUMENTS, MlpClassifier, build_classifier, instrument_path
from sarnet.instruments.fid import FidProtocol, FidScorer, fid_over_sets
from sarnet.instruments.loader import load_instrument
from sarnet.report import FidRow, agreement, agreement_markdown, fid_table_markdown, separation, spearman


def test_the_mlp_instrument_is_an_mlp_on_raw_pixels_and_loads_from_its_file(tmp_path):
    torch.manual_seed(0)
    model = build_classifier({"hidden": [32, 16]}, "mlp")
    assert isinstance(model, MlpClassifier)
    assert not any(isinstance(m, (nn.Conv2d, nn.MaxPool2d)) for m in model.modules())
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [32, 16, 10]
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_instrument(tmp_path / "m.safetensors", instrument="mlp")
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(loaded(x), model.eval()(x))
    assert str(instrument_path("fashion", "mlp")) == "models/classifier/fashion_mlp.safetensors"
    assert str(instrument_path("mnist")) == "models/classifier/mnist.safetensors"
    assert set(INSTRUMENTS) == {"cnn", "mlp"}


def test_the_second_instruments_fid_of_a_set_against_itself_is_zero():
    torch.manual_seed(1)
    scorer = FidScorer(MlpClassifier([64, 32]))
    images = torch.rand(500, 28, 28)
    assert scorer.fid(images, images) == pytest.approx(0.0, abs=1e-8)
    assert scorer.fid(images, torch.rand(500, 28, 28) ** 3) > 1e-3


class Recorder(nn.Module):
    """A mock instrument that fingerprints every batch it sees."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale, self.seen = scale, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest())
        return self.scale * x.view(len(x), -1)[:, :10] + torch.arange(10.0)


def test_both_instruments_see_identical_images_and_generation_runs_once_per_set():
    cnn, mlp = Recorder(1.0), Recorder(3.0)
    calls = []

    def generate(n, seed):
        calls.append(seed)
        return torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed))

    protocol = FidProtocol(n_images=50, sets=3, seed=0)
    result = fid_over_sets(generate, {"cnn": FidScorer(cnn, batch_size=1000), "mlp": FidScorer(mlp, batch_size=1000)},
                           torch.rand(40, 28, 28), protocol, probe=20)
    assert len(calls) == 3  # no second generation
    assert cnn.seen == mlp.seen and len(cnn.seen) == 1 + 3  # the real pool, then each set, identical bytes
    assert list(result.fids) == ["cnn", "mlp"] and len(result.fids["mlp"]) == len(result.fids["cnn"]) == 3
    assert result.fids["mlp"] != result.fids["cnn"]


ROWS = {  # hand-made: (CNN mean, std), (MLP per-set FIDs)
    "sarnet_vae_L128": (5.29, 0.24, [2.5, 2.8]),
    "conv_vae_L128": (6.97, 0.25, [5.1, 5.5]),
    "sarnet_vae_L8": (5.71, 0.27, [3.0, 3.3]),
    "conv_vae_L8": (5.80, 0.30, [9.0, 9.4]),
}


def row(name: str) -> FidRow:
    kind, latent = name.rsplit("_L", 1)
    mean, std, second = ROWS[name]
    return FidRow(name, kind, int(latent), {"cnn": [mean - std, mean + std], "mlp": second}, mean, std)


def test_separation_needs_a_gap_beyond_both_stds():
    assert separation((5.0, 0.2), (5.5, 0.2)) == "a"
    assert separation((5.5, 0.2), (5.0, 0.2)) == "b"
    assert separation((5.0, 0.25), (5.5, 0.25)) == "tie"  # a gap of exactly the two stds is noise (exact in binary)
    assert separation((5.0, 0.25), (5.5, 0.2)) == "a"


def test_agreement_verdicts_on_hand_made_rows():
    assert agreement(row("sarnet_vae_L128"), row("conv_vae_L128")) == ("a", "a", "holds on both")
    assert agreement(row("sarnet_vae_L8"), row("conv_vae_L8")) == ("tie", "a", "only the MLP separates them")
    flipped = FidRow("x_L8", "conv_vae", 8, {"cnn": [1.0], "mlp": [9.0, 9.1]}, 4.0, 0.1)  # better by the CNN, worse by the MLP
    assert agreement(row("sarnet_vae_L8"), flipped)[2] == "the instruments disagree"


def test_the_what_holds_section_covers_every_comparison_and_the_rank_correlation():
    rows = [row(name) for name in ROWS] + [FidRow("gan_mlp", "gan_mlp", None, {"cnn": [40.0, 42.0], "mlp": [30.0, 31.0]},
                                                  41.0, 1.0, baseline=True)]
    text = agreement_markdown(rows, [128, 8])
    assert "- SarNET VAE vs conv VAE, L = 128: CNN 5.29 vs 6.97 (SarNET VAE better), MLP 2.65 vs 5.30 " \
           "(SarNET VAE better): **holds on both**." in text
    assert "- SarNET VAE vs conv VAE, L = 8:" in text and "**only the MLP separates them**" in text
    assert "- SarNET VAE across L, best first: CNN 128 < 8, MLP 128 < 8: **the same order**" in text
    assert "- conv VAE across L, best first: CNN 8 < 128, MLP 128 < 8: **different orders**" in text
    assert "- `gan_mlp` vs SarNET VAE L = 128:" in text and "(SarNET VAE better)" in text
    assert "- All 5 rows: Spearman rank correlation between the instruments ρ = 0.900." in text


def test_spearman_against_a_hand_computation():
    # ranks x: 1 2 3 4 5, y: 2 1 4 3 5 → d² = 1+1+1+1+0 = 4, ρ = 1 − 6·4/(5·24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)


def test_the_fid_table_shows_both_instruments_side_by_side():
    table = fid_table_markdown([row("sarnet_vae_L128"), row("conv_vae_L128")], [128], {}, (8.0, 2.0), 100)
    assert "| 128 | 5.290 ± 0.240 (2) | 2.650 ± 0.150 | — | 6.970 ± 0.250 (2) | 5.300 ± 0.200 | — |" in table


def test_the_calibration_table_shows_the_mlp_instruments_column():
    torch.manual_seed(2)
    test, train = torch.rand(60, 28, 28), torch.rand(80, 28, 28)
    results = calibrate({"cnn": FidScorer(MlpClassifier([16])), "mlp": FidScorer(MlpClassifier([8]))}, test, train, 40, 0)
    assert all({"cnn", "mlp"} <= set(r) and set(r["mlp"]) == {"fid", "ratio"} for r in results.values())
    text = calibration_markdown(results, 40, "note")
    assert "| MLP instrument's FID | its ratio |" in text and text.count("| — | — |") == 0
