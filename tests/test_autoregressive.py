"""PixelCNN, PixelRNN (Row LSTM) and the VQ-VAE with its PixelCNN prior (docs/baselines.md "PixelCNN", "VQ-VAE with a PixelCNN prior", "PixelRNN (Row LSTM)"):
causality by autograd Jacobian, cached samplers equal to the naive loop on the same draws, likelihood
bookkeeping, the VQ-VAE's quantiser and gradients."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sarnet.core.errors import ConfigError
from sarnet.core.model_files import SUFFIX
from sarnet.core.training import TrainConfig, fit, seed_everything
from sarnet.families.pixel import PixelCNN, PixelRNN, RowLSTM
from sarnet.families.vqvae import GRID, VQVAE, CodePrior, OneHotMaskedConv, PhasedStep, perplexity
from sarnet.masked.conv import MaskedConv2d, causal_mask, draw_levels

from reference import reference_row_lstm_layer

SAMPLING = {"batch_size": 3, "temperature": 1.0}


def small_pixelcnn(seed: int = 0) -> PixelCNN:
    torch.manual_seed(seed)
    return PixelCNN(channels=6, blocks=2, levels=256).double().eval()


def small_gated_pixelcnn(seed: int = 0) -> PixelCNN:
    torch.manual_seed(seed)
    return PixelCNN(channels=5, blocks=2, levels=256, gated=True).double().eval()


def small_pixelrnn(seed: int = 0) -> PixelRNN:
    torch.manual_seed(seed)
    return PixelRNN(hidden=3, layers=2, levels=256).double().eval()


def small_vqvae(seed: int = 0) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(code_dim=4, codebook_size=12, commitment=0.25, prior_channels=8, ae_epochs=1, ae_lr_decay=0.95,
                 prior_lr=3e-4)


# ---------------------------------------------------------------- masks and causality

@pytest.mark.parametrize("k", [1, 3, 7])
def test_mask_a_and_b_count_their_taps(k):
    assert causal_mask(k, "A").sum() == (k * k - 1) // 2
    assert causal_mask(k, "B").sum() == (k * k + 1) // 2


POSITIONS = sorted({0, 1, 27, 28, 29, 55, 56, 400, 405, 755, 782, 783} | set(range(100, 784, 97)))


@pytest.mark.parametrize("make", [small_pixelcnn, small_gated_pixelcnn, small_pixelrnn],
                         ids=["pixelcnn", "gated_pixelcnn", "pixelrnn_row"])
def test_each_pixels_logits_depend_only_on_earlier_pixels(make):
    """Autograd Jacobian on random weights: no gradient from pixel i itself or any later one; the left
    neighbour and the pixel above do count (both directions of a Row LSTM's context); pixel 0 sees nothing."""
    model = make()
    for i in POSITIONS:
        # eight inputs at once: a ReLU that is off for one input cannot hide a connection from all of them
        x = torch.rand(8, 784, dtype=torch.float64, requires_grad=True)
        r, c = divmod(i, 28)
        model.logits(x)[:, :, r, c].sum().backward()
        grad = x.grad
        assert torch.all(grad[:, i:] == 0), f"pixel {i} sees a later pixel or itself"
        if c > 0:
            assert grad[:, i - 1].abs().sum() > 0, f"pixel {i} does not see its left neighbour"
        if r > 0:
            assert grad[:, i - 28].abs().sum() > 0, f"pixel {i} does not see the pixel above"
    x = torch.rand(1, 784, dtype=torch.float64, requires_grad=True)
    model.logits(x)[0, :, 0, 0].sum().backward()
    assert torch.all(x.grad == 0)


def _seen(model, r: int, c: int) -> set[tuple[int, int]]:
    """The pixels whose value moves the logits at (r, c), by autograd over eight random images."""
    x = torch.rand(8, 784, dtype=torch.float64, requires_grad=True)
    model.logits(x)[:, :, r, c].sum().backward()
    return {divmod(i, 28) for i in (x.grad.abs().sum(0) > 0).nonzero().flatten().tolist()}


@pytest.mark.parametrize("blocks", [1, 3])
def test_the_gated_stacks_see_the_whole_window_above_and_to_the_left_and_nothing_else(blocks):
    """By hand: the first layer reads rows r − 4..r − 1 (columns c ± 3) and the 3 pixels to the left; each
    block adds one row up, one column each side above, one column to the left. No blind spot: the plain
    stack (7×7 mask A, then 3×3 blocks) never sees (r − 1, c + 4)."""
    torch.manual_seed(2)
    model = PixelCNN(channels=5, blocks=blocks, levels=4, gated=True).double().eval()
    for r, c in [(14, 13), (6, 2), (27, 27), (1, 25)]:
        window = {(y, x) for y in range(r - 4 - blocks, r) for x in range(c - 3 - blocks, c + 4 + blocks)}
        window |= {(r, x) for x in range(c - 3 - blocks, c)}
        assert _seen(model, r, c) == {(y, x) for y, x in window if 0 <= y < 28 and 0 <= x < 28}
    plain = small_pixelcnn(2)
    assert (13, 17) in _seen(model, 14, 13) and (13, 17) not in _seen(plain, 14, 13)


def test_the_prior_at_a_code_position_ignores_that_code_and_every_later_one():
    prior = small_vqvae().prior.double().eval()
    torch.manual_seed(1)
    codes = torch.randint(0, 12, (2, GRID, GRID))
    base = prior(codes)
    for i in range(GRID * GRID):
        changed = codes.clone().view(2, -1)
        changed[:, i:] = torch.randint(0, 12, (2, GRID * GRID - i))
        out = prior(changed.view(2, GRID, GRID))
        r, c = divmod(i, GRID)
        assert torch.equal(out[:, :, r, c], base[:, :, r, c]), f"code position {i}"
    assert torch.equal(prior(torch.zeros_like(codes))[:, :, 0, 0], base[:, :, 0, 0])  # position 0: a constant


def test_the_lookup_first_layer_equals_the_one_hot_masked_convolution():
    torch.manual_seed(2)
    layer = OneHotMaskedConv(10, 5)
    codes = torch.randint(0, 10, (3, GRID, GRID))
    one_hot = F.one_hot(codes, 10).permute(0, 3, 1, 2).float()
    expected = F.conv2d(one_hot, layer.conv.weight * layer.conv.mask, layer.conv.bias, padding=3)
    torch.testing.assert_close(layer(codes), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- cached samplers = naive loops

def uniforms(n: int, steps: int, seed: int) -> torch.Tensor:
    return torch.rand(n, steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("make, seed, temperature", [(small_pixelcnn, 3, 1.0), (small_pixelcnn, 4, 1.0),
                                                     (small_pixelcnn, 5, 1.0), (small_gated_pixelcnn, 3, 0.9),
                                                     (small_gated_pixelcnn, 4, 0.9)],
                         ids=["plain-3", "plain-4", "plain-5", "gated-3", "gated-4"])
def test_cached_pixelcnn_sampler_equals_the_naive_loop(make, seed, temperature):
    """Both stacks: the plain one position by position, the gated one row by row then pixel by pixel."""
    model = make(seed)
    u = uniforms(3, 784, seed)
    cached = model.sample_levels(u, temperature, "cached")
    assert torch.equal(cached, model.sample_levels(u, temperature, "naive"))
    assert not torch.equal(cached, model.sample_levels(uniforms(3, 784, seed + 50), temperature, "cached"))


@pytest.mark.parametrize("seed", [6, 7])
def test_cached_row_lstm_sampler_equals_the_naive_loop(seed):
    model = small_pixelrnn(seed)
    u = uniforms(2, 784, seed)
    assert torch.equal(model.sample_levels(u, 0.8, "cached"), model.sample_levels(u, 0.8, "naive"))


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_cached_prior_sampler_equals_the_naive_loop(seed):
    prior = small_vqvae(seed).prior.double().eval()
    u = uniforms(4, GRID * GRID, seed)
    assert torch.equal(prior.sample_codes(u, 1.0, "cached"), prior.sample_codes(u, 1.0, "naive"))


def test_draws_follow_the_inverse_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]] * 5, dtype=torch.float64))
    u = torch.tensor([0.0, 0.19, 0.21, 0.49, 0.99], dtype=torch.float64)
    assert draw_levels(logits, u, 1.0).tolist() == [0, 0, 1, 1, 2]


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_draws_follow_the_inverse_cdf_of_the_tempered_softmax(temperature):
    """p ∝ p₀^(1/T) for logits log p₀, written out by hand: T = 0.5 sharpens (0.2, 0.3, 0.5) to
    (4, 9, 25)/38, T = 2 flattens it to (√.2, √.3, √.5)/Σ; the draw at u is the first class whose
    cumulative probability exceeds u."""
    base = [0.2, 0.3, 0.5]
    weights = [p ** (1 / temperature) for p in base]
    cdf, total = [], 0.0
    for w in weights:
        total += w / sum(weights)
        cdf.append(total)
    u = torch.tensor([0.01, cdf[0] - 0.01, cdf[0] + 0.01, cdf[1] - 0.01, cdf[1] + 0.01], dtype=torch.float64)
    logits = torch.log(torch.tensor([base] * len(u), dtype=torch.float64))
    assert draw_levels(logits, u, temperature).tolist() == [0, 0, 1, 1, 2]
    assert draw_levels(logits, u, 1.0).tolist() != [0, 0, 1, 1, 2]  # the cut points moved: T matters here


