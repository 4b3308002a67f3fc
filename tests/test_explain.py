"""Patch importance and latent interpolation (thesis §5.1), checked against the spec's words."""

import numpy as np
import pytest
import torch

from reference import SAMPLING, sarnet, unit_patches, vae
from sarnet.core.errors import ConfigError
from sarnet.explain import (importance_figure, importance_overlay, inpainting_rows, interpolate, interpolation_codes,
                            interpolation_row, patch_importance, pixel_patch_map, top_patches)
from sarnet.families.conv_vae import ConvVAE
from sarnet.families.sarnet_vae import SarNetVAE

N_PATCHES = 49  # 28² image in 4² patches: a 7×7 grid
THRESHOLD = SAMPLING["sarnet_vae"]["threshold"]
INPAINT = {k: SAMPLING["inpaint"][k] for k in ("z_scale", "threshold")}


def allowed_patches(target: int) -> set[int]:
    """Input patches a first (type a) layer lets output patch `target` see: patch 0 sees patch 0,
    patch o > 0 sees patches 0..o−1 (docs/protocol.md "Models" / thesis §3.2)."""
    return {0} if target == 0 else set(range(target))


def random_image(seed: int) -> torch.Tensor:
    # Strictly positive pixels: every patch carries signal, so allowed patches must score > 0.
    return torch.rand(28, 28, generator=torch.Generator().manual_seed(seed)) * 0.9 + 0.1


def small_models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [vae(4), sarnet(), sarnet(classes=4)]


@pytest.mark.parametrize("model", small_models(), ids=["sarnet_vae", "sarnet", "sarnet_classes"])
def test_importance_is_zero_exactly_where_the_mask_forbids(model):
    image = random_image(1)
    for target in range(N_PATCHES):
        importance = patch_importance(model, image, target)
        assert importance.shape == (N_PATCHES,)
        allowed = allowed_patches(target)
        forbidden = [k for k in range(N_PATCHES) if k not in allowed]
        assert (importance[forbidden] == 0).all(), f"target {target}: forbidden patches scored"
        assert (importance[sorted(allowed)] > 0).all(), f"target {target}: an allowed patch scored 0"


def test_importance_ignores_the_latent_and_black_patches():
    torch.manual_seed(0)
    model = vae(4)
    image = random_image(2)
    image[:4, :4] = 0  # patch 0 black: no pixel there contributes
    importance = patch_importance(model, image, 30)
    assert importance[0] == 0 and (importance[1:30] > 0).all()
    with torch.no_grad():
        model.decoder.layers[0].weight[:, 784:] += 5.0  # latent columns must not matter
        model.decoder.layers[0].bias += 5.0  # nor the bias
    torch.testing.assert_close(patch_importance(model, image, 30), importance, rtol=0, atol=0)


def brute_force_importance(model: torch.nn.Module, x: list[float], target: int) -> list[float]:
    """Loops over output units and input pixels with the raw weight; the mask comes from the patch rule."""
    stack = model.decoder if isinstance(model, SarNetVAE) else model.stack
    layer = stack.layers[0]
    in_shape, out_shape = stack.shapes[0], stack.shapes[1]
    in_patch = unit_patches(in_shape.channels, in_shape.size, in_shape.patch)
    out_patch = unit_patches(out_shape.channels, out_shape.size, out_shape.patch)
    weight = layer.weight.detach().double().tolist()
    allowed = allowed_patches(target)
    importance = [0.0] * N_PATCHES
    for u, o in enumerate(out_patch):
        if o != target:
            continue
        sums = [0.0] * N_PATCHES
        for j, k in enumerate(in_patch):
            if k in allowed:
                sums[k] += x[j] * weight[u][j]
        for k in range(N_PATCHES):
            importance[k] += abs(sums[k])
    return importance


@pytest.mark.parametrize("target", [0, 1, 24, 48])
def test_importance_matches_brute_force(target):
    torch.manual_seed(3)
    # A small hidden layer (1 channel, 7², 1² patches) keeps the loops short; the vae has the thesis architecture.
    for model in (vae(4).double(), sarnet(hidden=[[1, 7, 1]]).double()):
        image = random_image(4 + target)
        expected = brute_force_importance(model, image.double().flatten().tolist(), target)
        got = patch_importance(model.double(), image.double(), target)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("target", [-1, 49, 100])
def test_target_outside_the_grid_is_a_config_error(target):
    with pytest.raises(ConfigError, match=r"outside the 7×7 grid \(0\.\.48\)"):
        patch_importance(vae(4), random_image(0), target)


def test_conv_vae_and_bad_image_are_config_errors():
    with pytest.raises(ConfigError, match="SarNET or SarNET VAE"):
        patch_importance(ConvVAE(4), random_image(0), 3)
    with pytest.raises(ConfigError, match="784 pixels"):
        patch_importance(vae(4), torch.zeros(27, 27), 3)


def test_top_patches_scales_the_top_k_min_max():
    importance = torch.tensor([0.0, 2.0, 10.0, 4.0, 6.0, 1.0, 3.0, 0.0])
    indices, scaled = top_patches(importance, k=5)
    assert indices.tolist() == [2, 4, 3, 6, 1]
    np.testing.assert_allclose(scaled.numpy(), [1.0, 0.5, 0.25, 0.125, 0.0])


def test_top_patches_handles_ties_zeros_and_bad_k():
    indices, scaled = top_patches(torch.tensor([0.0, 3.0, 3.0, 0.0]), k=5)  # zeros (forbidden) are left out
    assert sorted(indices.tolist()) == [1, 2] and scaled.tolist() == [1.0, 1.0]
    indices, scaled = top_patches(torch.zeros(49), k=5)
    assert len(indices) == 0 and len(scaled) == 0
    with pytest.raises(ConfigError):
        top_patches(torch.ones(3), k=0)


