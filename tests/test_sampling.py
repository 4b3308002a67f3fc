"""Patch-by-patch sampling: SarNET VAE sampling and inpainting, the simple SarNET samplers.

"naive" and "incremental" must give the same images; a plain loop over patches written here
is the independent reference.
"""

import pytest
import torch

from sarnet import sampling
from sarnet.errors import ConfigError
from sarnet.models import SarNet, SarNetVAE
from reference import unit_patches

THRESHOLD = 0.105


PATCH = torch.tensor(unit_patches())


def spread_vae(latent_dim, seed=0):
    """A SarNET VAE whose outputs straddle the threshold (some pixels zeroed, some kept), so the
    threshold and the feedback of written patches matter; default init gives ~0.5 everywhere."""
    torch.manual_seed(seed)
    model = SarNetVAE(latent_dim)
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.weight.mul_(2.5)
        model.decoder.layers[-1].bias.uniform_(-3.5, 1.5)
    return model


def gen(seed):
    return torch.Generator().manual_seed(seed)


def reference_sample(decoder, z, threshold=THRESHOLD):
    """REFERENCE.md: start all-zero; for i = 1..48 run the decoder on the whole image, take output
    patch i, set pixels < threshold to 0, write it in. Patch 0 stays black."""
    img = torch.zeros(len(z), 784, dtype=z.dtype)
    with torch.no_grad():
        for i in range(1, 49):
            out = decoder(img, z)
            units = PATCH == i
            vals = out[:, units]
            img[:, units] = torch.where(vals < threshold, torch.zeros_like(vals), vals)
    return img.view(-1, 28, 28)


# ---------------------------------------------------------------- SarNET VAE sampling

@pytest.fixture(scope="module")
def vae8():
    return spread_vae(8)


@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_sample_shape_range_patch0_threshold(vae8, method):
    img = vae8.sample(6, generator=gen(0), method=method)
    assert img.shape == (6, 28, 28)
    assert ((img >= 0) & (img <= 1)).all()
    assert (img[:, 0:4, 0:4] == 0).all(), "patch 0 must stay black"
    assert not ((img > 0) & (img < THRESHOLD)).any(), "pixels below the threshold must be zeroed"
    nonzero = (img > 0).float().mean().item()
    assert 0.2 < nonzero < 0.95, f"fixture should straddle the threshold, got {nonzero:.2f} non-zero"


