"""Where a result came from: the date, the commit, the CPU and the machine's speed (docs/staleness.md).

Every stage records this beside its wall time, so totals from machines of different speed compare:
seconds divided by the GEMM time are the stage's size in *GEMM units*."""

from __future__ import annotations

import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

GEMM_SIZE = 1024
GEMM_REPEATS = 25  # the best of many: a 2-core machine is rarely idle for one product


def gemm_ms(size: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """The best of `repeats` fp32 size × size matrix products on the CPU, in milliseconds (the best,
    not the mean: it is the machine's speed, not what else ran at the time)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=generator)
    b = torch.rand(size, size, generator=generator)
    torch.mm(a, b)  # warm-up: thread pool and allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 3)


def cpu_model() -> str:
    """The processor's model name (`model name` of /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_state(cwd: str | Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the code (MLflow tags); DVC's own outputs (dvc.lock, metrics/) do not count
    as dirt, since a running `dvc repro` rewrites them."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock", ":(exclude)metrics")
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "mlflow.source.git.commit": commit, "git.dirty": str(bool(changed)).lower()}


def run_record() -> dict[str, str | float]:
    """This run's provenance: UTC date, commit (and whether the code differed from it), CPU model and
    GEMM-1024 time in ms."""
    git = git_state()
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git["git.commit"],
            "dirty": git["git.dirty"], "cpu": cpu_model(), "gemm1024_ms": gemm_ms()}
