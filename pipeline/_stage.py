"""What every stage script shares: its params section, a one-line error instead of a traceback,
its MLflow run name, and its results written apart from its timings."""

from __future__ import annotations

import copy
import functools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sarnet.core.errors import SarnetError
from sarnet.core.files import write_json
from sarnet.core.params import read_params_file
from sarnet.core.provenance import run_record
from sarnet.tracking import end_experiment_parent

PARAMS_FILE = Path("params.yaml")
METRICS_DIR = Path("metrics")
TIMING_DIR = METRICS_DIR / "timing"  # wall times and speeds: they differ on every run, so not DVC metrics
DATA_KEYS = ("dataset", "digit", "train_limit")  # what every model entry says about its training data
_started = time.perf_counter()


def elapsed() -> float:
    """Seconds since the stage script started (imports included): the stage's wall time."""
    return round(time.perf_counter() - _started, 2)


def run_name(fallback: str) -> str:
    """The MLflow run name: the DVC stage being run (`DVC_STAGE`, e.g. `train@sarnet_vae_L128`), or
    `fallback` (the same name, spelled by the script) when the script runs outside DVC."""
    return os.environ.get("DVC_STAGE") or fallback


def _numbers_only(where: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _numbers_only(f"{where}.{key}", item)
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{where} = {value!r}: a metrics file holds finite numbers only")


def write_results(name: str, metrics: dict[str, Any], timings: dict[str, float] | None = None) -> dict[str, float]:
    """metrics/<name>.json: the stage's results, finite numbers only (what `dvc metrics diff` and
    `dvc exp show` compare); metrics/timing/<name>.json: its wall time (`seconds`, the whole
    script) and any speeds. Returns the timings written."""
    _numbers_only(name, metrics)
    write_json(METRICS_DIR / f"{name}.json", metrics)
    return write_timing(name, timings)


def write_timing(name: str, timings: dict[str, float] | None = None) -> dict[str, float]:
    """metrics/timing/<name>.json: `timings`, the stage's wall time so far (`seconds`) and, under `run`,
    where it ran (date, commit, CPU, GEMM-1024 time: docs/staleness.md). Returns the numbers alone."""
    timing = {**(timings or {}), "seconds": elapsed()}
    _numbers_only(f"timing/{name}", timing)
    write_json(TIMING_DIR / f"{name}.json", timing | {"run": run_record()})
    return timing


_MISSING = object()
_params_read: dict[str, Any] = {}  # dotted key -> the value this stage read: what its results were made with


def note_params_read(key: str, value: Any) -> None:
    """Remember that the stage read `key` (dotted) as `value`, to check at its end that params.yaml still says so."""
    _params_read.setdefault(key, copy.deepcopy(value))


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def params(key: str, note: bool = True) -> Any:
    """A section of params.yaml (`evaluate`) or a dotted key in one (`sampling.pixelcnn`), noted as read
    unless `note` is False (the caller notes the narrower keys it uses)."""
    value = _lookup(read_params_file(PARAMS_FILE, hint="run stages from the project root"), key)
    if value is _MISSING:
        raise SarnetError(f"{PARAMS_FILE}: no '{key}'" + (" section" if "." not in key else ""))
    if note:
        note_params_read(key, value)
    return value


def _first_difference(key: str, old: Any, new: Any) -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for part in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(f"{key}.{part}", old.get(part, _MISSING), new.get(part, _MISSING))
            if found:
                return found
        return None
    if old == new and type(old) is type(new):
        return None
    shown = {id(_MISSING): "(absent)"}
    return f"{key}: {shown.get(id(old), repr(old))} -> {shown.get(id(new), repr(new))}"


def check_params_unchanged() -> None:
    """DVC records a stage's params from params.yaml as it finds them when the stage ends. If they changed
    while it ran (an edit, a checkout), the lock would claim results of values that never ran and
    `dvc status` would call them current: fail the stage instead, so DVC records nothing."""
    if not _params_read:
        return
    now = read_params_file(PARAMS_FILE, hint="run stages from the project root")
    for key, value in _params_read.items():
        changed = _first_difference(key, value, _lookup(now, key))
        if changed:
            raise SarnetError(f"{PARAMS_FILE} changed while the stage ran ({changed}); its outputs were made "
                              "with the old values, so DVC must not record it: re-run the stage")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, …, starttime at [19]), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _dvc_ancestor() -> int | None:
    """The pid of the nearest `dvc` process above this one (DVC may run the command through a shell)."""
    pid = os.getppid()
    for _ in range(16):
        if pid <= 1:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
        except OSError:
            return None
        if any(Path(arg.decode(errors="replace")).name == "dvc" for arg in argv) or argv[1:3] == [b"-m", b"dvc"]:
            return pid
        stat = _proc_stat(pid)
        if stat is None:
            return None
        pid = int(stat[1])
    return None


def stop_when_orphaned(poll_seconds: float = 1.0) -> None:
    """Under DVC (`DVC_STAGE` set): stop this stage, as SIGTERM would, once the `dvc` process that runs it is
    gone. A SIGKILLed `dvc repro` cannot pass its stop on, and an orphaned stage went on writing the
    checkpoint that the re-run resumed from. Outside DVC (a stage run by hand, under nohup) nothing is watched."""
    if not os.environ.get("DVC_STAGE"):
        return
    watched = _dvc_ancestor() or os.getppid()
    stat = _proc_stat(watched)
    started = stat[19] if stat else None
    first_parent = os.getppid()

    def gone() -> bool:
        if started is None:  # no /proc: the parent changes when it dies (re-parented)
            return os.getppid() != first_parent
        now = _proc_stat(watched)
        return now is None or now[19] != started or now[0] in ("Z", "X")

    def watch() -> None:
        while not gone():
            time.sleep(poll_seconds)
        print(f"error: the dvc process that ran this stage (pid {watched}) is gone; stopping the stage",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-when-orphaned", daemon=True).start()


def stage(fn: Callable[..., None]) -> Callable[[], None]:
    """Run `fn(*argv)`; a SarnetError becomes `error: <message>` and exit status 1."""

    @functools.wraps(fn)
    def main() -> None:
        stop_when_orphaned()
        try:
            fn(*sys.argv[1:])
            check_params_unchanged()
        except SarnetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            end_experiment_parent("FAILED")
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted: re-run the stage to resume from its last checkpoint", file=sys.stderr)
            end_experiment_parent("KILLED")
            sys.exit(130)
        except OSError as exc:  # a full disk, an unwritable folder: outputs are atomic, nothing partial is left
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            end_experiment_parent("FAILED")
            sys.exit(1)
        except Exception:  # a bug: its traceback is worth seeing, and the experiment still failed
            end_experiment_parent("FAILED")
            raise
        print(f"{Path(sys.argv[0]).stem} {' '.join(sys.argv[1:])}: done in {elapsed():.1f}s", file=sys.stderr)

    return main
