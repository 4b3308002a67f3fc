"""Whole models: autoregressive property through gradients, shapes, losses, quantisation, errors,
building from params sections, model files, sampling against a naive loop.

Patch membership and the expected connectivity are rebuilt here with plain Python loops; losses
are recomputed from their textbook formulas.
"""

import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from sarnet.core.errors import ConfigError
from sarnet.core.model_files import SUFFIX, save_model
from sarnet.families import build_model, load_model
from sarnet.families.base import vae_loss
from sarnet.families.conv_vae import ConvVAE
from sarnet.families.sarnet import SarNet
from sarnet.families.sarnet_vae import SarNetVAE
from sarnet.instruments.classifier import MnistClassifier
from sarnet.instruments.loader import load_instrument
from sarnet.masked.semidense import SemiDense
from reference import HIDDEN, PATCH, SAMPLING, reference_sample, sarnet, spread_vae, unit_patches, vae

N_PATCHES = 49  # 28×28 images in 4×4 patches


def model_may_see(o, k):
    """A whole SarNET: output patch 0 sees input patch 0 only; output patch o >= 1 sees patches 0..o−1."""
    return k == 0 if o == 0 else k < o


def expected_connectivity(out_patches, in_patches):
    table = torch.zeros(N_PATCHES, N_PATCHES, dtype=torch.bool)
    for o in range(N_PATCHES):
        for k in range(N_PATCHES):
            table[o, k] = model_may_see(o, k)
    return table[out_patches][:, in_patches]


