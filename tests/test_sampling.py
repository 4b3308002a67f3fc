"""Patch-by-patch sampling: SarNET VAE sampling and inpainting (models.SarNetVAE), the simple SarNET
samplers (models.SarNet) and the autoregressive loop under them (layers.generate_autoregressive).

"naive" and "incremental" must give the same images; a plain loop over patches (reference.py)
is the independent reference.
"""

import pytest
import torch

from sarnet.core.errors import ConfigError
from sarnet.masked.semidense import generate_autoregressive
from reference import SAMPLING, reference_noise_sample, reference_sample, sarnet, spread_vae, unit_patches

THRESHOLD = SAMPLING["sarnet_vae"]["threshold"]  # 0.105
INPAINT = {k: SAMPLING["inpaint"][k] for k in ("z_scale", "threshold")}  # threshold 0.15
NOISE = {k: SAMPLING["sarnet"][k] for k in ("alpha_max", "p_earlier", "threshold", "refine")}
TEMPERATURE = SAMPLING["sarnet"]["temperature"]  # 0.3

PATCH = torch.tensor(unit_patches())


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- SarNET VAE sampling

@pytest.fixture(scope="module")
def vae8():
    return spread_vae(8)


@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_sample_shape_range_patch0_threshold(vae8, method):
    img = vae8.sample(6, generator=gen(0), threshold=THRESHOLD, method=method)
    assert img.shape == (6, 28, 28)
    assert ((img >= 0) & (img <= 1)).all()
    assert (img[:, 0:4, 0:4] == 0).all(), "patch 0 must stay black"
    assert not ((img > 0) & (img < THRESHOLD)).any(), "pixels below the threshold must be zeroed"
    nonzero = (img > 0).float().mean().item()
    assert 0.2 < nonzero < 0.95, f"fixture should straddle the threshold, got {nonzero:.2f} non-zero"


def test_sample_reproducible_and_seed_dependent(vae8):
    a = vae8.sample(4, generator=gen(1), threshold=THRESHOLD)
    b = vae8.sample(4, generator=gen(1), threshold=THRESHOLD)
    c = vae8.sample(4, generator=gen(2), threshold=THRESHOLD)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # different images within one batch too
    assert not torch.equal(a[0], a[1])


def test_sample_keeps_training_flag(vae8):
    vae8.train()
    vae8.sample(2, generator=gen(3), threshold=THRESHOLD)
    assert vae8.training and vae8.decoder.training
    vae8.eval()
    vae8.sample(2, generator=gen(3), threshold=THRESHOLD)
    assert not vae8.decoder.training


@pytest.mark.parametrize("latent_dim", [8, 128])
def test_incremental_equals_naive_float32(latent_dim):
    model = spread_vae(latent_dim, seed=latent_dim)
    inc = model.sample(16, generator=gen(4), threshold=THRESHOLD, method="incremental")
    naive = model.sample(16, generator=gen(4), threshold=THRESHOLD, method="naive")
    assert (inc > 0).any() and (inc == 0).any()
    assert (inc - naive).abs().max().item() <= 1e-5


def test_incremental_equals_naive_float64():
    model = spread_vae(8, seed=5).double()
    inc = model.sample(16, generator=gen(5), threshold=THRESHOLD, method="incremental")
    naive = model.sample(16, generator=gen(5), threshold=THRESHOLD, method="naive")
    assert inc.dtype == torch.float64
    assert (inc > 0).any() and (inc == 0).any()
    assert (inc - naive).abs().max().item() <= 1e-12


def test_incremental_matches_independent_loop(vae8):
    z = torch.randn(8, 8, generator=gen(6))
    got = vae8.sample(8, z=z, threshold=THRESHOLD, method="incremental")
    ref = reference_sample(vae8.decoder, z, THRESHOLD)
    assert (ref > 0).any()
    assert (got - ref).abs().max().item() <= 1e-5


def test_independent_loop_float64_and_explicit_z_ignores_generator():
    model = spread_vae(16, seed=7).double()
    z = torch.randn(4, 16, generator=gen(7), dtype=torch.float64)
    a = model.sample(4, z=z, generator=gen(100), threshold=THRESHOLD)
    b = model.sample(4, z=z, generator=gen(200), threshold=THRESHOLD)
    assert torch.equal(a, b)
    assert (a - reference_sample(model.decoder, z, THRESHOLD)).abs().max().item() <= 1e-12