@pytest.mark.parametrize("make", [lambda: PixelCNN(4, 1, 256), lambda: PixelCNN(4, 1, 256, gated=True),
                                  lambda: PixelRNN(2, 1, 256), lambda: small_vqvae()])
def test_generate_is_seeded_and_gives_pixels(make):
    torch.manual_seed(11)
    model = make()
    a, b, c = (model.generate(3, seed, SAMPLING) for seed in (1, 1, 2))
    assert a.shape == (3, 28, 28) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    if not isinstance(model, VQVAE):
        assert torch.equal((a * 255).round() / 255, a)  # multiples of 1/255


# ---------------------------------------------------------------- likelihood bookkeeping and training

@pytest.mark.parametrize("levels, nats", [(256, 784 * math.log(256)), (2, 784 * math.log(2))])
def test_zero_logits_cost_log_levels_per_pixel(levels, nats):
    model = PixelCNN(4, 1, levels)
    with torch.no_grad():
        model.head[2].weight.zero_()
        model.head[2].bias.zero_()
    x = torch.rand(5, 784)
    torch.testing.assert_close(model.loss((x,)), torch.full((5,), nats), rtol=1e-6, atol=1e-4)
    metrics = model.test_metrics(x)
    assert metrics["test_nll_nats"] == pytest.approx(nats, rel=1e-6)
    assert metrics["test_bits_per_dim"] == pytest.approx(math.log2(levels), rel=1e-6)


