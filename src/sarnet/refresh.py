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
    return in_dependency_order(wanted, stages)


# What `dvc status` says of an output this machine lacks: gone from the work tree, and (or) from the cache.
MISSING_STATES = ("deleted", "not in cache")


def split_status(status: Mapping[str, Sequence], stages: Sequence[StageInfo], exists: Callable[[str], bool],
                 read_as_recorded: Callable[[str, str], bool]) -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """`dvc status`'s answer (stage -> its changes) split into the stale stages (changed code, params
    or inputs, never run, an output that differs) and, for each other stage it names, its outputs that
    `exists` does not find. A stage whose only changes are missing outputs, and inputs missing because
    another stage's output is, is not stale: its recorded result still holds, this machine lacks it.
    Unless the missing input it read is not the one its writer recorded (`read_as_recorded(stage, path)`
    false: the writer ran again since), which DVC cannot see while the file is missing."""
    outputs = {o for s in stages for o in s.outs}
    by_name = {s.name: s for s in stages}
    stale: set[str] = set()
    missing: dict[str, tuple[str, ...]] = {}
    for name, changes in status.items():
        only_missing = True
        for change in changes:
            if not isinstance(change, Mapping):  # "changed command", "always changed"
                only_missing = False
                continue
            for kind, paths in change.items():
                if kind == "changed outs":
                    only_missing &= all(state in MISSING_STATES for state in paths.values())
                elif kind == "changed deps":
                    only_missing &= all(state == "deleted" and path in outputs and read_as_recorded(name, path)
                                        for path, state in paths.items())
                else:
                    only_missing = False
        if only_missing and name in by_name:
            missing[name] = tuple(o for o in by_name[name].outs if not exists(o))
        else:
            stale.add(name)
    return stale, missing


def recorded_reads(lock: Mapping) -> Callable[[str, str], bool]:
    """From a parsed dvc.lock: whether a stage's run read the very output (by its recorded hash) that
    the stage writing that path recorded last."""
    stages = lock.get("stages", {}) or {}
    written = {out["path"]: out.get("md5") for entry in stages.values() for out in entry.get("outs", []) or []}
    read = {(name, dep["path"]): dep.get("md5") for name, entry in stages.items() for dep in entry.get("deps", []) or []}
    return lambda stage, path: read.get((stage, path)) is not None and read.get((stage, path)) == written.get(path)


def missing_inputs(run: set[str], missing_outs: Mapping[str, Sequence[str]], stages: Sequence[StageInfo]) -> set[str]:
    """The stages that must run again only because a stage of `run` reads an output of theirs that this
    machine lacks (`missing_outs`: stage -> its outputs absent here, for stages that are not stale), and
    the ones those need in turn. A fresh clone or a new machine lacks every model: without this, a
    refresh would retrain all of them, although only the stale stages' inputs are needed."""
    by_name = {s.name: s for s in stages}
    needed: set[str] = set()
    readers = list(run)
    while readers:
        reader = by_name[readers.pop()]
        if reader.frozen:  # its inputs are never read again (DVC only verifies its outputs)
            continue
        for name, outs in missing_outs.items():
            if outs and name not in needed and name not in run and _reads(reader, outs):
                needed.add(name)
                readers.append(name)
    return needed


def in_dependency_order(wanted: set[str], stages: Sequence[StageInfo]) -> list[str]:
    """The stages of `wanted`, each after those of its upstreams that are wanted too. Among the stages
    ready to run, the reader of the stage placed last comes first (then `stages`' own order), so a
    training is followed by its evaluation: a refresh cut short leaves finished results, not models
    that nothing has scored yet."""
    above = upstreams(stages)
    position: dict[str, int] = {}
    ordered: list[str] = []
    while len(ordered) < len(wanted):
        ready = [s.name for s in stages if s.name in wanted and s.name not in position
                 and not (above[s.name] & wanted) - position.keys()]
        if not ready:
            raise ValueError(f"the stages {sorted(wanted - position.keys())} depend on each other in a cycle")
        # stable: max keeps the first of equals, i.e. `stages`' order
        latest = max(ready, key=lambda name: max((position[u] for u in above[name] & wanted), default=-1))
        position[latest] = len(ordered)
        ordered.append(latest)
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
    others may use, so the report is not squeezed out by the last stage that fitted. The estimates are
    corrected as stages finish, by how long those took against theirs (`pace`). The first failure
    stops everything."""
    started = clock()
    result = RefreshResult()
    not_run: set[str] = set()
    took = expected = 0.0  # seconds the stages run so far took, and their estimates
    for index, name in enumerate(order):
        scale = pace(took, expected)
        reserved = sum(estimates[n] for n in order[index + 1:] if n in always) * scale
        left = budget_s - (clock() - started) - reserved
        need = estimates[name] * scale
        blocked = (above.get(name, set()) & not_run) if name not in always else set()
        if blocked:
            result.skipped[name] = f"waits for {sorted(blocked)[0]}"
        elif need > left and name not in always:
            result.skipped[name] = f"needs about {need / 60:.1f} min, {max(left, 0) / 60:.1f} min left"
        else:
            say(f"[{index + 1}/{len(order)}] {name} (about {need / 60:.1f} min of {left / 60:.1f} min left"
                + (f"; estimates ×{scale:.2f}, by the stages so far)" if round(scale, 2) != 1 else ")"))
            began = clock()
            if not run(name):
                result.failed = name
                return result
            took += clock() - began
            expected += estimates[name]
            result.ran.append(name)
            continue
        not_run.add(name)
        say(f"[{index + 1}/{len(order)}] {name}: not started, {result.skipped[name]}")
    return result


# Stage time for which the recorded estimates keep their say: the correction below trusts this call's
# own timings only as they add up (a few short stages are mostly DVC's start-up, and say little).
PACE_PRIOR_SECONDS = 600.0


def pace(took: float, expected: float) -> float:
    """The factor for the estimates of the stages still to run: how long the stages of this call took
    against their estimates, shrunk towards 1 by PACE_PRIOR_SECONDS. The estimates scale recorded times
    by the GEMM-1024 time, which can mislead across CPU types (2026-12-08: a 2-core AMD EPYC took 11.5 ms
    against an Intel Xeon's 6.7, yet ran the same training stages in 0.73–0.97 of the Xeon's time)."""
    return (took + PACE_PRIOR_SECONDS) / (expected + PACE_PRIOR_SECONDS)
