"""The shared training loop: determinism, resumption, NaN stop, outputs."""

import csv

import pytest
import torch
from torch import nn

from sarnet.core.errors import ConfigError, TrainingDiverged
from sarnet.core.model_files import SUFFIX, load_weights, read_description
from sarnet.core.training import TrainConfig, fit, seed_everything


def regression_data(n=96, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    return x, x @ w + 0.1 * torch.randn(n, 1, generator=g)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean(dim=1)


class TinyNet(nn.Sequential):
    """A small regression net that says what it is, as fit's model file needs (kind, constructor args)."""

    kind = "tiny_test_net"

    def __init__(self) -> None:
        super().__init__(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))
        self.model_args = {}


def make_model(seed=0):
    seed_everything(seed)
    return TinyNet()


def final(tmp_path, name):
    """Where fit writes a run's final model file."""
    return tmp_path / f"{name}{SUFFIX}"


CONFIG = TrainConfig(epochs=4, batch_size=16, lr=0.01, optimizer="sgd", momentum=0.9, lr_schedule="cosine", seed=3)


def run(tmp_path, name, config=CONFIG, **kwargs):
    model = make_model()
    history = fit(model, mse, regression_data(), config, tmp_path / f"{name}.ckpt", final(tmp_path, name),
                  test_data=regression_data(seed=1), progress=False, device=torch.device("cpu"), **kwargs)
    return model, history


def test_same_seed_gives_identical_weights_and_losses(tmp_path):
    a, hist_a = run(tmp_path, "a")
    b, hist_b = run(tmp_path, "b")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert [r.train_loss for r in hist_a] == [r.train_loss for r in hist_b]


