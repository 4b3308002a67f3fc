"""The paper protocol's stage time per model family, now against an earlier full run, in GEMM-1024 units
(docs/staleness.md: a stage's seconds over its own GEMM-1024 time, comparable across machines).

    .venv/bin/python benchmarks/protocol_time.py [--before 8a4dd34] [--before-gemm-ms 5.4] [--gemm-ms 5.6]

Reads `metrics/wall_time.json` (written by the `fid_table` stage) in this tree and at git revision
`--before` (default: the 2026-12-03 run, 5.3 h on an AVX-512 EPYC whose GEMM-1024 took about 5.4 ms).
A stage that recorded no GEMM time is converted at `--before-gemm-ms` (before) or `--gemm-ms` (now).
Stages present on one side only are counted on that side and listed, so a family's ratio compares the
stages both runs have. Issue 33's goal: the protocol at ≤ 60 % of the 2026-12-03 run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
OTHER = "data, instruments, figures"


def stage_units(wall_time: dict, fallback_gemm_ms: float) -> dict[str, float]:
    """Each stage's time in GEMM-1024 units: its recorded units, else its seconds at `fallback_gemm_ms`."""
    recorded = wall_time.get("gemm_units", {})
    return {key: float(recorded[key]) if key in recorded else seconds * 1000 / fallback_gemm_ms
            for key, seconds in wall_time["stages"].items()}


def family_of(stage: str, families: dict[str, str]) -> str:
    """The model family a stage's key (train/<entry>, fid/<entry>, gen_xgboost…) belongs to."""
    name = stage.split("/", 1)[1] if stage.startswith(("train/", "fid/")) else stage
    if name.startswith("gen_xgboost"):
        return "xgboost"
    return families.get(name, OTHER)


def kind_of(stage: str) -> str:
    """Whether a stage's key is a training, an evaluation (its FID sets) or another stage."""
    return {"train": "trainings", "fid": "FID sets"}.get(stage.split("/", 1)[0], "other stages")


def by_family(before: dict[str, float], after: dict[str, float], families: dict[str, str],
              group: Callable[[str], str] | None = None) -> list[tuple[str, float, float, int]]:
    """(family, before, after, stages) over the stages both sides have, sorted by family; `group` maps a
    stage to another grouping than its family (`kind_of`)."""
    group = group or (lambda stage: family_of(stage, families))
    rows: dict[str, list[float]] = {}
    for stage in before.keys() & after.keys():
        row = rows.setdefault(group(stage), [0.0, 0.0, 0])
        row[0] += before[stage]
        row[1] += after[stage]
        row[2] += 1
    return [(family, b, a, int(n)) for family, (b, a, n) in sorted(rows.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="8a4dd34", help="git revision of the earlier run's metrics/wall_time.json")
    parser.add_argument("--before-gemm-ms", type=float, default=5.4, help="GEMM-1024 ms of the earlier run's machine")
    parser.add_argument("--gemm-ms", type=float, default=5.6, help="GEMM-1024 ms for stages now without a recorded one")
    args = parser.parse_args()
    old = json.loads(subprocess.run(["git", "show", f"{args.before}:metrics/wall_time.json"], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout)
    new = json.loads((ROOT / "metrics" / "wall_time.json").read_text())
    families = {name: entry.get("family", "?") for name, entry in
                yaml.safe_load((ROOT / "params.yaml").read_text())["models"].items()}
    before, after = stage_units(old, args.before_gemm_ms), stage_units(new, args.gemm_ms)
    # Seconds beside units: units correct for the GEMM speed of each machine, but only roughly
    # (docs/staleness.md "Where a result came from"), so the report shows both.
    seconds = {family: (b, a) for family, b, a, _ in by_family(old["stages"], new["stages"], families)}
    print(f"{'family':<28} {'stages':>6} {'before (k units)':>17} {'now (k units)':>14} {'now / before':>13}"
          f" {'before (s)':>11} {'now (s)':>9} {'now / before':>13}")
    for family, b, a, n in by_family(before, after, families):
        b_s, a_s = seconds[family]
        print(f"{family:<28} {n:>6} {b / 1000:>17.1f} {a / 1000:>14.1f} {a / b:>13.2f}"
              f" {b_s:>11.0f} {a_s:>9.0f} {a_s / b_s:>13.2f}")
    for kind, b, a, n in by_family(old["stages"], new["stages"], families, kind_of):
        print(f"{kind:<28} {n:>6} {'':>17} {'':>14} {'':>13} {b:>11.0f} {a:>9.0f} {a / b:>13.2f}")
    both = before.keys() & after.keys()
    b_total, a_total = sum(before[s] for s in both), sum(after[s] for s in both)
    b_sec, a_sec = sum(old["stages"][s] for s in both), sum(new["stages"][s] for s in both)
    print(f"{'stages in both runs':<28} {len(both):>6} {b_total / 1000:>17.1f} {a_total / 1000:>14.1f} {a_total / b_total:>13.2f}"
          f" {b_sec:>11.0f} {a_sec:>9.0f} {a_sec / b_sec:>13.2f}")
    for label, units, others in (("only before", before, after), ("only now", after, before)):
        only = sorted(set(units) - set(others))
        if only:
            print(f"{label}: {len(only)} stages, {sum(units[s] for s in only) / 1000:.1f}k units: {', '.join(only)}")
    for label, wall, ms in (("before", old, args.before_gemm_ms), ("now", new, args.gemm_ms)):
        guessed = set(wall["stages"]) - set(wall.get("gemm_units", {}))
        if guessed:
            print(f"{label}: {len(guessed)} of {len(wall['stages'])} stages recorded no GEMM time (converted at {ms} ms)")
    new_only = sum(after[s] for s in set(after) - set(before))
    print(f"whole protocol now: {(a_total + new_only) / 1000:.0f}k units, {(a_total + new_only) * args.gemm_ms / 3.6e6:.2f} h "
          f"at GEMM-1024 {args.gemm_ms} ms; before: {sum(before.values()) / 1000:.0f}k units "
          f"({sum(old['stages'].values()) / 3600:.2f} h on its machine); now {sum(new['stages'].values()) / 3600:.2f} h "
          f"of stage time on the machines that ran each stage")


if __name__ == "__main__":
    main()
