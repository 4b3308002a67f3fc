"""CI check: the committed results are one coherent set of `dvc repro` runs, and the README says which
of them are stale.

dvc.lock records, for every stage that ran, the hash of each input and output. Two questions are
asked of it (docs/staleness.md):

* Is it coherent? Each committed uncached output (metrics/, plots, the frozen instruments) must be
  the file (or folder) its stage's run wrote, and so must every output the lock lists that dvc.yaml
  no longer declares (no cache holds it). Anything else is a problem: exit status 1. (Entries of
  stages dvc.yaml no longer has are left alone, as `dvc repro` leaves them.)
* Which stages are stale? A stage is stale when its recorded code or params differ from the tree
  (or dvc.yaml declares an input or param its run did not record), when it read an upstream output
  other than the one its upstream recorded, when it never ran, and when anything upstream of it is
  stale. Stale results are allowed, but they must be listed, in two generated blocks that must be what
  this check computes: the README's `stale` block (the count, then one line per kind of stage naming
  its stale items, with the oldest run date) and docs/results.md's `stale_detail` block (every stale
  stage, its run date and why it is stale). The FID rows of stale evaluations carry a mark
  (.ci/check_readme.py). A frozen stage (the FID instruments) is judged by its outputs only: its code
  may change without retraining it.

    python .ci/check_lock.py [repository root]          check (exit 1 naming every problem)
    python .ci/check_lock.py [repository root] --write  rewrite both stale blocks
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STALE_MARK = "⚠"  # after a FID cell whose evaluation is stale (check_readme.py adds it)


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dir_md5(root: Path, folder: str, produced_by: dict[str, tuple[str, str]]) -> str:
    """DVC's hash of a folder input: md5 of the JSON list of its files' md5s. Files that stages make
    count with the hash their stage recorded (models are not committed), the rest as committed."""
    # A folder output inside it (`metrics/train/<name>/`) is not a file of the listing: DVC lists its files,
    # which are committed and so read from disk below.
    files = {path[len(folder) + 1:]: md5 for path, (_, md5) in produced_by.items()
             if path.startswith(folder + "/") and not str(md5).endswith(".dir")}
    for path in (root / folder).rglob("*"):
        if path.is_file():
            files[path.relative_to(root / folder).as_posix()] = file_md5(path)
    listing = [{"md5": md5, "relpath": relpath} for relpath, md5 in sorted(files.items())]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


MISSING = "<not in params.yaml>"


def lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


@dataclass
class StageDecl:
    """A stage as dvc.yaml declares it (templates resolved by DVC)."""

    deps: set[str] = field(default_factory=set)
    params: set[str] = field(default_factory=set)
    outs: set[str] = field(default_factory=set)
    uncached: set[str] = field(default_factory=set)  # outs with `cache: false`: committed in git
    frozen: bool = False
    cmd: str | None = None  # None: not compared (a test's stage without one)


Declared = dict[str, StageDecl]


def declared_stages(root: Path) -> Declared:
    """Each stage's inputs, param keys and outputs as dvc.yaml declares them."""
    from dvc.repo import Repo

    declared: Declared = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            decl = StageDecl(frozen=bool(stage.frozen), cmd=stage.cmd)
            for dep in stage.deps:
                if type(dep).__name__ == "ParamsDependency":
                    decl.params.update(dep.params)
                else:
                    decl.deps.add(dep.def_path)
            for out in stage.outs:
                decl.outs.add(out.def_path)
                if not out.use_cache:
                    decl.uncached.add(out.def_path)
            declared[stage.name] = decl
    return declared


def _norm(path: str) -> str:
    """A path as DVC means it: dvc.yaml may spell `./m.json` or `out/`, the lock keeps that spelling."""
    return posixpath.normpath(path)


def committed(path: str, decl: StageDecl) -> bool | None:
    """Whether the repository must hold `path`, an output a stage's lock entry lists: True inside an
    uncached output, False inside a cached one (`dvc pull` brings it), None where dvc.yaml no longer
    declares it. DVC lets no two outputs overlap, so at most one holds it."""
    path = _norm(path)
    holder = next((o for o in decl.outs | decl.uncached if path == _norm(o) or path.startswith(_norm(o) + "/")), None)
    return None if holder is None else holder in decl.uncached


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/") or folder.startswith(path.rstrip("/") + "/")


@dataclass
class LockReport:
    problems: list[str]  # the lock is not coherent: CI fails
    stale: dict[str, str]  # stage -> why it is stale (its first reason), in dvc.yaml order