def test_training_reduces_loss_and_writes_outputs(tmp_path):
    model, history = run(tmp_path, "m", history_path=tmp_path / "hist.csv")
    assert len(history) == CONFIG.epochs
    assert history[-1].train_loss < history[0].train_loss
    assert not (tmp_path / "m.ckpt").exists(), "checkpoint is removed once the final weights exist"
    rows = list(csv.DictReader((tmp_path / "hist.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) == pytest.approx(history[-1].train_loss, rel=1e-5)
    assert read_description(final(tmp_path, "m"))["kind"] == "tiny_test_net"  # a model file that says what it is
    reloaded = load_weights(make_model(seed=99), final(tmp_path, "m")).eval()  # load_weights keeps the mode
    x, _ = regression_data()
    model.eval()
    assert torch.allclose(reloaded(x), model(x))


class StopAfter(Exception):
    pass


class KillAfterEpoch:
    """A logger that 'kills' the run after a given epoch, as a crash would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def log_metrics(self, metrics, step=None):
        if step == self.epoch:
            raise StopAfter


class CountingLoss:
    """mse, counting the training batches it sees (the model in train mode): how many epochs really ran."""

    def __init__(self):
        self.training_batches = 0

    def __call__(self, model, batch):
        self.training_batches += model.training
        return mse(model, batch)


BATCHES_PER_EPOCH = 96 // 16


def test_each_epoch_sees_every_sample_once_in_its_own_order(tmp_path):
    """Shuffling is drawn anew per epoch (from the seed and the epoch alone, so resuming can redo it):
    each epoch is a permutation of the training set, and two epochs are two different permutations."""
    x, y = regression_data()
    seen: list[list[float]] = []

    def recording(model, batch):
        if model.training:
            seen.extend(batch[0][:, 0].tolist())  # the first feature identifies the sample
        return mse(model, batch)

    fit(make_model(), recording, (x, y), CONFIG, tmp_path / "s.ckpt", final(tmp_path, "s"), progress=False,
        device=torch.device("cpu"))
    n = len(x)
    epochs = [seen[i * n : (i + 1) * n] for i in range(CONFIG.epochs)]
    assert len(seen) == CONFIG.epochs * n
    for order in epochs:
        assert sorted(order) == sorted(x[:, 0].tolist())
    assert len({tuple(order) for order in epochs}) == CONFIG.epochs


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path):
    full, full_hist = run(tmp_path, "full")
    with pytest.raises(StopAfter):
        run(tmp_path, "resumed", logger=KillAfterEpoch(2))
    assert (tmp_path / "resumed.ckpt").exists()
    assert not final(tmp_path, "resumed").exists()
    # Other starting weights and another global RNG state: only the checkpoint can make the two runs meet.
    resumed, counting = make_model(seed=99), CountingLoss()
    assert not all(torch.equal(a, b) for a, b in zip(resumed.parameters(), make_model().parameters()))
    resumed_hist = fit(resumed, counting, regression_data(), CONFIG, tmp_path / "resumed.ckpt", final(tmp_path, "resumed"),
                       test_data=regression_data(seed=1), progress=False, device=torch.device("cpu"))
    assert counting.training_batches == 2 * BATCHES_PER_EPOCH  # epochs 3 and 4 only
    assert [r.epoch for r in resumed_hist] == [1, 2, 3, 4]
    for pa, pb in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb)  # bit for bit, as docs/reliability.md promises
    assert [r.train_loss for r in resumed_hist] == [r.train_loss for r in full_hist]


def test_checkpoint_of_other_config_is_not_resumed(tmp_path, capsys):
    with pytest.raises(StopAfter):
        run(tmp_path, "x", logger=KillAfterEpoch(1))
    other = TrainConfig(epochs=2, batch_size=16, lr=0.02, optimizer="sgd", seed=3)
    counting = CountingLoss()
    model = make_model()
    history = fit(model, counting, regression_data(), other, tmp_path / "x.ckpt", final(tmp_path, "x"),
                  test_data=regression_data(seed=1), progress=False, device=torch.device("cpu"))
    assert counting.training_batches == 2 * BATCHES_PER_EPOCH  # both epochs trained: nothing resumed
    assert [r.epoch for r in history] == [1, 2]
    assert (tmp_path / "x.ckpt.stale").exists() and "another run" in capsys.readouterr().err
    (tmp_path / "fresh").mkdir()
    fresh, _ = run(tmp_path / "fresh", "x", config=other)
    for pa, pb in zip(fresh.parameters(), model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_nan_loss_stops_clearly_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        losses = mse(model, batch)
        return losses * float("nan") if calls["n"] > 6 * 2 else losses  # 6 batches/epoch: NaN in epoch 3

    model = make_model()
    with pytest.raises(TrainingDiverged) as info:
        fit(model, poisoned, regression_data(), CONFIG, tmp_path / "n.ckpt", final(tmp_path, "n"),
            progress=False, device=torch.device("cpu"))
    message = str(info.value)
    assert "epoch 3" in message and "n.ckpt" in message and "\n" not in message
    state = torch.load(tmp_path / "n.ckpt", weights_only=True)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not final(tmp_path, "n").exists()


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=-1.0), dict(optimizer="lbfgs"),
                                 dict(reduction="max"), dict(lr_schedule="step")])
def test_bad_config_is_rejected_before_training(bad):
    params = dict(epochs=1, batch_size=8, lr=0.1) | bad
    with pytest.raises(ConfigError):
        TrainConfig(**params)


def test_sum_reduction_scales_gradient_by_batch_size(tmp_path):
    """'sum' (the VAEs' losses) and 'mean' differ only by the batch size in the gradient step."""
    x, y = regression_data(n=16)
    base = dict(epochs=1, batch_size=16, optimizer="sgd", seed=0)
    a = make_model()
    fit(a, mse, (x, y), TrainConfig(lr=0.016, reduction="mean", **base), tmp_path / "a.ckpt", final(tmp_path, "a"), progress=False, device=torch.device("cpu"))
    b = make_model()  # re-seeds, so dropout draws the same masks
    fit(b, mse, (x, y), TrainConfig(lr=0.001, reduction="sum", **base), tmp_path / "b.ckpt", final(tmp_path, "b"), progress=False, device=torch.device("cpu"))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_checkpoint_of_other_data_is_set_aside_not_resumed(tmp_path, capsys):
    # Killed after epoch 2 on one dataset, re-run on another of the same shape (e.g. digit 5 -> 9):
    # the old weights must not warm-start the new run.
    with pytest.raises(StopAfter):
        run(tmp_path, "d", logger=KillAfterEpoch(2))
    other = regression_data(seed=7)
    model = make_model()
    history = fit(model, mse, other, CONFIG, tmp_path / "d.ckpt", final(tmp_path, "d"), progress=False,
                  device=torch.device("cpu"))
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "belongs to another run" in err and "resuming" not in err
    assert (tmp_path / "d.ckpt.stale").exists()
    fresh = make_model()
    fit(fresh, mse, other, CONFIG, tmp_path / "e.ckpt", final(tmp_path, "e"), progress=False, device=torch.device("cpu"))
    for pa, pb in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(pa, pb)  # exactly as if no checkpoint had been there


def test_checkpoint_of_another_architecture_is_set_aside(tmp_path, capsys):
    with pytest.raises(StopAfter):
        run(tmp_path, "a", logger=KillAfterEpoch(1))
    wider = TinyNet()
    wider[0], wider[3] = nn.Linear(6, 16), nn.Linear(16, 1)
    wider.model_args = {"hidden": 16}  # what its file would record
    fit(wider, mse, regression_data(), CONFIG, tmp_path / "a.ckpt", final(tmp_path, "a"), progress=False,
        device=torch.device("cpu"))
    assert "belongs to another run" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a checkpoint"], ids=["empty", "truncated", "foreign"])
def test_unreadable_checkpoint_is_set_aside_with_one_warning(content, tmp_path, capsys):
    (tmp_path / "u.ckpt").write_bytes(content)
    _, history = run(tmp_path, "u")
    assert len(history) == CONFIG.epochs
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "is unreadable" in warnings[0]
    assert (tmp_path / "u.ckpt.stale").read_bytes() == content


def test_a_loss_that_raises_on_diverged_weights_stops_as_divergence(tmp_path):
    # A VAE's BCE raises a RuntimeError when diverged weights make the decoder output NaN: that is
    # divergence (a clean stop keeping the last good checkpoint), not a crash.
    calls = {"n": 0}

    def bce(model, batch):
        calls["n"] += 1
        if calls["n"] == 6 * 2 + 1:  # first batch of epoch 3: the weights have blown up
            with torch.no_grad():
                model[0].weight.fill_(float("nan"))
        x, y = batch
        return torch.nn.functional.binary_cross_entropy(torch.sigmoid(model(x)), torch.sigmoid(y), reduction="none").mean(1)

    with pytest.raises(RuntimeError, match="between 0 and 1"):  # what the loss itself raises on NaN input
        bce(make_model(), (torch.full((2, 6), float("nan")), torch.zeros(2, 1)))
    calls["n"] = 0
    with pytest.raises(TrainingDiverged, match="non-finite loss at epoch 3, batch 1; last good checkpoint: .*after epoch 2"):
        fit(make_model(), bce, regression_data(), CONFIG, tmp_path / "b.ckpt", final(tmp_path, "b"), progress=False,
            device=torch.device("cpu"))
    assert (tmp_path / "b.ckpt").exists() and not final(tmp_path, "b").exists()


def test_finite_but_exploded_weights_stop_as_divergence_not_a_crash(tmp_path):
    """lr = 1e6 leaves the weights finite but huge: activations overflow to inf, inf − inf is NaN,
    and BCE raises on it. That is divergence too (a probe of issue 14 found the crash)."""
    from sarnet.families.conv_vae import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(4)
    with torch.no_grad():
        for layer in model.encoder.features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(1e25)  # finite (< 3.4e38), but the activations are not
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    images = (torch.rand(32, 784),)
    with pytest.raises(RuntimeError, match="between 0 and 1"):  # what BCE itself raises
        model.train()
        model.loss(images)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, reduction="sum", seed=0)
    with pytest.raises(TrainingDiverged, match="non-finite loss at epoch 1, batch 1; last good checkpoint: none yet"):
        fit(model, lambda m, b: m.loss(b), images, config, tmp_path / "c.ckpt", final(tmp_path, "c"), progress=False,
            device=torch.device("cpu"))


def test_a_loss_raising_for_another_reason_is_not_called_divergence(tmp_path):
    def broken(model, batch):
        raise RuntimeError("shape mismatch in my loss")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        fit(make_model(), broken, regression_data(), CONFIG, tmp_path / "d.ckpt", final(tmp_path, "d"), progress=False,
            device=torch.device("cpu"))


def test_bfloat16_precision_autocasts_the_forward_and_keeps_float32_weights_and_losses(tmp_path):
    """`precision: bfloat16` runs the forward's matmuls in bf16 (so the run differs from float32, a
    little), while weights, optimiser and the recorded losses stay float32."""
    seen = []

    def recording_mse(model, batch):
        x, y = batch
        out = model(x)
        seen.append(out.dtype)
        return ((out.float() - y) ** 2).mean(dim=1)

    def train(precision, name):
        model = make_model()
        config = TrainConfig(epochs=2, batch_size=16, lr=0.01, optimizer="adam", seed=3, precision=precision)
        history = fit(model, recording_mse, regression_data(), config, tmp_path / f"{name}.ckpt", final(tmp_path, name),
                      progress=False, device=torch.device("cpu"))
        return model, history

    model32, history32 = train("float32", "f32")
    assert set(seen) == {torch.float32}
    seen.clear()
    model16, history16 = train("bfloat16", "bf16")
    assert set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    # bf16 keeps ~3 significant digits: the same run, not the same bits
    assert history16[-1].train_loss != history32[-1].train_loss
    assert history16[-1].train_loss == pytest.approx(history32[-1].train_loss, rel=0.05)


def test_an_unknown_precision_is_one_line():
    with pytest.raises(ConfigError, match=r"precision must be one of \('float32', 'bfloat16'\), got 'fp8'"):
        TrainConfig(epochs=1, batch_size=1, lr=0.1, precision="fp8")


def test_a_measure_after_each_epoch_joins_the_history_and_never_changes_training(tmp_path):
    """`after_epoch` (the learning curves' validation FID) may draw from the global RNG; training must
    be bit for bit what it is without it, and its values must survive a kill and a resume."""
    def measure(model, epoch):
        torch.rand(7)  # a measure that draws (e.g. sampling without its own generator)
        return {"val": float(sum(p.sum() for p in model.parameters()))} if epoch % 2 == 0 else {}

    plain, _ = run(tmp_path, "plain")
    measured, history = run(tmp_path, "measured", after_epoch=measure)
    for pa, pb in zip(plain.parameters(), measured.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert [sorted(r.extra) for r in history] == [[], ["val"], [], ["val"]]
    assert history[-1].extra["val"] == pytest.approx(float(sum(p.sum() for p in measured.parameters())))

    with pytest.raises(StopAfter):
        run(tmp_path, "resumed", logger=KillAfterEpoch(2), after_epoch=measure)
    _, resumed = run(tmp_path, "resumed", after_epoch=measure)
    assert [r.extra for r in resumed] == [r.extra for r in history]