def positive_weights(module, seed=0):
    """Every SemiDense weight in [0.5, 1]/fan_in and bias in [0, 0.1]: with positive inputs all ReLUs stay
    active and no sigmoid saturates, so the gradient is > 0 exactly where a path through the masks exists."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, SemiDense):
                m.weight.copy_((0.5 + 0.5 * torch.rand(m.weight.shape, generator=g)) / m.weight.shape[1])
                m.bias.copy_(0.1 * torch.rand(m.bias.shape, generator=g))


def batch_jacobian(f, x):
    """(out_units, B, in_units) -> per-sample Jacobians d f(x)_b / d x_b stacked as (B, out, in)."""
    j = torch.autograd.functional.jacobian(lambda a: f(a).sum(0), x, vectorize=True)
    return j.permute(1, 0, 2)


def make_vae(cls, latent_dim):
    """A VAE of either kind, the SarNET VAE with the thesis architecture."""
    return vae(latent_dim) if cls is SarNetVAE else cls(latent_dim)


def regression_model():
    torch.manual_seed(0)
    return sarnet().double()


def classification_stack():
    torch.manual_seed(1)
    return sarnet(classes=4).double().stack


def vae_decoder():
    torch.manual_seed(2)
    return vae(latent_dim=8).double().decoder


# ---------------------------------------------------------------- autoregressive property (full Jacobians)

def _check_full_jacobian(f, channels, x, exact_structure):
    j = batch_jacobian(f, x)  # (B, out, in)
    allowed = expected_connectivity(torch.tensor(unit_patches(channels)), torch.tensor(unit_patches(channels)))
    assert (j[:, ~allowed] == 0.0).all(), "an output patch depends on an input patch >= itself"
    if exact_structure:
        assert (j[:, allowed] > 0.0).all()
    else:
        # aggregate: output patch o >= 1 has some non-zero gradient towards earlier patches
        out_p, in_p = torch.tensor(unit_patches(channels)), torch.tensor(unit_patches(channels))
        agg = j.abs().sum(0)
        for o in range(1, N_PATCHES):
            assert agg[out_p == o][:, in_p < o].sum() > 0, o
        assert agg[out_p == 0][:, in_p == 0].sum() > 0


@pytest.mark.parametrize("exact", [False, True], ids=["default_init", "positive_weights"])
def test_sarnet_regression_autoregressive(exact):
    model = regression_model()
    if exact:
        positive_weights(model)
    x = torch.rand(4, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _check_full_jacobian(model, 1, x, exact)


@pytest.mark.parametrize("exact", [False, True], ids=["default_init", "positive_weights"])
def test_vae_decoder_autoregressive_and_sees_z(exact):
    decoder = vae_decoder()
    if exact:
        positive_weights(decoder)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 784, dtype=torch.float64, generator=g)
    z = torch.randn(4, 8, dtype=torch.float64, generator=g)
    if exact:
        z = z.abs()
    _check_full_jacobian(lambda a: decoder(a, z), 1, x, exact)
    jz = batch_jacobian(lambda b: decoder(x, b), z)  # (B, 784, 8)
    out_p = torch.tensor(unit_patches(1))
    for o in range(N_PATCHES):
        assert jz[:, out_p == o].abs().sum() > 0, f"output patch {o} ignores z"
    if exact:
        assert (jz > 0).all()


@pytest.mark.parametrize("exact", [False, True], ids=["default_init", "positive_weights"])
def test_classification_stack_autoregressive(exact):
    """4 one-hot channels: per-output-patch vector-Jacobian products with random projections."""
    stack = classification_stack()
    if exact:
        positive_weights(stack)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 4 * 784, dtype=torch.float64, generator=g).requires_grad_(True)
    out = stack(x)
    assert out.shape == (3, 4 * 784)
    out_p, in_p = torch.tensor(unit_patches(4)), torch.tensor(unit_patches(4))
    for o in range(N_PATCHES):
        v = torch.rand(3, int((out_p == o).sum()), dtype=torch.float64, generator=g) + 0.5  # positive projection
        (grad,) = torch.autograd.grad(out[:, out_p == o], x, v, retain_graph=True)
        forbidden = torch.tensor([not model_may_see(o, int(k)) for k in in_p])
        assert (grad[:, forbidden] == 0.0).all(), f"output patch {o} sees a forbidden input patch"
        if exact:
            assert (grad[:, ~forbidden] > 0.0).all(), o
        else:
            assert grad[:, ~forbidden].abs().sum() > 0, o


def test_sarnet_classification_forward_is_stack_of_one_hot():
    torch.manual_seed(6)
    model = sarnet(classes=4)
    x = torch.randint(0, 256, (3, 784)).float() / 255
    classes = torch.div((x * 255).round().long(), 64, rounding_mode="floor")
    one_hot = torch.cat([(classes == c).float() for c in range(4)], dim=1)  # channel-major
    out = model(x)
    assert out.shape == (3, 4, 784)
    torch.testing.assert_close(out, model.stack(one_hot).view(3, 4, 784))


# ---------------------------------------------------------------- shapes and ranges

@pytest.mark.parametrize("cls,latent", [(SarNetVAE, 8), (SarNetVAE, 32), (ConvVAE, 8), (ConvVAE, 16)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_vae_forward_shapes_and_range(cls, latent, training):
    torch.manual_seed(7)
    model = make_vae(cls, latent).train(training)
    x = torch.rand(5, 784)
    recon, mu, logvar = model(x)
    assert recon.shape == (5, 784)
    assert mu.shape == (5, latent) and logvar.shape == (5, latent)
    assert ((recon >= 0) & (recon <= 1)).all()
    assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()


@pytest.mark.parametrize("cls", [SarNetVAE, ConvVAE])
def test_vae_eval_deterministic_train_stochastic(cls):
    torch.manual_seed(8)
    model = make_vae(cls, 8)
    x = torch.rand(4, 784)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_sarnet_forward_shapes():
    x = torch.rand(3, 784)
    assert sarnet(classes=4)(x).shape == (3, 4, 784)
    assert sarnet()(x).shape == (3, 784)


# ---------------------------------------------------------------- losses

def reference_vae_loss(x, recon, mu, logvar):
    bce = -(x * torch.log(recon) + (1 - x) * torch.log(1 - recon)).sum(dim=1)
    kl = -0.5 * (1 + logvar - mu**2 - torch.exp(logvar)).sum(dim=1)
    return bce + kl


def test_sarnet_vae_loss_matches_independent_formula():
    torch.manual_seed(9)
    model = vae(8).double().eval()
    x = torch.rand(6, 784, dtype=torch.float64)
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        recon = model.decoder(x, mu)  # eval: z = mu, teacher forcing with x
        loss = model.loss((x,))
    assert loss.shape == (6,)
    torch.testing.assert_close(loss, reference_vae_loss(x, recon, mu, logvar), rtol=1e-9, atol=1e-9)


def test_conv_vae_loss_matches_independent_formula():
    torch.manual_seed(10)
    model = ConvVAE(8).double().eval()
    x = torch.rand(6, 784, dtype=torch.float64)
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        recon = model.decode(None, mu)
        loss = model.loss((x,))
    torch.testing.assert_close(loss, reference_vae_loss(x, recon, mu, logvar), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls", [SarNetVAE, ConvVAE])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_vae_loss_per_sample_finite_nonnegative(cls, training):
    torch.manual_seed(11)
    model = make_vae(cls, 8).train(training)
    x = (torch.rand(5, 784) > 0.5).float()  # binary pixels: BCE is then a proper non-negative NLL
    loss = model.loss((x,))
    assert loss.shape == (5,)
    assert torch.isfinite(loss).all()
    assert (loss >= 0).all()
    x = torch.rand(5, 784)
    loss = model.loss((x,))
    assert loss.shape == (5,) and torch.isfinite(loss).all() and (loss >= 0).all()


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_sarnet_regression_loss_matches_independent_formula(power):
    torch.manual_seed(12)
    model = sarnet(loss_power=power).double()
    with torch.no_grad():  # outputs near the data, so SSIM is not trivially ~0
        model.stack.layers[-1].bias.add_(0.3)
    x = torch.rand(4, 784, dtype=torch.float64)
    with torch.no_grad():
        out = model.stack(x)
        loss = model.loss((x,))
        s = ssim(out.view(4, 1, 28, 28), x.view(4, 1, 28, 28), data_range=1, size_average=False)
    expected = (out - x).abs().pow(power).mean(dim=1) + (1 - s)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)


def test_sarnet_regression_loss_of_identity_output_is_zero_part():
    """Sanity of the reference: if the output equalled x, both terms would vanish."""
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    assert torch.allclose(ssim(x, x, data_range=1, size_average=False), torch.ones(2, dtype=torch.float64))


def test_sarnet_classification_loss_is_mean_cross_entropy():
    torch.manual_seed(13)
    model = sarnet(classes=4)
    k = torch.randint(0, 256, (3, 784))
    x = k.float() / 255
    with torch.no_grad():
        logits = model(x)  # (B, 4, 784)
        loss = model.loss((x,))
    target = k // 64
    logp = torch.log_softmax(logits, dim=1)
    expected = -logp.gather(1, target[:, None, :]).squeeze(1).mean(dim=1)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, expected)


def test_sarnet_classification_works_in_double():
    """Like every other model, a classification SarNET converted with .double() must run forward and loss."""
    torch.manual_seed(14)
    model = sarnet(classes=4)
    x = torch.randint(0, 256, (3, 784)).float() / 255
    with torch.no_grad():
        ref = model(x)
        model.double()
        out = model(x.double())
        loss = model.loss((x.double(),))
    assert out.dtype == torch.float64 and loss.dtype == torch.float64
    torch.testing.assert_close(out, ref.double(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- quantisation

@pytest.mark.parametrize("classes", [2, 4, 8])
def test_quantise_matches_floor_formula(classes):
    model = sarnet(classes=classes)
    x = torch.tensor([k / 255 for k in range(256)], dtype=torch.float32)
    expected = torch.tensor([(k * 255 // 255) // (256 // classes) for k in range(256)])
    got = model.quantise(x)
    assert torch.equal(got.long(), expected)
    assert got.min() == 0 and got.max() == classes - 1


# ---------------------------------------------------------------- constructor errors

@pytest.mark.parametrize("make", [
    lambda: SarNetVAE(latent_dim=0, hidden=HIDDEN, patch=PATCH),
    lambda: SarNetVAE(latent_dim=-3, hidden=HIDDEN, patch=PATCH),
    lambda: ConvVAE(latent_dim=0),
    lambda: SarNet(HIDDEN, PATCH, classes=257, loss_power=1.0),
    lambda: SarNet(HIDDEN, PATCH, classes=-2, loss_power=1.0),
    lambda: SarNet([[2, 14]], PATCH, classes=0, loss_power=1.0),
], ids=["sarnetvae_L0", "sarnetvae_Lneg", "convvae_L0", "sarnet_c257", "sarnet_cneg", "sarnet_bad_hidden"])
def test_bad_constructor_args_raise(make):
    with pytest.raises(ConfigError):
        make()


# ---------------------------------------------------------------- building from params.yaml sections

def test_build_model_takes_the_architecture_from_the_section_and_requires_it():
    section = {"hidden": HIDDEN, "patch": PATCH, "classes": 4, "loss_power": 2.0, "ssim": False,
               "epochs": 3}  # epochs: training's
    model = build_model("sarnet", section)
    assert isinstance(model, SarNet) and model.classes == 4 and model.loss_power == 2.0
    assert model.model_args == {"hidden": HIDDEN, "patch": PATCH, "classes": 4, "loss_power": 2.0, "ssim": False}
    vae_model = build_model("sarnet_vae", {"hidden": HIDDEN, "patch": PATCH}, latent_dim=16)
    assert isinstance(vae_model, SarNetVAE) and vae_model.latent_dim == 16
    assert isinstance(build_model("conv_vae", {}, latent_dim=8), ConvVAE)
    with pytest.raises(ConfigError, match="'loss_power'"):
        build_model("sarnet", {"hidden": HIDDEN, "patch": PATCH, "classes": 0})
    with pytest.raises(ConfigError, match="'hidden'"):
        build_model("sarnet_vae", {"patch": PATCH}, latent_dim=8)
    with pytest.raises(ConfigError, match="latent"):
        build_model("sarnet_vae", {"hidden": HIDDEN, "patch": PATCH})
    with pytest.raises(ConfigError, match="unknown model kind"):
        build_model("gan", {})


# ---------------------------------------------------------------- model files

ROUND_TRIP = {
    "sarnet": lambda: sarnet(),
    "sarnet_classes": lambda: sarnet(classes=4),
    "sarnet_other_arch": lambda: sarnet(classes=0, loss_power=2.0, hidden=[[1, 7, 1], [3, 14, 2]]),
    "sarnet_vae": lambda: vae(8),
    "conv_vae": lambda: ConvVAE(8),
    "classifier": lambda: MnistClassifier(channels=[4, 8], hidden=16, dropout=0.1),
}


def _outputs(model, x):
    """Every tensor a model computes from x in eval mode (the VAEs: reconstruction, μ, log σ²)."""
    if isinstance(model, MnistClassifier):
        x = x.view(-1, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, tuple) else (out,)


def _move_off_init(model):
    """Biases and batch-norm statistics start as constants: move them, so a file that lost any would show."""
    g = torch.Generator().manual_seed(22)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.mul_(1.5)
                m.num_batches_tracked.add_(7)
    return model


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_every_model_kind_round_trips_through_its_file(name, tmp_path):
    torch.manual_seed(21)
    model = _move_off_init(ROUND_TRIP[name]()).eval()
    path = tmp_path / f"{name}{SUFFIX}"
    save_model(model, path)
    loaded = (load_instrument if name == "classifier" else load_model)(path)  # class, arguments, weights from the file alone
    assert type(loaded) is type(model)
    assert loaded.model_args == model.model_args and not loaded.training
    assert list(loaded.state_dict()) == list(model.state_dict())
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    x = torch.rand(3, 784, generator=torch.Generator().manual_seed(23))
    for a, b in zip(_outputs(model, x), _outputs(loaded, x), strict=True):
        assert torch.equal(a, b)


def test_a_loaded_generator_samples_like_the_saved_one(tmp_path):
    model = spread_vae(8, seed=24).eval()
    save_model(model, tmp_path / f"vae{SUFFIX}")
    loaded = load_model(tmp_path / f"vae{SUFFIX}", kind="sarnet_vae")
    settings = SAMPLING["sarnet_vae"]
    a, b = loaded.generate(4, 25, settings), model.generate(4, 25, settings)
    assert (a > 0).any() and torch.equal(a, b)


# ---------------------------------------------------------------- SarNET VAE sampling against a naive loop

@pytest.mark.parametrize("method", ["incremental", "naive"])
def test_vae_sample_from_a_seeded_generator_equals_the_naive_loop(method):
    """z ~ N(0, I) drawn from the caller's generator, then patches 1..48 in order by the plain loop
    (reference.py): the decoder on the whole image, pixels < threshold -> 0."""
    model = spread_vae(8, seed=26)
    threshold = SAMPLING["sarnet_vae"]["threshold"]
    got = model.sample(6, torch.Generator().manual_seed(27), threshold=threshold, method=method)
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(27))
    expected = reference_sample(model.decoder, z, threshold)
    assert (expected > 0).any() and (expected == 0).any()
    assert (got - expected).abs().max().item() <= 1e-5


def test_a_bf16_forward_gives_float32_losses_summed_in_float32():
    """Under a bf16 autocast the VAE loss sums 784 BCE terms in float32, not in bf16."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 784, generator=g)
    recon = 0.05 + 0.9 * torch.rand(4, 784, generator=g)  # away from the clamp at 0 and 1, bf16-rounded or not
    mu, logvar = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    low = [t.bfloat16() for t in (recon, mu, logvar)]
    loss = vae_loss(low[0], x, low[1], low[2])
    assert loss.dtype == torch.float32
    up = [t.double() for t in low]  # the bf16 values, summed in float64 by the independent formula
    torch.testing.assert_close(loss.double(), reference_vae_loss(x.double(), *up), rtol=1e-6, atol=1e-4)