def check(lock: dict[str, Any], params: dict[str, Any], declared: Declared, root: Path) -> LockReport:
    """Coherence problems and stale stages of `lock` against the code, params and metrics under `root`."""
    stages: dict[str, Any] = lock.get("stages", {})
    problems: list[str] = []  # entries of stages dvc.yaml no longer has are left alone: `dvc repro` keeps them too
    reasons: dict[str, list[str]] = {name: [] for name in declared}

    produced_by: dict[str, tuple[str, str]] = {}
    for name, entry in stages.items():
        for out in entry.get("outs", []):
            produced_by[out["path"]] = (name, out.get("md5"))

    for name, decl in declared.items():
        entry = stages.get(name)
        why = reasons[name]
        if entry is None:
            why.append("never ran")
            continue
        for out in entry.get("outs", []):
            path, md5 = root / out["path"], str(out.get("md5", ""))
            # An output dvc.yaml no longer declares (DVC still calls the stage current) has no cache
            # but the repository: it must be there too, or the lock lists a result no one holds.
            kept = committed(out["path"], decl)
            if md5.endswith(".dir"):  # a folder: committed (uncached) ones are checked file by file
                if kept is not False and (not path.is_dir() or dir_md5(root, out["path"], {}) != md5):
                    problems.append(f"{name}: committed folder {out['path']} is not the folder this run wrote")
            elif path.is_file():
                if file_md5(path) != md5:
                    problems.append(f"{name}: committed {out['path']} is not the file this run wrote")
            elif kept:
                problems.append(f"{name}: {out['path']} is an uncached output of this run, but not in the repository")
            elif kept is None:
                problems.append(f"{name}: {out['path']} is an output of this run that dvc.yaml no longer declares, "
                                "and not in the repository")
        if decl.frozen:  # an instrument: its committed bytes are the result, whatever its code does today
            continue
        if decl.cmd is not None and entry.get("cmd") != decl.cmd:
            why.append(f"command changed: {entry.get('cmd')!r} ran, dvc.yaml says {decl.cmd!r}")
        for dep in entry.get("deps", []):
            path, md5 = dep["path"], dep.get("md5")
            if path in produced_by:
                producer, made = produced_by[path]
                if md5 != made:
                    why.append(f"read {path} {str(md5)[:8]}, but {producer} recorded {str(made)[:8]}")
            elif str(md5).endswith(".dir"):
                if dir_md5(root, path, produced_by) != md5:
                    why.append(f"read another version of the folder {path}")
            elif not (root / path).is_file():
                why.append(f"input {path} is neither committed nor made by a stage")
            elif file_md5(root / path) != md5:
                why.append(f"code changed: {path}")
        for values in entry.get("params", {}).values():
            for key, value in values.items():
                current = lookup(params, key)
                if current != value:
                    why.append(f"params changed: {key} = {value!r}, params.yaml has {current!r}")
        recorded = {dep["path"] for dep in entry.get("deps", [])}
        recorded_keys = {key for values in entry.get("params", {}).values() for key in values}
        why += [f"dvc.yaml declares input {path}, not recorded by its run" for path in sorted(decl.deps - recorded)]
        why += [f"dvc.yaml declares param {key}, not recorded by its run" for key in sorted(decl.params - recorded_keys)]
        made = {_norm(out["path"]) for out in entry.get("outs", [])}
        why += [f"dvc.yaml declares output {path}, not made by its run" for path in sorted(decl.outs) if _norm(path) not in made]

    # Downstream: a stage reading (a folder holding) an output of a stale stage is stale too.
    outs = {name: decl.outs for name, decl in declared.items()}
    changed = True
    while changed:
        changed = False
        for name, decl in declared.items():
            if reasons[name] or decl.frozen:
                continue
            for upstream, made in outs.items():
                if upstream != name and reasons[upstream] and any(_inside(d, o) for d in decl.deps for o in made):
                    reasons[name].append(f"upstream {upstream} is stale")
                    changed = True
                    break
    return LockReport(problems, {name: why[0] for name, why in reasons.items() if why})


def lock_problems(lock: dict[str, Any], params: dict[str, Any], declared: Declared, root: Path) -> list[str]:
    """Every way in which `lock` is not one coherent run: its problems, then its stale stages."""
    report = check(lock, params, declared, root)
    return report.problems + [f"{name}: stale: {why}" for name, why in report.stale.items()]


LEGACY_DATES = Path(__file__).with_name("run_dates.json")


def run_date(root: Path, decl: StageDecl) -> str:
    """When a stage last ran: the date its timing file records (`run.date`), else the date .ci/run_dates.json
    gives results made before stages recorded one, else `unknown`. Never from git: a shallow clone or a
    rebase would change it."""
    legacy = json.loads(LEGACY_DATES.read_text()) if LEGACY_DATES.is_file() else {}
    for out in sorted(decl.outs):
        if not out.startswith("metrics/timing/"):
            continue
        run = json.loads((root / out).read_text()).get("run") if (root / out).is_file() else None
        if isinstance(run, dict) and isinstance(run.get("date"), str):
            return run["date"][:10]
        if out in legacy:
            return legacy[out]
    return "unknown"


def _when(root: Path, declared: Declared, name: str, why: str) -> str:
    return "never" if why == "never ran" else run_date(root, declared[name])


def _none_stale(report: LockReport, declared: Declared) -> str | None:
    if not report.stale:
        return ("No stage is stale: every committed result is a run of the committed code and params "
                f"(`python .ci/check_lock.py`, {len(declared)} stages).")
    return None


