"""The one training loop every torch model of the project uses, and what one step needs: the training
settings of a params.yaml section (`TrainConfig`), the optimiser and learning-rate schedule they name, and
the check that stops a step before it updates anything on a non-finite loss.

Seeded and deterministic on CPU, a progress bar, per-epoch losses to a tracker and a CSV (a DVC
plots file), a checkpoint after every epoch, resumption from it when a killed run is started
again with the same configuration, and a clear stop on a NaN loss that keeps the last good
checkpoint. Shuffling depends only on (seed, epoch), so a resumed run matches an uninterrupted one.

What one step does is a `TrainingStep`: by default one optimiser on the per-sample loss
(`GradientStep`); a model that trains otherwise (the GANs: a discriminator and a generator step)
owns its step, `model.training_step(config, total_steps)`, and the loop around it stays the same.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sarnet.core.device import default_device
from sarnet.core.errors import ConfigError, RunInProgress, TrainingDiverged
from sarnet.core.files import atomic_path
from sarnet.core.model_files import describe, save_model
from sarnet.core.params import check_int, check_keys, check_number


class NonFiniteLoss(Exception):
    """Raised by a step before it updates anything: a loss is NaN or infinite, or a layer's output is."""


def _check_types(section: str, values: dict[str, Any]) -> None:
    """Integers where counts are meant, finite numbers for rates, before any work."""
    for name in ("epochs", "batch_size", "seed"):
        if name in values:
            check_int(section, name, values[name])
    for name in ("lr", "momentum", "weight_decay", "beta1"):
        if name in values:
            check_number(section, name, values[name])


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant | cosine (per step, to zero at the end)
    reduction: str = "mean"  # per-sample losses -> objective: mean | sum (the VAEs' "sum" losses)
    seed: int = 0
    beta1: float = 0.9  # Adam's first-moment decay (torch's default; the GANs use 0.5)
    # bfloat16: the forward's matmuls and convolutions autocast to bf16 (losses stay float32). Not the
    # default: on a 2-core AVX512-BF16 CPU (2026-12-03) the L = 128 FID moved by 2.3 std (SarNET VAE)
    # and 10 std (conv VAE) against float32 with the same seeds, for ≤ 1.15× shorter epochs.
    precision: str = "float32"  # float32 | bfloat16

    def __post_init__(self) -> None:
        _check_types("TrainConfig", asdict(self))
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.beta1 < 1:
            raise ConfigError(f"beta1 must be in [0, 1), got {self.beta1}")
        for name, value, allowed in (("optimizer", self.optimizer, ("adam", "sgd")),
                                     ("lr_schedule", self.lr_schedule, ("constant", "cosine")),
                                     ("reduction", self.reduction, ("mean", "sum")),
                                     ("precision", self.precision, ("float32", "bfloat16"))):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any], section: str, other_keys: Iterable[str] = ()) -> "TrainConfig":
        """The training settings of a params.yaml section whose other keys are `other_keys` (the
        model's architecture, its data); any key that is neither is refused, with the nearest known key."""
        known = set(cls.__dataclass_fields__)
        check_keys(section, params, known | set(other_keys))
        values = {k: v for k, v in params.items() if k in known}
        _check_types(section, values)  # named by section: `conv_vae.epochs must be an integer`
        return cls(**values)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def autocast_for(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context a training forward runs in: bf16 autocast for `precision: bfloat16`, else nothing."""
    if config.precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser `config` names, over `module`'s parameters."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    # fused: one kernel for the whole update, ~1.5× faster steps for the SarNET VAE on CPU, same maths
    return torch.optim.Adam(module.parameters(), lr=config.lr, betas=(config.beta1, 0.999),
                            weight_decay=config.weight_decay, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule `config` names, over `steps` optimiser steps."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def reduce_losses(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample losses -> the objective a step minimises (`mean` or `sum` over the batch)."""
    return losses.sum() if reduction == "sum" else losses.mean()


def check_finite(objective: torch.Tensor) -> None:
    """NonFiniteLoss unless the objective is finite (checked before the step updates anything)."""
    if not torch.isfinite(objective):
        raise NonFiniteLoss


PerSampleLoss = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]


class EpochLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...


