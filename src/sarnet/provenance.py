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


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit checked out (`HEAD`), or `unknown` outside git."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else "unknown"


def run_record() -> dict[str, str | float]:
    """This run's provenance: UTC date, commit, CPU model and GEMM-1024 time in ms."""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": git_commit(),
            "cpu": cpu_model(), "gemm1024_ms": gemm_ms()}
