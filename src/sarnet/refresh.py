"""Refreshing stale results in pieces (`sarnet repro --for MINUTES`, docs/staleness.md): which stages to
run, in which order, and which of them fit into the time left. Pure planning: the caller says what is
stale, how long each stage took and how to run one, so this module knows nothing of DVC."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

UNKNOWN_STAGE_SECONDS = 600.0  # a stage with no recorded wall time is assumed to take this long
# DVC's own work and Python's start-up around each stage (one `dvc repro --single-item` each), which
# its recorded seconds leave out: 8.3 s per stage measured over 35 CI-profile stages (2026-12-06).
STAGE_OVERHEAD_SECONDS = 8.0


@dataclass(frozen=True)
class StageInfo:
    """A pipeline stage as the plan needs it: the paths it reads and writes."""

    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    frozen: bool = False  # DVC cuts a frozen stage off from its inputs: nothing upstream re-runs it


def _reads(stage: StageInfo, outs: Sequence[str]) -> bool:
    """Whether `stage` reads one of `outs`, or a folder holding one, or a file inside an output folder."""
    return any(d == o or d.startswith(o.rstrip("/") + "/") or o.startswith(d.rstrip("/") + "/")
               for d in stage.deps for o in outs)


def upstreams(stages: Sequence[StageInfo]) -> dict[str, set[str]]:
    """For each stage, the stages whose outputs it reads directly (none for a frozen stage)."""
    return {s.name: set() if s.frozen else {u.name for u in stages if u.name != s.name and _reads(s, u.outs)}
            for s in stages}


def with_downstream(changed: set[str], stages: Sequence[StageInfo]) -> list[str]:
    """`changed` and every stage downstream of them, in an order where each stage follows its upstreams
    (`stages`' own order among independent ones)."""
    above = upstreams(stages)
    wanted = set(changed)
    grew = True
    while grew:
        grew = False
        for s in stages:
            if s.name not in wanted and above[s.name] & wanted:
                wanted.add(s.name)
                grew = True
    ordered: list[str] = []
    placed: set[str] = set()
    while len(ordered) < len(wanted):
        ready = [s.name for s in stages if s.name in wanted and s.name not in placed
                 and not (above[s.name] & wanted) - placed]
        if not ready:
            raise ValueError(f"the stages {sorted(wanted - placed)} depend on each other in a cycle")
        ordered.append(ready[0])
        placed.add(ready[0])
    return ordered


def estimate_seconds(recorded: float | None, recorded_gemm_ms: float | None, gemm_ms: float | None) -> float:
    """A stage's expected wall time here: its last recorded time, scaled by this machine's GEMM time
    against the one recorded with it (unscaled when either is unknown), plus DVC's overhead."""
    if recorded is None:
        return UNKNOWN_STAGE_SECONDS
    if recorded_gemm_ms and gemm_ms:
        recorded = recorded * gemm_ms / recorded_gemm_ms
    return recorded + STAGE_OVERHEAD_SECONDS


@dataclass
class RefreshResult:
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why it did not run
    failed: str | None = None


def run_within(order: Sequence[str], above: Mapping[str, set[str]], estimates: Mapping[str, float], budget_s: float,
               run: Callable[[str], bool], always: Sequence[str] = (), clock: Callable[[], float] = time.monotonic,
               say: Callable[[str], None] = print) -> RefreshResult:
    """Run the stages of `order` whose estimate fits into what is left of `budget_s`; a stage whose
    upstream did not run this time is skipped too (it would read the old result). The `always` ones (the
    report, which shows whatever finished) run in any case: their estimates are kept out of what the
    others may use, so the report is not squeezed out by the last stage that fitted. The first failure
    stops everything."""
    started = clock()
    result = RefreshResult()
    not_run: set[str] = set()
    reserved = {name: estimates[name] for name in order if name in always}
    for index, name in enumerate(order):
        reserved.pop(name, None)
        left = budget_s - (clock() - started) - sum(reserved.values())
        blocked = (above.get(name, set()) & not_run) if name not in always else set()
        if blocked:
            result.skipped[name] = f"waits for {sorted(blocked)[0]}"
        elif estimates[name] > left and name not in always:
            result.skipped[name] = f"needs about {estimates[name] / 60:.1f} min, {max(left, 0) / 60:.1f} min left"
        else:
            say(f"[{index + 1}/{len(order)}] {name} (about {estimates[name] / 60:.1f} min of {left / 60:.1f} min left)")
            if not run(name):
                result.failed = name
                return result
            result.ran.append(name)
            continue
        not_run.add(name)
        say(f"[{index + 1}/{len(order)}] {name}: not started, {result.skipped[name]}")
    return result