class TrainingStep(Protocol):
    """One optimisation step on a batch; it owns the optimisers and schedulers a checkpoint keeps."""

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Update the model; the detached per-sample losses by name (the first is the epoch's train loss)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def run_fingerprint(config: TrainConfig, model: nn.Module, datasets: Sequence[Sequence[torch.Tensor] | None]) -> str:
    """What determines a training run: its config, the model's kind and architecture, and the
    exact data (shapes and bytes of every tensor). A checkpoint resumes only a run with the same one."""
    digest = hashlib.sha256(config.fingerprint().encode())
    digest.update(json.dumps(describe(model), sort_keys=True).encode())
    for data in datasets:
        for tensor in data or ():
            flat = tensor.detach().cpu().contiguous()
            digest.update(f"{tuple(flat.shape)} {flat.dtype};".encode())
            digest.update(flat.numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    test_loss: float | None
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed every RNG the project uses and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not reproducible
    torch.backends.cudnn.deterministic = True


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: PerSampleLoss, data: Sequence[torch.Tensor],
                  batch_size: int, device: torch.device) -> float:
    """Mean per-sample loss over a dataset, in eval mode."""
    model.eval()
    total, count = 0.0, 0
    for idx in _batches(len(data[0]), batch_size, None):
        losses = loss_fn(model, tuple(t[idx].to(device) for t in data))
        total += float(losses.sum())
        count += len(idx)
    return total / count


def write_history_csv(path: Path, history: list[EpochRecord]) -> None:
    """Per-epoch losses as CSV: the DVC plots file of a training stage."""
    extra_keys = sorted({k for r in history for k in r.extra})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", "train_loss", "test_loss", "seconds", *extra_keys])
    for r in history:
        writer.writerow([r.epoch, f"{r.train_loss:.6g}", "" if r.test_loss is None else f"{r.test_loss:.6g}",
                         f"{r.seconds:.3f}", *(f"{r.extra.get(k, float('nan')):.6g}" for k in extra_keys)])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def write_step_csv(path: Path, names: Sequence[str], rows: Sequence[Sequence[float]]) -> None:
    """Per-step mean losses as CSV, a DVC plots file: `step` from 1, `train_loss` (the step's first loss,
    as in the per-epoch history: a GAN's discriminator loss), then the others by name."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "train_loss", *names[1:]])
    for row in rows:
        writer.writerow([int(row[0]), *(f"{v:.6g}" for v in row[1:])])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _save_checkpoint(run: "_Run", epoch: int, fingerprint: str) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": run.model.state_dict(),
        "step": run.step.state_dict(),
        "history": [asdict(r) for r in run.history],
        "step_losses": {"names": list(run.step_names), "rows": run.step_rows},
        "rng": torch.get_rng_state(),
    }
    buffer = io.BytesIO()  # serialised in memory, so a full disk is a plain OSError, not a torch archive error
    torch.save(state, buffer)
    with atomic_path(run.checkpoint_path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _set_aside(path: Path, why: str) -> None:
    """Move a checkpoint that must not be resumed out of the way (kept for a look), with one warning."""
    stale = path.with_name(path.name + ".stale")
    path.replace(stale)
    print(f"warning: {path} {why}; set aside as {stale.name}, training from scratch", file=sys.stderr)


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty or foreign: never worth a traceback on every run
        _set_aside(path, f"is unreadable ({type(exc).__name__})")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        _set_aside(path, "belongs to another run (config, model or data differ)")
        return None
    return state


@dataclass
class _Run:
    """What one training run carries from epoch to epoch."""

    model: nn.Module
    step: TrainingStep
    train_data: Sequence[torch.Tensor]
    config: TrainConfig
    device: torch.device
    checkpoint_path: Path
    progress: bool
    keep_steps: bool  # per-step losses kept (the GANs' DVC plot), not only per-epoch means
    history: list[EpochRecord] = field(default_factory=list)
    step_names: list[str] = field(default_factory=list)
    step_rows: list[list[float]] = field(default_factory=list)  # [step, loss means...] per step


def _resume(run: _Run, fingerprint: str) -> int:
    """Restore the run from its checkpoint if one of the same configuration exists; the epochs done."""
    state = _load_checkpoint(run.checkpoint_path, fingerprint)
    if state is None:
        return 0
    try:
        run.model.load_state_dict(state["model"])
        run.step.load_state_dict(state["step"])
        torch.set_rng_state(state["rng"])
        run.history = [EpochRecord(**r) for r in state["history"]]
        run.step_names, run.step_rows = list(state["step_losses"]["names"]), list(state["step_losses"]["rows"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        _set_aside(run.checkpoint_path, f"does not restore ({type(exc).__name__})")
        return 0
    print(f"resuming from {run.checkpoint_path} after epoch {state['epoch']}/{run.config.epochs}", file=sys.stderr)
    return state["epoch"]


def _diverged(run: _Run, epoch: int, step: int) -> TrainingDiverged:
    last = f"{run.checkpoint_path} (after epoch {epoch})" if epoch > 0 else "none yet"
    return TrainingDiverged(f"non-finite loss at epoch {epoch + 1}, batch {step + 1}; last good checkpoint: "
                            f"{last}; lower the learning rate (now {run.config.lr})")


def _forward_is_non_finite(model: nn.Module, loss_fn: PerSampleLoss, batch: tuple[torch.Tensor, ...]) -> bool:
    """Whether some layer's output on `batch` is NaN or infinite: diverged weights, even finite but
    huge ones, make a loss such as BCE raise before it can return a non-finite value."""
    found: list[nn.Module] = []

    def check(module: nn.Module, inputs: Any, output: Any) -> None:
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                found.append(module)

    handles = [module.register_forward_hook(check) for module in model.modules()]
    try:
        with torch.no_grad():
            loss_fn(model, batch)
    except RuntimeError:
        pass  # the loss raises again; the hooks have seen the layers' outputs by then
    finally:
        for handle in handles:
            handle.remove()
    return bool(found)


def guarded_loss(model: nn.Module, loss_fn: PerSampleLoss, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """loss_fn(model, batch); a loss that raises because some layer's output is non-finite (e.g. BCE
    refusing the NaN outputs of diverged weights) is NonFiniteLoss, any other error itself."""
    try:
        return loss_fn(model, batch)
    except RuntimeError:
        if not _forward_is_non_finite(model, loss_fn, batch):
            raise
        raise NonFiniteLoss from None


class GradientStep:
    """The default step: one optimiser (and schedule) on the batch's per-sample loss, reduced by `config.reduction`."""

    def __init__(self, model: nn.Module, loss_fn: PerSampleLoss, config: TrainConfig, total_steps: int) -> None:
        self.model, self.loss_fn, self.reduction, self.config = model, loss_fn, config.reduction, config
        self.optimizer = make_optimizer(model, config)
        self.scheduler = make_scheduler(self.optimizer, config, total_steps)

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        with autocast_for(self.config, batch[0].device):
            losses = guarded_loss(self.model, self.loss_fn, batch)
        objective = reduce_losses(losses, self.reduction)
        check_finite(objective)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": losses.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _training_step(model: nn.Module, loss_fn: PerSampleLoss | None, config: TrainConfig, total_steps: int) -> TrainingStep:
    """The model's own step if it has one (two optimisers for a GAN), else one optimiser on `loss_fn`."""
    own = getattr(model, "training_step", None)
    if callable(own):
        return own(config, total_steps)
    if loss_fn is None:
        raise ConfigError(f"{type(model).__name__} has no training_step of its own, so fit needs a loss function")
    return GradientStep(model, loss_fn, config, total_steps)


