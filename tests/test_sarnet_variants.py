"""Thesis §4.1's simple-SarNET variants: losses with and without SSIM, the binary target, other patch
sizes; their reconstructions, and the ablation tables the FID table stage writes."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from reference import SAMPLING, sarnet, unit_patches
from sarnet.core.errors import ConfigError
from sarnet.core.model_files import save_model
from sarnet.families import load_model
from sarnet.families.sarnet import SarNet
from sarnet.report import FidRow, ablation_markdown, describe_variant, fid_table_markdown

TEMPERATURE = SAMPLING["sarnet"]["temperature"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 784, generator=gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------- losses, by hand

@pytest.mark.parametrize("power", [1.0, 2.0])
def test_without_ssim_the_loss_is_the_mean_power_error(power):
    torch.manual_seed(0)
    model = sarnet(loss_power=power, ssim=False).double()
    x = images()
    out = model(x).detach().tolist()
    expected = [sum(abs(o - t) ** power for o, t in zip(out[i], x[i].tolist())) / 784 for i in range(3)]
    torch.testing.assert_close(model.loss((x,)).detach(), torch.tensor(expected, dtype=x.dtype), rtol=1e-9, atol=1e-12)


def test_with_ssim_the_loss_adds_one_minus_ssim():
    torch.manual_seed(1)
    model = sarnet(loss_power=2.0, ssim=True).double()
    x = images()
    out = model(x)
    similarity = ssim(out.view(-1, 1, 28, 28), x.view(-1, 1, 28, 28), data_range=1.0, size_average=False)
    expected = (out - x).pow(2).mean(dim=1) + 1 - similarity
    torch.testing.assert_close(model.loss((x,)), expected, rtol=1e-9, atol=1e-12)


def test_binary_target_is_cross_entropy_of_the_pixel_as_probability_plus_ssim():
    """Figure 4.3b: one logit per pixel, P(white) = sigmoid(logit), the [0, 1] pixel as the soft target."""
    torch.manual_seed(2)
    model = sarnet(classes=1).double()
    x = images()
    logits = model(x)
    assert logits.shape == (3, 784)
    p = 1 / (1 + torch.exp(-logits))
    bce = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).mean(dim=1)
    similarity = ssim(p.view(-1, 1, 28, 28), x.view(-1, 1, 28, 28), data_range=1.0, size_average=False)
    torch.testing.assert_close(model.loss((x,)), bce + 1 - similarity, rtol=1e-9, atol=1e-12)
    plain = sarnet(classes=1, ssim=False).double()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.loss((x,)), bce, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: sarnet(classes=4, ssim=True),                    # SSIM needs pixel outputs
    lambda: SarNet([[2, 14, 2], [2, 28, 4]], 4, 0, 1.0, "yes"),  # not a boolean
    lambda: sarnet(classes=-1),
    lambda: sarnet(classes=257, ssim=False),
])
def test_impossible_settings_are_one_line_errors(make):
    with pytest.raises(ConfigError) as info:
        make()
    assert "\n" not in str(info.value)


def test_a_model_file_says_its_loss_and_one_written_before_the_option_trained_with_ssim(tmp_path):
    torch.manual_seed(3)
    model = sarnet(classes=1, ssim=False)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.model_args == model.model_args and loaded.ssim is False and loaded.classes == 1
    x = images().float()
    assert torch.equal(loaded(x), model(x))
    old_args = {k: v for k, v in sarnet().model_args.items() if k != "ssim"}
    assert SarNet(**old_args).ssim is True


# ---------------------------------------------------------------- the binary-target sampler

@pytest.fixture(scope="module")
def binary_sarnet():
    torch.manual_seed(4)
    return sarnet(classes=1)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_binary_sampler_incremental_equals_naive_on_the_same_draws(binary_sarnet, seed):
    a = binary_sarnet.sample_binary(4, gen(seed), temperature=TEMPERATURE, method="incremental")
    b = binary_sarnet.sample_binary(4, gen(seed), temperature=TEMPERATURE, method="naive")
    assert torch.equal(a, b)
    assert not torch.equal(a, binary_sarnet.sample_binary(4, gen(seed + 100), temperature=TEMPERATURE))


def test_binary_sampler_draws_black_or_white_with_a_black_first_patch(binary_sarnet):
    img = binary_sarnet.sample_binary(6, gen(8), temperature=1.0)
    assert img.shape == (6, 28, 28)
    assert set(img.unique().tolist()) == {0.0, 1.0}
    first = torch.tensor(unit_patches()) == 0
    assert (img.view(6, -1)[:, first] == 0).all()


def test_binary_sampler_draws_each_pixel_with_its_probability():
    """Biases alone set the logits (zero weights): pixel white with probability sigmoid(b / T)."""
    model = sarnet(classes=1)
    with torch.no_grad():
        for layer in model.stack.layers:
            layer.weight.zero_()
            layer.bias.zero_()
        model.stack.layers[-1].bias.fill_(0.6)
    img = model.sample_binary(2000, gen(9), temperature=0.5).view(2000, -1)
    later = torch.tensor(unit_patches()) > 0
    rate = img[:, later].mean().item()
    expected = 1 / (1 + math.exp(-0.6 / 0.5))
    assert abs(rate - expected) < 0.005  # 2000·768 draws: std ≈ 0.0004


def test_sample_dispatches_the_binary_target_to_its_sampler(binary_sarnet):
    assert torch.equal(binary_sarnet.sample(3, gen(10), **SAMPLING["sarnet"]),
                       binary_sarnet.sample_binary(3, gen(10), temperature=TEMPERATURE))
    with pytest.raises(ConfigError):
        sarnet().sample_binary(2, gen(0), temperature=TEMPERATURE)
    with pytest.raises(ConfigError):
        binary_sarnet.sample_binary(2, gen(0), temperature=0.0)


# ---------------------------------------------------------------- reconstructions

@pytest.mark.parametrize("classes", [0, 1, 4])
def test_reconstruction_is_the_teacher_forced_output_as_an_image(classes):
    torch.manual_seed(11)
    model = sarnet(classes=classes)
    x = images().float()
    with torch.no_grad():
        out = model(x)
    if classes == 0:
        expected = out.clamp(0, 1)
    elif classes == 1:
        expected = torch.sigmoid(out)
    else:
        expected = out.argmax(dim=1).float() / (classes - 1)
    assert torch.equal(model.reconstruct(x), expected.view(3, 28, 28))


def test_a_reconstructed_patch_depends_only_on_the_real_patches_before_it():
    torch.manual_seed(12)
    model = sarnet()
    x = images().float()
    patches = torch.tensor(unit_patches())
    changed = x.clone()
    changed[:, patches >= 20] = torch.rand(3, int((patches >= 20).sum()), generator=gen(13))
    a, b = model.reconstruct(x).view(3, -1), model.reconstruct(changed).view(3, -1)
    assert torch.equal(a[:, patches <= 20], b[:, patches <= 20])  # patch 20 sees patches < 20 only
    assert not torch.equal(a[:, patches > 20], b[:, patches > 20])


@pytest.mark.parametrize("patch, hidden", [(2, [[2, 14, 1], [2, 28, 2]]), (7, [[2, 16, 4], [2, 28, 7]])])
def test_the_patch_variants_of_params_yaml_build_and_train_a_step(patch, hidden):
    torch.manual_seed(14)
    model = sarnet(patch=patch, hidden=hidden)
    assert model.stack.n_patches == (28 // patch) ** 2
    loss = model.loss((images().float(),)).mean()
    loss.backward()
    assert math.isfinite(loss.item())


# ---------------------------------------------------------------- the report

SETTINGS = {"classes": 0, "loss_power": 1, "ssim": True, "patch": 4, "epochs": 100}


def test_variants_are_described_in_words():
    assert describe_variant(SETTINGS) == "L1 + SSIM, patch 4"
    assert describe_variant(SETTINGS | {"loss_power": 2, "ssim": False}) == "MSE, patch 4"
    assert describe_variant(SETTINGS | {"classes": 8, "ssim": False}) == "8 classes, patch 4"
    assert describe_variant(SETTINGS | {"classes": 1, "patch": 7}) == "binary target + SSIM, patch 7"


def _row(key: str, mean: float) -> FidRow:
    return FidRow(f"sarnet_{key}", "sarnet", None, {"cnn": [mean - 1, mean + 1]}, mean, 1.0, key)


ABLATION = {"mse": SETTINGS | {"loss_power": 2, "ssim": False}, "mse_ssim": SETTINGS | {"loss_power": 2},
            "l1": SETTINGS | {"ssim": False}, "l1_ssim": SETTINGS,
            "patch2": SETTINGS | {"patch": 2}, "patch7": SETTINGS | {"patch": 7}}
THESIS = {"mse": 0.0354, "mse_ssim": 0.0256, "l1": 0.0902, "l1_ssim": 0.0647}


def _trained(mse_pair, l1_pair, patch_losses):
    errors = {"mse": mse_pair[0], "mse_ssim": mse_pair[1], "l1": l1_pair[0], "l1_ssim": l1_pair[1]}
    train = {k: {"test_mse": v, "test_l1": v, "final_test_loss": 0.3} for k, v in errors.items()}
    for key, loss in patch_losses.items():
        train.setdefault(key, {"test_mse": 0.02, "test_l1": 0.05})["final_test_loss"] = loss
    return train


def test_ablation_verdicts_follow_the_numbers():
    fids = {"patch2": _row("patch2", 90.0), "l1_ssim": _row("l1_ssim", 70.0), "patch7": _row("patch7", 80.0)}
    agree = ablation_markdown(ABLATION, _trained((0.03, 0.02), (0.09, 0.06), {"patch2": 0.2, "l1_ssim": 0.3, "patch7": 0.4}),
                              fids, THESIS)
    assert "MSE: adding SSIM lowers our test MSE from 0.0300 to 0.0200 (thesis 0.0354 → 0.0256): as the thesis reports." in agree
    assert "L1: adding SSIM lowers our test L1 from 0.0900 to 0.0600" in agree
    assert "vs patch 4: loss lower, FID worse; vs patch 7: loss lower, FID worse" in agree
    assert "\"lower loss, worse images\" holds here." in agree
    disagree = ablation_markdown(ABLATION, _trained((0.02, 0.03), (0.09, 0.06), {"patch2": 0.35, "l1_ssim": 0.3, "patch7": 0.4}),
                                 fids, THESIS)
    assert "adding SSIM raises our test MSE from 0.0200 to 0.0300 (thesis 0.0354 → 0.0256): unlike the thesis." in disagree
    assert "vs patch 4: loss not lower, FID worse" in disagree and "does not hold here" in disagree
    rows = [line for line in agree.splitlines() if line.startswith("| `")]
    assert [line.split("|")[1].strip() for line in rows] == ["`mse`", "`mse_ssim`", "`l1`", "`l1_ssim`",
                                                            "`patch2`", "`l1_ssim`", "`patch7`"]


def test_a_variant_not_run_reads_so_and_gets_no_verdict():
    text = ablation_markdown(ABLATION, {}, {}, THESIS)
    assert "- MSE: not run." in text and "holds" not in text
    assert text.count("not run") >= 2 * 7


def test_the_fid_table_labels_a_simple_sarnet_variant_with_its_settings():
    table = fid_table_markdown([_row("mse", 80.0)], [128], {}, (8.0, 2.0), 100,
                               {"sarnet_mse": "MSE, patch 4, 100 epochs"})
    assert "| simple SarNET `mse`: MSE, patch 4, 100 epochs | 80.000 ± 1.000 (2) | — |" in table