def test_sample_reproducible_and_seed_dependent(vae8):
    a = vae8.sample(4, generator=gen(1))
    b = vae8.sample(4, generator=gen(1))
    c = vae8.sample(4, generator=gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # different images within one batch too
    assert not torch.equal(a[0], a[1])


def test_sample_keeps_training_flag(vae8):
    vae8.train()
    vae8.sample(2, generator=gen(3))
    assert vae8.training and vae8.decoder.training
    vae8.eval()
    vae8.sample(2, generator=gen(3))
    assert not vae8.decoder.training


@pytest.mark.parametrize("latent_dim", [8, 128])
def test_incremental_equals_naive_float32(latent_dim):
    model = spread_vae(latent_dim, seed=latent_dim)
    inc = model.sample(16, generator=gen(4), method="incremental")
    naive = model.sample(16, generator=gen(4), method="naive")
    assert (inc > 0).any() and (inc == 0).any()
    assert (inc - naive).abs().max().item() <= 1e-5


def test_incremental_equals_naive_float64():
    model = spread_vae(8, seed=5).double()
    inc = model.sample(16, generator=gen(5), method="incremental")
    naive = model.sample(16, generator=gen(5), method="naive")
    assert inc.dtype == torch.float64
    assert (inc > 0).any() and (inc == 0).any()
    assert (inc - naive).abs().max().item() <= 1e-12


def test_incremental_matches_independent_loop(vae8):
    z = torch.randn(8, 8, generator=gen(6))
    got = vae8.sample(8, z=z, method="incremental")
    ref = reference_sample(vae8.decoder, z)
    assert (ref > 0).any()
    assert (got - ref).abs().max().item() <= 1e-5


def test_independent_loop_float64_and_explicit_z_ignores_generator():
    model = spread_vae(16, seed=7).double()
    z = torch.randn(4, 16, generator=gen(7), dtype=torch.float64)
    a = model.sample(4, z=z, generator=gen(100))
    b = model.sample(4, z=z, generator=gen(200))
    assert torch.equal(a, b)
    assert (a - reference_sample(model.decoder, z)).abs().max().item() <= 1e-12


# ---------------------------------------------------------------- inpainting

@pytest.fixture(scope="module")
def real_images():
    g = gen(8)
    return torch.rand(2, 28, 28, generator=g) * (torch.rand(2, 28, 28, generator=g) > 0.4)


def test_inpaint_keeps_patches_and_varies_styles(vae8, real_images):
    out = vae8.inpaint(real_images, keep_patches=24, n_styles=3, generator=gen(9))
    assert out.shape == (2, 3, 28, 28)
    flat = out.reshape(2, 3, 784)
    kept = PATCH < 24
    for i in range(2):
        for s in range(3):
            assert torch.equal(flat[i, s, kept], real_images[i].reshape(784)[kept])
            gen_part = flat[i, s, ~kept]
            assert not ((gen_part > 0) & (gen_part < 0.15)).any(), "inpainting threshold is 0.15"
            assert (gen_part > 0).any()
        for s in range(3):
            for t in range(s + 1, 3):
                assert not torch.equal(flat[i, s], flat[i, t]), "styles must differ"
    # the bottom half really is generated: it is not the input's bottom half
    assert not torch.equal(flat[0, 0, ~kept], real_images[0].reshape(784)[~kept])


def test_inpaint_naive_equals_incremental_and_reproducible(vae8, real_images):
    a = vae8.inpaint(real_images, keep_patches=24, n_styles=3, generator=gen(10), method="incremental")
    b = vae8.inpaint(real_images, keep_patches=24, n_styles=3, generator=gen(10), method="naive")
    c = vae8.inpaint(real_images, keep_patches=24, n_styles=3, generator=gen(10), method="incremental")
    assert torch.equal(a, c)
    assert (a - b).abs().max().item() <= 1e-5


def test_inpaint_conditions_on_kept_patches(vae8, real_images):
    """Same seed (same z), different kept content -> different completions."""
    a = vae8.inpaint(real_images[:1], keep_patches=24, n_styles=1, generator=gen(11))
    b = vae8.inpaint(real_images[1:], keep_patches=24, n_styles=1, generator=gen(11))
    kept = PATCH < 24
    assert not torch.equal(a.reshape(-1)[~kept], b.reshape(-1)[~kept])


# ---------------------------------------------------------------- simple SarNET samplers

@pytest.fixture(scope="module")
def regression_sarnet():
    torch.manual_seed(12)
    model = SarNet()
    with torch.no_grad():  # outputs below 0.15, in between, and above 1
        for layer in model.stack.layers:
            layer.weight.mul_(1.8)
        model.stack.layers[-1].bias.uniform_(-0.5, 1.6)
    return model


def test_noise_sampler_shape_values_reproducible(regression_sarnet):
    a = sampling.sample_sarnet_noise(regression_sarnet, 5, gen(13))
    b = sampling.sample_sarnet_noise(regression_sarnet, 5, gen(13))
    c = sampling.sample_sarnet_noise(regression_sarnet, 5, gen(14))
    assert a.shape == (5, 28, 28)
    assert ((a == 0) | ((a >= 0.15) & (a <= 1))).all()
    assert (a == 0).any() and (a == 1).any() and ((a > 0.15) & (a < 1)).any(), "fixture should exercise every branch"
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_noise_sampler_refine_is_one_clean_pass(regression_sarnet):
    raw = sampling.sample_sarnet_noise(regression_sarnet, 4, gen(15), refine=False)
    refined = sampling.sample_sarnet_noise(regression_sarnet, 4, gen(15), refine=True)
    assert (raw[:, 0:4, 0:4] == 0).all(), "without refining, patch 0 is never written"
    assert ((raw == 0) | ((raw >= 0.15) & (raw <= 1))).all()
    with torch.no_grad():
        out = regression_sarnet.stack(raw.reshape(4, 784))
    expected = torch.where(out < 0.15, torch.zeros_like(out), out).clamp(max=1.0).view(4, 28, 28)
    torch.testing.assert_close(refined, expected, rtol=0, atol=1e-6)


def test_noise_sampler_rejects_classification_model():
    with pytest.raises(ConfigError):
        sampling.sample_sarnet_noise(SarNet(classes=4), 2, gen(0))


@pytest.fixture(scope="module")
def class_sarnet():
    torch.manual_seed(16)
    return SarNet(classes=4)


@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_class_sampler_values(class_sarnet, method):
    img = sampling.sample_sarnet_classes(class_sarnet, 3, gen(17), temperature=0.3, method=method)
    assert img.shape == (3, 28, 28)
    allowed = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    close = (img.reshape(-1, 1) - allowed).abs() < 1e-6
    assert close.any(dim=1).all()
    for v in allowed:  # all four classes occur (logits of a fresh model are near-uniform)
        assert ((img - v).abs() < 1e-6).any()


def test_class_sampler_incremental_equals_naive(class_sarnet):
    a = sampling.sample_sarnet_classes(class_sarnet, 4, gen(18), temperature=0.3, method="incremental")
    b = sampling.sample_sarnet_classes(class_sarnet, 4, gen(18), temperature=0.3, method="naive")
    c = sampling.sample_sarnet_classes(class_sarnet, 4, gen(19), temperature=0.3, method="incremental")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_class_sampler_rejects_nonpositive_temperature(class_sarnet, temperature):
    with pytest.raises(ConfigError):
        sampling.sample_sarnet_classes(class_sarnet, 2, gen(0), temperature=temperature)


def test_class_sampler_rejects_regression_model():
    with pytest.raises(ConfigError):
        sampling.sample_sarnet_classes(SarNet(), 2, gen(0))


# ---------------------------------------------------------------- generate_autoregressive arguments

def test_generate_autoregressive_rejects_bad_arguments(vae8):
    x0 = torch.zeros(2, 784)
    z = torch.zeros(2, 8)
    with pytest.raises(ConfigError):
        sampling.generate_autoregressive(vae8.decoder, x0, z, first_patch=0)
    with pytest.raises(ConfigError):
        sampling.generate_autoregressive(vae8.decoder, x0, z, first_patch=50)
    with pytest.raises(ConfigError):
        sampling.generate_autoregressive(vae8.decoder, x0, z, method="beam")
    with pytest.raises(ConfigError):
        sampling.generate_autoregressive(vae8.decoder, torch.zeros(2, 783), z)