def test_a_row_lstm_cell_by_hand():
    layer = RowLSTM(1)
    gates = torch.tensor([[[0.5], [-1.0], [2.0], [0.3]]])  # input, forget, output, candidate; (1, 4, 1)
    h, c = layer.cell(gates, torch.tensor([[[0.7]]]))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    c_hand = sig(-1.0) * 0.7 + sig(0.5) * math.tanh(0.3)
    assert c.item() == pytest.approx(c_hand, rel=1e-6)
    assert h.item() == pytest.approx(sig(2.0) * math.tanh(c_hand), rel=1e-6)


def test_a_row_lstm_layer_equals_the_same_layer_written_with_torchs_convolutions():
    torch.manual_seed(3)
    layer = RowLSTM(5).double()
    x = torch.randn(3, 10, 28, 28, dtype=torch.float64)
    expected = reference_row_lstm_layer(layer, x)
    got = layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def images(n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    blobs = torch.zeros(n, 28, 28)
    for i, (r, c) in enumerate(torch.randint(4, 20, (n, 2), generator=g).tolist()):
        blobs[i, r : r + 6, c : c + 4] = 1.0
    return (blobs.view(n, 784) * 255).round() / 255


@pytest.mark.parametrize("make", [lambda: PixelCNN(8, 2, 256), lambda: PixelCNN(8, 2, 256, gated=True),
                                  lambda: PixelRNN(4, 1, 256)], ids=["pixelcnn", "gated_pixelcnn", "pixelrnn"])
def test_one_epoch_lowers_the_training_loss(make, tmp_path):
    seed_everything(12)
    model = make()
    x = images()
    with torch.no_grad():
        before = float(model.loss((x,)).mean())
    fit(model, lambda m, b: m.loss(b), (x,), TrainConfig(epochs=1, batch_size=32, lr=1e-3, optimizer="adam", seed=1),
        tmp_path / "c.pt", tmp_path / f"m{SUFFIX}", progress=False, device=torch.device("cpu"))
    with torch.no_grad():
        after = float(model.loss((x,)).mean())
    assert math.isfinite(after) and after < before


# ---------------------------------------------------------------- VQ-VAE

def test_codes_are_the_nearest_codebook_vectors_ties_included():
    model = small_vqvae()
    with torch.no_grad():
        model.codebook.weight[3] = model.codebook.weight[7]  # a tie: argmin takes the first
    z_e = torch.randn(2, 4, GRID, GRID)
    z_e[0, :, 0, 0] = model.codebook.weight[7].detach()
    codes = model.quantize(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(codes.flatten(), torch.cdist(flat, model.codebook.weight).argmin(-1))
    assert codes[0, 0, 0] == 3


def test_straight_through_gradients_reach_the_encoder_and_the_codebook_only_by_its_term():
    model = small_vqvae()
    x = images(4)
    z_e = model.encode(x)
    z_q = model.lookup(model.quantize(z_e.detach()))
    z_st = z_e + (z_q - z_e).detach()
    z_st.retain_grad()
    recon = model.decoder(z_st)
    recon.pow(2).sum().backward(retain_graph=True)
    assert model.codebook.weight.grad is None or torch.all(model.codebook.weight.grad == 0)
    grad_e = torch.autograd.grad(model.decoder(z_e + (z_q - z_e).detach()).pow(2).sum(), z_e, retain_graph=True)[0]
    torch.testing.assert_close(grad_e, z_st.grad)
    codebook_term = (z_q - z_e.detach()).pow(2).mean()
    assert torch.autograd.grad(codebook_term, model.codebook.weight, retain_graph=True)[0].abs().sum() > 0
    commitment = (z_e - z_q.detach()).pow(2).mean()
    assert all(g is None for g in torch.autograd.grad(commitment, [model.codebook.weight], allow_unused=True))


def test_the_autoencoder_loss_weights_only_the_commitment_by_beta():
    model = small_vqvae().double()  # float64: the difference of two losses is exact to ~1e-15, not ~1e-7
    x = images(3).double()
    loss_a = model.autoencoder_loss(x)
    model.commitment = 1.25  # one more unit of the commitment term
    loss_b = model.autoencoder_loss(x)
    z_e = model.encode(x)
    z_q = model.lookup(model.quantize(z_e))
    commitment = (z_e - z_q).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss_b - loss_a, commitment.detach() * 1.0, rtol=1e-10, atol=1e-12)


def test_perplexity_is_one_for_one_code_and_k_for_uniform_use():
    assert perplexity(torch.full((100,), 5), 12) == pytest.approx(1.0)
    assert perplexity(torch.arange(12).repeat(5), 12) == pytest.approx(12.0)


def test_training_is_the_autoencoder_then_the_prior(tmp_path):
    seed_everything(13)
    model = small_vqvae()
    step = PhasedStep(model, TrainConfig(epochs=2, batch_size=64, lr=1e-3, optimizer="adam", seed=1), total_steps=2)
    prior_before = [p.detach().clone() for p in model.prior.parameters()]
    step((images(64),))
    assert all(torch.equal(a, b) for a, b in zip(prior_before, model.prior.parameters()))
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    step((images(64),))
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(prior_before, model.prior.parameters()))
    with pytest.raises(ConfigError, match="leave epochs"):
        PhasedStep(model, TrainConfig(epochs=1, batch_size=64, lr=1e-3, optimizer="adam"), total_steps=1)


