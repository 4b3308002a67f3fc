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