def stale_block(report: LockReport, declared: Declared, root: Path) -> str:
    """The README's stale block, compact: the count, then one line per kind of stage (`train@`, `evaluate@`,
    …, in dvc.yaml order; stages that are no foreach item last) naming its stale items, with the oldest
    run date among them. Each stage's own date and reason are in docs/results.md's `stale_detail` block."""
    none = _none_stale(report, declared)
    if none:
        return none
    lines = [f"**{len(report.stale)} of {len(declared)} stages are stale**: their committed results come from "
             "older code or params, or from upstream results that have since changed (`python .ci/check_lock.py`). "
             f"FID cells of stale evaluations carry {STALE_MARK}. `sarnet repro --for MINUTES` refreshes what fits.",
             ""]
    groups: dict[str, list[str]] = {}
    for name in report.stale:
        kind, at, _ = name.partition("@")
        groups.setdefault(kind if at else "", []).append(name)
    for kind in [k for k in groups if k] + ([""] if "" in groups else []):
        names = groups[kind]
        whens = [_when(root, declared, name, report.stale[name]) for name in names]
        dated = sorted(w for w in whens if w not in ("never", "unknown"))
        facts = [f"oldest run {dated[0]}"] if dated else []
        if whens.count("never"):
            facts.append(f"{whens.count('never')} never ran")
        label = f"`{kind}@` ×{len(names)}" if kind else f"other stages ×{len(names)}"
        items = ", ".join(name.partition("@")[2] for name in names) if kind else ", ".join(f"`{n}`" for n in names)
        lines.append(f"- {label}" + "".join(f", {fact}" for fact in facts) + f": {items}")
    return "\n".join(lines)


def stale_detail_block(report: LockReport, declared: Declared, root: Path) -> str:
    """docs/results.md's stale_detail block: every stale stage, when it last ran and why it is stale."""
    none = _none_stale(report, declared)
    if none:
        return none
    lines = [f"{len(report.stale)} of {len(declared)} stages are stale (`python .ci/check_lock.py`), in `dvc.yaml` order, "
             "each with its first reason:", "", "| stage | last run | stale because |", "| --- | --- | --- |"]
    for name, why in report.stale.items():
        lines.append(f"| `{name}` | {_when(root, declared, name, why)} | {why.replace('|', '/')} |")
    return "\n".join(lines)


def replace_block(text: str, name: str, content: str) -> str | None:
    """`text` with the content between <!-- name:start --> and <!-- name:end --> replaced; None without the block."""
    start, end = text.find(f"<!-- {name}:start -->"), text.find(f"<!-- {name}:end -->")
    if start < 0 or end < start:
        return None
    head = start + len(f"<!-- {name}:start -->")
    return text[:head] + "\n" + content + "\n" + text[end:]


def load(root: Path) -> tuple[LockReport, Declared]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    declared = declared_stages(root)
    return check(lock, params, declared, root), declared


README = "README.md"
RESULTS = "docs/results.md"


def with_block(text: str, where: str, name: str, content: str) -> tuple[str, str | None]:
    """`text` (the file `where`) with its `name` block set to `content`, and what is wrong with `text` (None: nothing)."""
    wanted = replace_block(text, name, content)
    if wanted is None:
        return text, f"{where}: no {name} block (<!-- {name}:start --> … <!-- {name}:end -->)"
    if wanted != text:
        return wanted, f"{where}: the {name} block is not what dvc.lock says (python .ci/check_lock.py --write)"
    return text, None


def readme_with_block(text: str, report: LockReport, declared: Declared, root: Path) -> tuple[str, str | None]:
    """The README text with the (compact) stale block this lock calls for, and what is wrong with `text` (None: nothing)."""
    return with_block(text, README, "stale", stale_block(report, declared, root))


def results_with_block(text: str, report: LockReport, declared: Declared, root: Path) -> tuple[str, str | None]:
    """docs/results.md's text with the stale_detail block this lock calls for, and what is wrong with `text`."""
    return with_block(text, RESULTS, "stale_detail", stale_detail_block(report, declared, root))


def main(root: Path, write: bool) -> int:
    report, declared = load(root)
    for line in report.problems:
        print(f"dvc.lock: {line}")
    failed = False
    for where, name, fix in ((README, "stale", readme_with_block), (RESULTS, "stale_detail", results_with_block)):
        path = root / where
        if not path.is_file():
            print(f"{where}: missing; it must hold the {name} block")
            failed = True
            continue
        text, wrong = fix(path.read_text(), report, declared, root)
        if wrong and write and text != path.read_text():
            path.write_text(text)
            print(f"{where}: {name} block rewritten")
        elif wrong:
            print(wrong)
            failed = True
    if failed or report.problems:
        return 1
    print(f"dvc.lock: {len(declared)} stages, coherent; {len(report.stale)} stale"
          + "".join(f"\n  {name}: {why}" for name, why in report.stale.items()))
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--write"]
    sys.exit(main(Path(args[0] if args else "."), "--write" in sys.argv[1:]))