def vqvae_after_one_autoencoder_epoch(code_restarts: bool) -> tuple[VQVAE, torch.Tensor, set[int]]:
    """A VQ-VAE after one autoencoder epoch of two steps (of three epochs), code 0 placed where no encoder
    output is nearest to it; also the last batch's encoder outputs before its step, and the codes chosen
    before each step (cdist by hand)."""
    torch.manual_seed(21)
    model = VQVAE(code_dim=4, codebook_size=12, commitment=0.25, prior_channels=8, ae_epochs=2, ae_lr_decay=0.95,
                  prior_lr=3e-4, code_restarts=code_restarts)
    with torch.no_grad():
        model.codebook.weight[0] = 1e3
    step = PhasedStep(model, TrainConfig(epochs=3, batch_size=32, lr=1e-3, optimizer="adam", seed=1), total_steps=6)
    chosen = set()
    for x in [images(32, seed=s) for s in (3, 4)]:
        with torch.no_grad():
            z_e = model.encode(x).permute(0, 2, 3, 1).reshape(-1, 4)
            chosen |= set(torch.cdist(z_e, model.codebook.weight).argmin(dim=1).tolist())
        step((x,))
    return model, z_e, chosen


def test_a_code_no_encoder_output_chose_is_moved_onto_one_and_the_rest_are_untouched():
    plain, _, chosen = vqvae_after_one_autoencoder_epoch(code_restarts=False)
    restarted, last_z_e, _ = vqvae_after_one_autoencoder_epoch(code_restarts=True)
    assert torch.equal(plain.codebook.weight[0], torch.full((4,), 1e3)) and 0 not in chosen
    dead = set(range(12)) - chosen
    moved = {k for k in range(12) if not torch.equal(plain.codebook.weight[k], restarted.codebook.weight[k])}
    assert moved == dead
    for k in moved:  # each moved code now sits on one of the last batch's encoder outputs
        assert (last_z_e == restarted.codebook.weight[k]).all(dim=1).any()


