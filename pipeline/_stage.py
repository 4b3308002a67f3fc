"""What every stage script shares: its params section, a one-line error instead of a traceback,
its MLflow run name, and its results written apart from its timings."""

from __future__ import annotations

import functools
import math
import os
import sys
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


def params(section: str) -> Any:
    """One top-level section of params.yaml."""
    all_params = read_params_file(PARAMS_FILE, hint="run stages from the project root")
    if section not in all_params:
        raise SarnetError(f"{PARAMS_FILE}: no '{section}' section")
    return all_params[section]


def stage(fn: Callable[..., None]) -> Callable[[], None]:
    """Run `fn(*argv)`; a SarnetError becomes `error: <message>` and exit status 1."""

    @functools.wraps(fn)
    def main() -> None:
        try:
            fn(*sys.argv[1:])
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