# ---------------------------------------------------------------- inpainting

@pytest.fixture(scope="module")
def real_images():
    g = gen(8)
    return torch.rand(2, 28, 28, generator=g) * (torch.rand(2, 28, 28, generator=g) > 0.4)


def test_inpaint_keeps_patches_and_varies_styles(vae8, real_images):
    out = vae8.inpaint(real_images, gen(9), keep_patches=24, n_styles=3, **INPAINT)
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
    a = vae8.inpaint(real_images, gen(10), keep_patches=24, n_styles=3, **INPAINT, method="incremental")
    b = vae8.inpaint(real_images, gen(10), keep_patches=24, n_styles=3, **INPAINT, method="naive")
    c = vae8.inpaint(real_images, gen(10), keep_patches=24, n_styles=3, **INPAINT, method="incremental")
    assert torch.equal(a, c)
    assert (a - b).abs().max().item() <= 1e-5


def test_inpaint_conditions_on_kept_patches(vae8, real_images):
    """Same seed (same z), different kept content -> different completions."""
    a = vae8.inpaint(real_images[:1], gen(11), keep_patches=24, n_styles=1, **INPAINT)
    b = vae8.inpaint(real_images[1:], gen(11), keep_patches=24, n_styles=1, **INPAINT)
    kept = PATCH < 24
    assert not torch.equal(a.reshape(-1)[~kept], b.reshape(-1)[~kept])


# ---------------------------------------------------------------- simple SarNET samplers

@pytest.fixture(scope="module")
def regression_sarnet():
    torch.manual_seed(12)
    model = sarnet()
    with torch.no_grad():  # outputs below 0.15, in between, and above 1
        for layer in model.stack.layers:
            layer.weight.mul_(1.8)
        model.stack.layers[-1].bias.uniform_(-0.5, 1.6)
    return model


def test_noise_sampler_shape_values_reproducible(regression_sarnet):
    a = regression_sarnet.sample_noise(5, gen(13), **NOISE)
    b = regression_sarnet.sample_noise(5, gen(13), **NOISE)
    c = regression_sarnet.sample_noise(5, gen(14), **NOISE)
    assert a.shape == (5, 28, 28)
    assert ((a == 0) | ((a >= 0.15) & (a <= 1))).all()
    assert (a == 0).any() and (a == 1).any() and ((a > 0.15) & (a < 1)).any(), "fixture should exercise every branch"
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", ["incremental", "naive"])
@pytest.mark.parametrize("refine", [False, True])
def test_noise_sampler_equals_a_plain_patch_by_patch_loop(regression_sarnet, refine, method):
    """The sampler behind Table 4.1's simple SarNET row against reference.py's loop over patches and images:
    the whole stack at every step ("naive") and only the units of patches <= i+1 ("incremental")."""
    settings = NOISE | {"refine": refine}
    images = regression_sarnet.sample_noise(6, gen(16), **settings, method=method)
    expected = reference_noise_sample(regression_sarnet, 6, 16, **settings)
    assert ((expected > 0.15) & (expected < 1)).any()  # the loop's images are not all black or white
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("patch, hidden", [(4, [[2, 14, 2], [3, 28, 4]]), (7, [[2, 16, 4]]), (14, [[1, 8, 4], [2, 4, 2]])])
def test_prefix_forward_is_the_stacks_output_of_one_patch(patch, hidden):
    """For every patch k: the stack's full forward pass (float64), its output units of patch k, against
    PrefixForward on the same input in patch-major order; different geometries on each side."""
    from sarnet.families.sarnet import PrefixForward
    from sarnet.masked.semidense import LayerShape, SemiDenseStack

    torch.manual_seed(5)
    shapes = [LayerShape(1, 28, patch), *(LayerShape(*h) for h in hidden), LayerShape(1, 28, patch)]
    stack = SemiDenseStack(shapes, ["relu"] * len(hidden) + ["none"]).double()
    prefix = PrefixForward(stack)
    x = torch.rand(5, 784, dtype=torch.float64)
    full = stack(x)
    patch_of = stack.layers[0].in_patch_index
    for k in range(stack.n_patches):
        units = (patch_of == k).nonzero().squeeze(1)  # ascending: the within-patch order of patch-major units
        torch.testing.assert_close(prefix(x[:, prefix.order], k), full[:, units], rtol=0, atol=1e-12)
    assert prefix.in_offsets == [i * patch * patch for i in range(stack.n_patches + 1)]