def test_overlay_colours_only_top_patches_and_whitens_the_target():
    image = np.full((28, 28), 0.4)
    importance = torch.zeros(N_PATCHES)
    importance[[3, 5, 7, 9, 11, 13]] = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # patch 13 is sixth
    patches = np.array(unit_patches()).reshape(28, 28)
    rgb = importance_overlay(image, importance, 20, patches, k=5)
    assert rgb.shape == (28, 28, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[patches == 20] == 1.0).all()
    for patch in range(N_PATCHES):
        pixels = rgb[patches == patch]
        grey = np.allclose(pixels, 0.4)
        if patch in (3, 5, 7, 9, 11):
            assert not grey, f"top patch {patch} not coloured"
        elif patch != 20:
            assert grey, f"patch {patch} coloured though not in the top 5"
    # The most and least important of the five get different colours.
    assert not np.allclose(rgb[patches == 3][0], rgb[patches == 11][0])


def test_pixel_patch_map_is_the_raster_patch_grid():
    expected = np.array(unit_patches()).reshape(28, 28)
    for model in small_models():
        np.testing.assert_array_equal(pixel_patch_map(model), expected)


def test_interpolation_codes_hit_the_endpoints_bit_for_bit():
    torch.manual_seed(5)
    z_a, z_b = torch.randn(7) * 3, torch.randn(7) * 3
    codes = interpolation_codes(z_a, z_b, 10)
    assert codes.shape == (10, 7)
    assert torch.equal(codes[0], z_a) and torch.equal(codes[-1], z_b)
    t = np.arange(10) / 9  # independent float64 reference for the interior
    expected = z_a.double().numpy()[None] + t[:, None] * (z_b - z_a).double().numpy()[None]
    np.testing.assert_allclose(codes.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="steps >= 2"):
        interpolation_codes(z_a, z_b, 1)


def test_interpolate_decodes_the_encoder_means():
    torch.manual_seed(6)
    model = vae(4).double().eval()
    a, b = random_image(7).double(), random_image(8).double()
    with torch.no_grad():  # the encoder mean, read straight off the encoder
        mu = model.encoder.mu(model.encoder.features(torch.stack([a, b])[:, None]))
    out = interpolate(model, a, b, steps=5, threshold=THRESHOLD)
    assert out.shape == (5, 28, 28)
    ends = model.sample(2, z=mu, threshold=THRESHOLD)
    torch.testing.assert_close(out[0], ends[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[-1], ends[1], rtol=0, atol=1e-12)
    assert not torch.equal(out[0], out[-1])
    with pytest.raises(ConfigError, match="steps >= 2"):
        interpolate(model, a, b, steps=1, threshold=THRESHOLD)
    with pytest.raises(ConfigError, match="SarNET VAE"):
        interpolate(sarnet(), a, b, steps=3, threshold=THRESHOLD)


# ---------------------------------------------------------------- the figures' panels
def test_inpainting_rows_show_original_kept_part_and_styles_with_kept_patches_bit_identical():
    torch.manual_seed(9)
    model = vae(4).eval()
    images = torch.stack([random_image(10), random_image(11)])
    keep = 24
    rows = inpainting_rows(model, images, torch.Generator().manual_seed(1), keep_patches=keep, n_styles=3, **INPAINT)
    assert rows.shape == (2, 5, 28, 28)
    kept = torch.tensor(unit_patches()).reshape(28, 28) < keep  # independent patch map
    for image, row in zip(images, rows):
        assert torch.equal(row[0], image)
        assert torch.equal(row[1][kept], image[kept]) and not row[1][~kept].any()
        for style in row[2:]:
            assert torch.equal(style[kept], image[kept])
        assert not torch.equal(row[2][~kept], row[3][~kept])  # styles differ where generated
    with pytest.raises(ConfigError, match="keep_patches"):
        inpainting_rows(model, images, None, keep_patches=50, n_styles=2, **INPAINT)
    with pytest.raises(ConfigError, match="SarNET VAE"):
        inpainting_rows(sarnet(), images, None, keep_patches=keep, n_styles=2, **INPAINT)


def test_importance_figure_panels_match_single_target_calls_and_check_targets_first():
    torch.manual_seed(12)
    model = vae(4).eval()
    image = random_image(13)
    importance, overlays = importance_figure(model, image, [5, 30], k=3)
    assert overlays.shape == (2, 28, 28, 3)
    for row, target in zip(importance, [5, 30]):
        np.testing.assert_allclose(row, patch_importance(model, image, target).double().numpy())
        assert set(np.flatnonzero(row)) <= allowed_patches(target)
    with pytest.raises(ConfigError, match="outside"):
        importance_figure(model, image, [5, 49], k=3)
    with pytest.raises(ConfigError, match="k must be"):
        importance_figure(model, image, [5], k=0)


def test_interpolation_row_is_framed_by_the_two_originals():
    torch.manual_seed(14)
    model = vae(4).eval()
    a, b = random_image(15), random_image(16)
    row = interpolation_row(model, a, b, steps=4, threshold=THRESHOLD)
    assert row.shape == (6, 28, 28)
    assert torch.equal(row[0], a) and torch.equal(row[-1], b)
    torch.testing.assert_close(row[1:-1], interpolate(model, a, b, steps=4, threshold=THRESHOLD), rtol=0, atol=0)