def _train_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """One pass over the training data (0-based `epoch`); each loss's mean per sample, by name.
    Shuffling depends only on (seed, epoch), so a resumed run matches an uninterrupted one."""
    config, n = run.config, len(run.train_data[0])
    run.model.train()
    shuffle = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    totals: dict[str, float] = {}
    count = 0
    bar = tqdm(_batches(n, config.batch_size, shuffle), desc=f"epoch {epoch + 1}/{config.epochs}",
               disable=not run.progress, leave=False, mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    for step, idx in enumerate(bar):
        batch = tuple(t[idx].to(run.device, non_blocking=True) for t in run.train_data)
        try:
            losses = run.step(batch)
        except NonFiniteLoss:
            raise _diverged(run, epoch, step) from None
        for name, values in losses.items():
            totals[name] = totals.get(name, 0.0) + float(values.sum())
        count += len(idx)
        if run.keep_steps:
            run.step_names = list(losses)
            run.step_rows.append([len(run.step_rows) + 1, *(float(v.mean()) for v in losses.values())])
        if step % 20 == 0:
            bar.set_postfix({name: f"{total / count:.4g}" for name, total in totals.items()}, refresh=False)
    bar.close()
    return {name: total / count for name, total in totals.items()}


def _end_epoch(run: _Run, record: EpochRecord, fingerprint: str, history_path: Path | None,
               step_history_path: Path | None, logger: EpochLogger | None, steps_before: int) -> None:
    """Checkpoint, history CSVs, tracker and console line after an epoch."""
    run.history.append(record)
    _save_checkpoint(run, record.epoch, fingerprint)
    if history_path is not None:
        write_history_csv(history_path, run.history)
    if step_history_path is not None:
        write_step_csv(step_history_path, run.step_names, run.step_rows)
    if logger is not None:
        metrics = {"train_loss": record.train_loss, "epoch_seconds": record.seconds, **record.extra}
        if record.test_loss is not None:
            metrics["test_loss"] = record.test_loss
        logger.log_metrics(metrics, step=record.epoch)
        log_series = getattr(logger, "log_series", None)  # the epoch's per-step losses in one call, if it can
        if run.keep_steps and callable(log_series):
            rows = run.step_rows[steps_before:]
            log_series({f"step_{name}": [row[1 + i] for row in rows] for i, name in enumerate(run.step_names)},
                       first_step=steps_before + 1)
    test_text = "" if record.test_loss is None else f"  test {record.test_loss:.5g}"
    extra_text = "".join(f"  {name} {value:.5g}" for name, value in record.extra.items())
    print(f"epoch {record.epoch}/{run.config.epochs}  train {record.train_loss:.5g}{extra_text}{test_text}  "
          f"({record.seconds:.1f}s)", file=sys.stderr)


@contextlib.contextmanager
def checkpoint_lock(checkpoint_path: Path) -> Iterator[None]:
    """Hold `<checkpoint>.lock` (an flock, released by the kernel when the holder dies) for one run: a second
    process training into the same checkpoint (an orphaned stage of a killed `dvc repro` beside its re-run)
    is one line instead of two runs writing one file. The lock file stays; it holds the last holder's pid."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock_path = checkpoint_path.with_name(checkpoint_path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunInProgress(f"{checkpoint_path}: another process (pid {holder}) is training into this checkpoint; "
                                "wait for it to end, or stop it, then re-run") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fit(
    model: nn.Module,
    loss_fn: PerSampleLoss | None,
    train_data: Sequence[torch.Tensor],
    config: TrainConfig,
    checkpoint_path: str | Path,
    final_path: str | Path,
    test_data: Sequence[torch.Tensor] | None = None,
    history_path: str | Path | None = None,
    logger: EpochLogger | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    step_history_path: str | Path | None = None,
    after_epoch: Callable[[nn.Module, int], dict[str, float]] | None = None,
) -> list[EpochRecord]:
    """Train `model` in place; write it as a model file (model_files.save_model) to `final_path` and
    return the per-epoch history.

    Each step is the model's own `training_step(config, total_steps)` if it has one, else one
    optimiser on `loss_fn`; `loss_fn` also gives the test loss (none without it). The checkpoint at
    `checkpoint_path` is written after every epoch and removed once `final_path` is written; if it
    exists at the start with the same configuration, training resumes after its last epoch. With
    `step_history_path`, every step's mean losses are kept, written there and sent to the logger.
    `after_epoch(model, epoch)` (1-based) may measure the model after an epoch (a validation FID): what
    it returns joins the epoch's record, so it is checkpointed, resumed and logged with the losses; the
    RNG state is restored after it, so it never changes what training draws.
    """
    describe(model)  # a model that cannot be saved fails now, not after its last epoch
    with checkpoint_lock(Path(checkpoint_path)):
        return _fit(model, loss_fn, train_data, config, Path(checkpoint_path), Path(final_path), test_data,
                    history_path, logger, device, progress, step_history_path, after_epoch)


def _fit(model: nn.Module, loss_fn: PerSampleLoss | None, train_data: Sequence[torch.Tensor], config: TrainConfig,
         checkpoint_path: Path, final_path: Path, test_data: Sequence[torch.Tensor] | None,
         history_path: str | Path | None, logger: EpochLogger | None, device: torch.device | None, progress: bool,
         step_history_path: str | Path | None,
         after_epoch: Callable[[nn.Module, int], dict[str, float]] | None) -> list[EpochRecord]:
    device = device or default_device()
    model.to(device)
    steps = config.epochs * -(-len(train_data[0]) // config.batch_size)
    run = _Run(model, _training_step(model, loss_fn, config, steps), train_data, config, device,
               checkpoint_path, progress, keep_steps=step_history_path is not None)
    history_path = None if history_path is None else Path(history_path)
    step_history_path = None if step_history_path is None else Path(step_history_path)
    fingerprint = run_fingerprint(config, model, (train_data, test_data))
    for epoch in range(_resume(run, fingerprint), config.epochs):
        started, steps_before = time.perf_counter(), len(run.step_rows)
        means = _train_epoch(run, epoch)
        first, *others = means
        test_loss = (evaluate_loss(model, loss_fn, test_data, config.batch_size * 4, device)
                     if test_data and loss_fn is not None else None)
        extra, seconds = {name: means[name] for name in others}, time.perf_counter() - started  # training time only
        if after_epoch is not None:
            rng = torch.get_rng_state()
            extra |= after_epoch(model, epoch + 1)
            torch.set_rng_state(rng)
        record = EpochRecord(epoch + 1, means[first], test_loss, seconds, extra)
        _end_epoch(run, record, fingerprint, history_path, step_history_path, logger, steps_before)
    if history_path is not None and not run.history:
        write_history_csv(history_path, run.history)
    save_model(model, final_path)
    run.checkpoint_path.unlink(missing_ok=True)
    return run.history