def test_the_vqvae_trains_through_fit_and_reports_its_codebook(tmp_path):
    seed_everything(14)
    model = small_vqvae()
    x = images(128)
    history = fit(model, lambda m, b: m.loss(b), (x,), TrainConfig(epochs=2, batch_size=64, lr=1e-3, optimizer="adam",
                                                                   seed=1),
                  tmp_path / "c.pt", tmp_path / f"m{SUFFIX}", test_data=(images(32, seed=1),), progress=False,
                  device=torch.device("cpu"))
    assert len(history) == 2 and all(math.isfinite(r.train_loss) for r in history)
    metrics = model.test_metrics(images(32, seed=1))
    assert 1 <= metrics["codebook_perplexity"] <= 12 and 1 <= metrics["codes_used"] <= 12
    assert {"test_mse", "test_l1", "prior_test_nll_nats", "prior_test_bits_per_code"} <= set(metrics)


@pytest.mark.parametrize("make", [lambda: PixelCNN(0, 1, 256), lambda: PixelCNN(4, 1, 4, gated="yes"), lambda: PixelRNN(4, 0, 256),
                                  lambda: VQVAE(4, 12, -1.0, 8, 1, 0.95, 3e-4), lambda: causal_mask(4, "A"),
                                  lambda: MaskedConv2d(1, 1, 3, "C")])
