"""The seeds' other generators (docs/baselines.md "Vanilla GAN", "DCGAN", "β-VAE", "What every baseline shares"): architectures as the seeds count them,
the GANs' two-player step inside the shared loop, the β-VAE against the conv VAE, the generate contract."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from sarnet.core.errors import ConfigError, TrainingDiverged
from sarnet.core.model_files import SUFFIX, save_model
from sarnet.core.training import TrainConfig, fit, seed_everything
from sarnet.families import KINDS, build_model, load_model, model_class
from sarnet.families.conv_vae import BetaVAE, ConvVAE
from sarnet.families.gans import DCGAN, GanMLP
from sarnet.families.pixel import PixelCNN, PixelRNN
from sarnet.families.vqvae import VQVAE
from test_models import _move_off_init

GAN_CONFIG = TrainConfig(epochs=2, batch_size=16, lr=2e-4, optimizer="adam", beta1=0.5, seed=7)
SAMPLING = {"batch_size": 64}


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def keras_count(module: torch.nn.Module) -> int:
    """Parameters as Keras's summary counts them: BatchNorm's running mean and variance included."""
    running = sum(b.numel() for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var")))
    return trainable(module) + running


def fives(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Blurry fives-like blobs in [0, 1]: enough structure for a discriminator to learn from."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(1, 28, 28)
    base[0, 5:8, 8:20] = 1
    base[0, 8:14, 8:11] = 1
    base[0, 13:16, 8:20] = 1
    base[0, 16:22, 17:20] = 1
    base[0, 21:24, 8:20] = 1
    shifted = torch.stack([torch.roll(base, (int(a), int(b)), (1, 2)) for a, b in torch.randint(-2, 3, (n, 2), generator=g)])
    return (shifted + 0.1 * torch.rand(n, 1, 28, 28, generator=g)).clamp(0, 1).view(n, 784)


# ---------------------------------------------------------------- architectures, as the seeds count them

def test_the_mlp_gan_has_the_seeds_parameter_counts():
    gan = GanMLP(100)
    assert trainable(gan.generator_net) == 1_489_936 and keras_count(gan.generator_net) == 1_493_520
    assert trainable(gan.discriminator) == 533_505


def test_the_seed003_dcgan_has_the_seeds_parameter_counts():
    gan = DCGAN("seed003", 25, 256)
    assert keras_count(gan.generator_net) == 685_121
    assert trainable(gan.discriminator) == 102_833


@pytest.mark.parametrize("make", [lambda: GanMLP(100), lambda: DCGAN("tf_tutorial", 100, 128),
                                  lambda: DCGAN("seed003", 25, 64)])
def test_every_generator_makes_28_by_28_images_and_the_discriminator_one_logit(make):
    torch.manual_seed(0)
    gan = make()
    images = gan.generator_net(gan.noise(5))
    assert images.shape == (5, 1, 28, 28)
    assert gan.discriminator(images).shape == (5, 1)


@pytest.mark.parametrize("make", [lambda: DCGAN("gan", 100, 128), lambda: DCGAN("seed003", 100, 256),
                                  lambda: DCGAN("tf_tutorial", 100, 100), lambda: GanMLP(0), lambda: GanMLP(True)])
def test_impossible_architectures_are_one_line_errors(make):
    with pytest.raises(ConfigError) as info:
        make()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the generate contract (docs/baselines.md "What every baseline shares")

@pytest.mark.parametrize("make", [lambda: GanMLP(100), lambda: DCGAN("tf_tutorial", 100, 32),
                                  lambda: DCGAN("seed003", 25, 32), lambda: BetaVAE(8, 2.0)])
def test_generate_is_seeded_float32_pixels(make):
    torch.manual_seed(1)
    model = make()
    a, b, c = (model.generate(20, seed, SAMPLING) for seed in (3, 3, 4))
    assert a.shape == (20, 28, 28) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


BATCHED = {  # every kind whose sampling has a batch_size, small (the generative XGBoost: tests/test_gen_xgboost.py)
    "conv_vae": lambda: ConvVAE(8),
    "beta_vae": lambda: BetaVAE(8, 2.0),
    "gan_mlp": lambda: GanMLP(100),
    "dcgan": lambda: DCGAN("tf_tutorial", 100, 32),
    "pixelcnn": lambda: PixelCNN(channels=6, blocks=2, levels=256),
    "pixelrnn_row": lambda: PixelRNN(hidden=3, layers=2, levels=256),
    "vqvae": lambda: VQVAE(code_dim=4, codebook_size=12, commitment=0.25, prior_channels=8, ae_epochs=1,
                           ae_lr_decay=0.95, prior_lr=3e-4),
}


def test_every_batched_kind_is_checked_at_several_batch_sizes():
    batched = {kind for kind in KINDS if kind != "gen_xgboost" and "batch_size" in model_class(kind).sampling_keys}
    assert batched == set(BATCHED)


@pytest.mark.parametrize("kind", BATCHED)
def test_a_generator_gives_the_same_images_at_any_batch_size(kind):
    """The FID sets are 10,000 images drawn `batch_size` at a time (100-2,000): with n > batch_size each
    image must be the one a single batch gives, so a set's FID does not depend on the batch size. Equal up
    to float32 rounding: a GEMM's kernel, so its last bit, depends on the rows in the batch; a draw that
    changed with the batch (noise or uniforms drawn batch by batch) moves pixels by far more."""
    torch.manual_seed(3)
    model = _move_off_init(BATCHED[kind]()).eval()
    settings = {"temperature": 1.0} if "temperature" in model.sampling_keys else {}
    whole = model.generate(11, 5, settings | {"batch_size": 64})
    assert whole.shape == (11, 28, 28) and len(whole.unique()) > 2
    for batch_size in (1, 4):
        batched = model.generate(11, 5, settings | {"batch_size": batch_size})
        assert torch.allclose(batched, whole, rtol=0, atol=1e-6), batch_size


def test_a_gan_samples_with_batchnorm_running_statistics():
    """In eval mode an image does not depend on the others of its batch."""
    torch.manual_seed(2)
    gan = GanMLP(100)
    gan.train()
    gan.generator_net(gan.noise(64))  # move the running statistics away from their start
    z = gan.noise(8)
    gan.eval()
    with torch.no_grad():
        assert torch.allclose(gan.generator_net(z)[:1], gan.generator_net(z[:1]), atol=1e-6)


# ---------------------------------------------------------------- the GAN step inside the shared loop

def train_gan(tmp_path, name, config=GAN_CONFIG, model=None, **kwargs):
    seed_everything(config.seed)
    model = model or GanMLP(100)
    history = fit(model, lambda m, b: m.loss(b), (fives(),), config, tmp_path / f"{name}.pt",
                  tmp_path / f"{name}{SUFFIX}", test_data=(fives(64, seed=1),), progress=False,
                  device=torch.device("cpu"), step_history_path=tmp_path / f"{name}_steps.csv",
                  history_path=tmp_path / f"{name}_history.csv", **kwargs)
    return model, history


def test_a_gan_trains_through_fit_deterministically_with_finite_losses_and_varied_images(tmp_path):
    a, history = train_gan(tmp_path, "a")  # 2 epochs × 16 steps: 32 iterations of the smoke test
    b, _ = train_gan(tmp_path, "b")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.extra["g_loss"]) and math.isfinite(r.test_loss)
               for r in history)
    with torch.no_grad():
        images = a.sample(64, torch.Generator().manual_seed(0), batch_size=64)
        assert images.std(dim=0).mean() > 0.01  # not one image
        probabilities = torch.sigmoid(a.discriminator(a.to_model_space(fives(16))))
        assert ((probabilities > 0) & (probabilities < 1)).all()


def test_a_gan_keeps_every_steps_losses_in_a_plots_csv(tmp_path):
    _, history = train_gan(tmp_path, "s")
    rows = list(csv.DictReader(open(tmp_path / "s_steps.csv")))
    assert len(rows) == 2 * 16 and [int(r["step"]) for r in rows] == list(range(1, 33))
    assert set(rows[0]) == {"step", "train_loss", "g_loss"}  # train_loss: the discriminator's
    epoch_rows = list(csv.DictReader(open(tmp_path / "s_history.csv")))
    assert {"train_loss", "test_loss", "g_loss"} <= set(epoch_rows[0])
    d_losses = [float(r["train_loss"]) for r in rows[:16]]  # batches of 16: the epoch mean is the steps' mean
    assert history[0].train_loss == pytest.approx(sum(d_losses) / 16, rel=1e-4)


def test_a_killed_gan_run_resumes_to_the_same_weights(tmp_path):
    whole, _ = train_gan(tmp_path, "whole", GAN_CONFIG)
    seed_everything(GAN_CONFIG.seed)
    model = GanMLP(100)
    calls = {"n": 0}

    def stop_in_epoch_two(m, batch):  # a GAN's loss_fn is its test loss: one call per epoch here
        calls["n"] += 1
        if calls["n"] > 1:  # killed at the end of epoch 2, after its checkpoint of epoch 1
            raise KeyboardInterrupt
        return m.loss(batch)

    with pytest.raises(KeyboardInterrupt):
        fit(model, stop_in_epoch_two, (fives(),), GAN_CONFIG, tmp_path / "resume.pt", tmp_path / f"resume{SUFFIX}",
            test_data=(fives(64, seed=1),), progress=False, device=torch.device("cpu"),
            step_history_path=tmp_path / "resume_steps.csv")
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["epoch"] == 1
    seed_everything(GAN_CONFIG.seed + 1)  # other starting weights: only the checkpoint can make the runs meet
    resumed = GanMLP(100)
    assert not torch.equal(next(resumed.parameters()), next(model.parameters()))
    test_losses = {"n": 0}

    def counting(m, b):  # the test loss: one call per epoch trained
        test_losses["n"] += 1
        return m.loss(b)

    fit(resumed, counting, (fives(),), GAN_CONFIG, tmp_path / "resume.pt", tmp_path / f"resume{SUFFIX}",
        test_data=(fives(64, seed=1),), progress=False, device=torch.device("cpu"),
        step_history_path=tmp_path / "resume_steps.csv")
    assert test_losses["n"] == 1  # epoch 2 only
    for pa, pb in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert len(list(csv.DictReader(open(tmp_path / "resume_steps.csv")))) == 32


def test_a_diverging_gan_stops_keeping_the_last_good_checkpoint(tmp_path):
    seed_everything(3)
    model = GanMLP(100)
    with pytest.raises(TrainingDiverged) as info:
        fit(model, lambda m, b: m.loss(b), (fives() * float("nan"),), GAN_CONFIG, tmp_path / "n.pt",
            tmp_path / f"n{SUFFIX}", progress=False, device=torch.device("cpu"))
    assert "epoch 1, batch 1" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / f"n{SUFFIX}").exists()


def test_a_gan_refuses_settings_its_step_does_not_use():
    with pytest.raises(ConfigError, match="Adam at a constant rate"):
        GanMLP(100).training_step(TrainConfig(epochs=1, batch_size=16, lr=0.1, optimizer="sgd"), 10)


def test_a_gan_model_file_round_trips(tmp_path):
    torch.manual_seed(4)
    gan = DCGAN("tf_tutorial", 100, 32)
    save_model(gan, tmp_path / f"d{SUFFIX}")
    loaded = load_model(tmp_path / f"d{SUFFIX}")
    assert isinstance(loaded, DCGAN) and loaded.model_args == gan.model_args
    assert torch.equal(loaded.generate(4, 0, SAMPLING), gan.generate(4, 0, SAMPLING))


# ---------------------------------------------------------------- β-VAE (docs/baselines.md "β-VAE")

def test_beta_one_trains_the_conv_vae_bit_for_bit(tmp_path):
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-3, optimizer="adam", reduction="sum", seed=5)
    models = []
    for name, make in (("conv", lambda: ConvVAE(8)), ("beta", lambda: BetaVAE(8, 1.0))):
        seed_everything(5)
        model = make()
        history = fit(model, lambda m, b: m.loss(b), (fives(),), config, tmp_path / f"{name}.pt",
                      tmp_path / f"{name}{SUFFIX}", progress=False, device=torch.device("cpu"))
        models.append((model, history[0].train_loss))
    (conv, conv_loss), (beta, beta_loss) = models
    assert conv_loss == beta_loss
    for pa, pb in zip(conv.parameters(), beta.parameters()):
        assert torch.equal(pa, pb)


def test_beta_vae_loss_is_bce_plus_beta_times_kl_by_hand():
    torch.manual_seed(6)
    model = BetaVAE(4, 2.0).double().eval()
    x = fives(3).double()
    recon, mu, logvar = model(x)
    bce = -(x * torch.log(recon.clamp(1e-7, 1 - 1e-7)) + (1 - x) * torch.log(1 - recon.clamp(1e-7, 1 - 1e-7))).sum(dim=1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)
    torch.testing.assert_close(model.loss((x,)), bce + 2.0 * kl, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(model.loss((x,)), F.binary_cross_entropy(recon, x, reduction="none").sum(1) + kl)


def test_a_two_dimensional_beta_vae_builds_and_samples():
    model = build_model("beta_vae", {"kl_weight": 4.0}, latent_dim=2)
    assert model.model_args == {"latent_dim": 2, "kl_weight": 4.0}
    assert model.generate(10, 0, SAMPLING).shape == (10, 28, 28)
    with pytest.raises(ConfigError):
        BetaVAE(8, 0.0)