def test_noise_sampler_refine_is_one_clean_pass(regression_sarnet):
    raw = regression_sarnet.sample_noise(4, gen(15), **(NOISE | {"refine": False}))
    refined = regression_sarnet.sample_noise(4, gen(15), **(NOISE | {"refine": True}))
    assert (raw[:, 0:4, 0:4] == 0).all(), "without refining, patch 0 is never written"
    assert ((raw == 0) | ((raw >= 0.15) & (raw <= 1))).all()
    with torch.no_grad():
        out = regression_sarnet.stack(raw.reshape(4, 784))
    expected = torch.where(out < 0.15, torch.zeros_like(out), out).clamp(max=1.0).view(4, 28, 28)
    torch.testing.assert_close(refined, expected, rtol=0, atol=1e-6)


def test_noise_sampler_rejects_classification_model():
    with pytest.raises(ConfigError):
        sarnet(classes=4).sample_noise(2, gen(0), **NOISE)


@pytest.fixture(scope="module")
def class_sarnet():
    torch.manual_seed(16)
    return sarnet(classes=4)


@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_class_sampler_values(class_sarnet, method):
    img = class_sarnet.sample_classes(3, gen(17), temperature=TEMPERATURE, method=method)
    assert img.shape == (3, 28, 28)
    allowed = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    close = (img.reshape(-1, 1) - allowed).abs() < 1e-6
    assert close.any(dim=1).all()
    for v in allowed:  # all four classes occur (logits of a fresh model are near-uniform)
        assert ((img - v).abs() < 1e-6).any()


def test_class_sampler_incremental_equals_naive(class_sarnet):
    a = class_sarnet.sample_classes(4, gen(18), temperature=TEMPERATURE, method="incremental")
    b = class_sarnet.sample_classes(4, gen(18), temperature=TEMPERATURE, method="naive")
    c = class_sarnet.sample_classes(4, gen(19), temperature=TEMPERATURE, method="incremental")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_class_sampler_rejects_nonpositive_temperature(class_sarnet, temperature):
    with pytest.raises(ConfigError):
        class_sarnet.sample_classes(2, gen(0), temperature=temperature)


def test_class_sampler_rejects_regression_model():
    with pytest.raises(ConfigError):
        sarnet().sample_classes(2, gen(0), temperature=TEMPERATURE)


def test_sample_dispatches_to_the_noise_or_class_sampler(regression_sarnet, class_sarnet):
    """SarNet.sample takes the whole `sampling.sarnet` section and uses the sampler of the model's variant."""
    settings = SAMPLING["sarnet"]
    assert torch.equal(regression_sarnet.sample(3, gen(20), **settings), regression_sarnet.sample_noise(3, gen(20), **NOISE))
    assert torch.equal(class_sarnet.sample(3, gen(21), **settings),
                       class_sarnet.sample_classes(3, gen(21), temperature=TEMPERATURE))


# ---------------------------------------------------------------- generate_autoregressive arguments

def test_generate_autoregressive_rejects_bad_arguments(vae8):
    x0 = torch.zeros(2, 784)
    z = torch.zeros(2, 8)
    with pytest.raises(ConfigError):
        generate_autoregressive(vae8.decoder, x0, z, first_patch=0, threshold=THRESHOLD)
    with pytest.raises(ConfigError):
        generate_autoregressive(vae8.decoder, x0, z, first_patch=50, threshold=THRESHOLD)
    with pytest.raises(ConfigError):
        generate_autoregressive(vae8.decoder, x0, z, threshold=THRESHOLD, method="beam")
    with pytest.raises(ConfigError):
        generate_autoregressive(vae8.decoder, torch.zeros(2, 783), z, threshold=THRESHOLD)


def test_generate_autoregressive_needs_a_threshold_or_an_emit_rule(vae8):
    with pytest.raises(ConfigError, match="threshold or an emit"):
        generate_autoregressive(vae8.decoder, torch.zeros(2, 784), torch.zeros(2, 8))