def test_impossible_settings_are_one_line_errors(make):
    with pytest.raises(ConfigError) as info:
        make()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- sampling agrees with training (issue 32's audit)

def _recording_draws(monkeypatch, module):
    """Record every (logits, uniforms, temperature, draw) the sampler passes through `draw_levels`."""
    seen = []

    def recording(logits, uniforms, temperature):
        drawn = draw_levels(logits, uniforms, temperature)
        seen.append((logits.detach().double().cpu().clone(), drawn.clone()))
        return drawn

    monkeypatch.setattr(module, "draw_levels", recording)
    return seen


def _inverse_cdf_by_hand(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """The first class whose cumulative tempered probability exceeds u (numpy, row by row): greedy decoding
    (the argmax) or any other draw differs from it."""
    out = []
    for row, value in zip(logits.numpy(), u.numpy()):
        p = np.exp((row - row.max()) / temperature)
        cdf = np.cumsum(p / p.sum())
        out.append(min(int(np.searchsorted(cdf, value, side="right")), len(row) - 1))
    return torch.tensor(out)


@pytest.mark.parametrize("make", [lambda: small_pixelcnn(5), lambda: small_gated_pixelcnn(5), lambda: small_pixelrnn(5)],
                         ids=["pixelcnn", "gated_pixelcnn", "pixelrnn_row"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_pixel_models_samples_are_drawn_from_the_distribution_its_training_loss_scores(make, temperature, monkeypatch):
    """Sampling must feed the network what training feeds it (scale, order, type): the logits the
    sampler drew each pixel from are those the training path (`loss`: logits of the finished image,
    targets by rounding) gives at that pixel; each draw is the inverse-CDF draw at the seed's uniform,
    never the argmax; so the training loss of a sample is exactly the sampler's own log-probability."""
    import sarnet.families.pixel as pixel

    model = make()
    seen = _recording_draws(monkeypatch, pixel)
    images = model.sample(3, torch.Generator().manual_seed(11), batch_size=3, temperature=temperature)
    uniforms = torch.rand(3, 784, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert len(seen) == 784
    x = images.reshape(3, 784).double()
    levels = torch.stack([drawn for _, drawn in seen], dim=1)
    assert torch.equal(model.targets(x).view(3, 784), levels)  # the loss's targets are the drawn levels
    with torch.no_grad():
        trained_view = model.logits(x)  # (3, levels, 28, 28): the training path on the finished images
    for p, (logits, drawn) in enumerate(seen):
        torch.testing.assert_close(logits, trained_view[:, :, p // 28, p % 28], rtol=1e-9, atol=1e-9)
        assert torch.equal(drawn, _inverse_cdf_by_hand(logits, uniforms[:, p], temperature))
    sampler_nats = -sum(torch.log_softmax(logits, 1).gather(1, drawn[:, None]).squeeze(1) for logits, drawn in seen)
    if temperature == 1.0:
        with torch.no_grad():
            torch.testing.assert_close(model.loss((x,)), sampler_nats, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("method", ["cached", "naive"])
def test_the_vqvae_prior_samples_the_codes_its_training_loss_scores(method, monkeypatch):
    """The prior's draws: logits those of the prior on the finished code map (its training path,
    `prior_loss`), each draw the inverse-CDF draw at the seed's uniform."""
    import sarnet.families.vqvae as vqvae

    prior = small_vqvae(6).prior.double().eval()
    seen = _recording_draws(monkeypatch, vqvae)
    uniforms = torch.rand(4, GRID * GRID, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    codes = prior.sample_codes(uniforms, 1.0, method)
    with torch.no_grad():
        trained_view = prior(codes)
    for p, (logits, drawn) in enumerate(seen):
        torch.testing.assert_close(logits, trained_view[:, :, p // GRID, p % GRID].cpu(), rtol=1e-9, atol=1e-9)
        assert torch.equal(drawn, codes.reshape(4, -1)[:, p].cpu())
        assert torch.equal(drawn, _inverse_cdf_by_hand(logits, uniforms[:, p], 1.0))
