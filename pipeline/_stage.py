"""What every stage script shares: its params section, a one-line error instead of a traceback,
and its wall time."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from sarnet.data import dataset_spec
from sarnet.errors import SarnetError

PARAMS_FILE = Path("params.yaml")
_started = time.perf_counter()


def elapsed() -> float:
    """Seconds since the stage script started (imports included): the stage's wall time."""
    return round(time.perf_counter() - _started, 2)


def params(section: str) -> dict[str, Any]:
    with PARAMS_FILE.open() as fh:
        all_params = yaml.safe_load(fh) or {}
    if section not in all_params:
        raise SarnetError(f"{PARAMS_FILE}: no '{section}' section")
    return all_params[section]


def model_params(kind: str, data: str | None = None) -> dict[str, Any]:
    """A model's params section; with `data`, that entry of the `<kind>_data` section laid over it
    (the same model trained on another training set, thesis §4.3 and §5.2)."""
    base = params(kind)
    if data is None:
        return base
    variants = params(f"{kind}_data")
    if data not in variants:
        raise SarnetError(f"{PARAMS_FILE}: no training set {data!r} under `{kind}_data` (have: {', '.join(variants)})")
    unknown = set(variants[data]) - set(base) - {"latent_dim"}
    if unknown:
        raise SarnetError(f"{PARAMS_FILE}: `{kind}_data.{data}` sets {sorted(unknown)}, which `{kind}` does not have")
    merged = base | variants[data]
    dataset_spec(merged["dataset"])  # an unknown dataset name fails here, before any work
    return merged


def stage(fn: Callable[..., None]) -> Callable[[], None]:
    """Run `fn(*argv)`; a SarnetError becomes `error: <message>` and exit status 1."""

    @functools.wraps(fn)
    def main() -> None:
        try:
            fn(*sys.argv[1:])
        except SarnetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted: re-run the stage to resume from its last checkpoint", file=sys.stderr)
            sys.exit(130)
        print(f"{Path(sys.argv[0]).stem} {' '.join(sys.argv[1:])}: done in {elapsed():.1f}s", file=sys.stderr)

    return main
