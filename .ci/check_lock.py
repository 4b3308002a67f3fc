"""CI check: the committed results come from one coherent `dvc repro` of the committed code.

dvc.lock records, for every stage that ran, the hash of each input and output. The committed
lock is coherent when
  * every stage of dvc.yaml has a lock entry (the whole pipeline ran),
  * each input that is a file of the repository (code) has the hash recorded when the stage ran,
  * each input made by another stage has the hash that stage recorded for it (every stage read
    the outputs of the upstream runs that are committed, not of some other run),
  * each recorded param equals params.yaml's value,
  * each input and param dvc.yaml declares was recorded (a dependency added to dvc.yaml without
    a re-run leaves the lock stale), and
  * each uncached output (metrics/, plots) is the committed file.
Models and data are not committed, so outputs kept in DVC's cache are checked only between stages.

    python .ci/check_lock.py [repository root]     (exit status 1 and one line per problem)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dir_md5(root: Path, folder: str, produced_by: dict[str, tuple[str, str]]) -> str:
    """DVC's hash of a folder input: md5 of the JSON list of its files' md5s. Files that stages make
    count with the hash their stage recorded (models are not committed), the rest as committed."""
    files = {path[len(folder) + 1:]: md5 for path, (_, md5) in produced_by.items() if path.startswith(folder + "/")}
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


Declared = dict[str, tuple[set[str], set[str]]]  # stage -> (input paths, param keys) in dvc.yaml


def declared_inputs(root: Path) -> Declared:
    """Each stage's inputs and param keys as dvc.yaml declares them (templates resolved by DVC)."""
    from dvc.repo import Repo

    declared: Declared = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            paths, keys = set(), set()
            for dep in stage.deps:
                if type(dep).__name__ == "ParamsDependency":
                    keys.update(dep.params)
                else:
                    paths.add(dep.def_path)
            declared[stage.name] = (paths, keys)
    return declared


def lock_problems(lock: dict[str, Any], params: dict[str, Any], declared: Declared, root: Path) -> list[str]:
    """Every way in which `lock` is not one coherent run of the code and params under `root`."""
    stages: dict[str, Any] = lock.get("stages", {})
    problems = [f"{name}: never ran (no dvc.lock entry)" for name in declared if name not in stages]
    problems += [f"{name}: in dvc.lock but not a stage of dvc.yaml" for name in stages if name not in declared]
    for name, (paths, keys) in declared.items():
        entry = stages.get(name)
        if entry is None:
            continue
        recorded = {dep["path"] for dep in entry.get("deps", [])}
        recorded_keys = {key for values in entry.get("params", {}).values() for key in values}
        problems += [f"{name}: dvc.yaml declares input {path}, which this run did not record" for path in sorted(paths - recorded)]
        problems += [f"{name}: dvc.yaml declares param {key}, which this run did not record" for key in sorted(keys - recorded_keys)]

    produced_by: dict[str, tuple[str, str]] = {}
    for name, entry in stages.items():
        for out in entry.get("outs", []):
            produced_by[out["path"]] = (name, out.get("md5"))

    for name, entry in stages.items():
        for dep in entry.get("deps", []):
            path, md5 = dep["path"], dep.get("md5")
            if path in produced_by:
                producer, made = produced_by[path]
                if md5 != made:
                    problems.append(f"{name}: read {path} {str(md5)[:8]}, but {producer} recorded {str(made)[:8]}")
            elif str(md5).endswith(".dir"):
                if dir_md5(root, path, produced_by) != md5:
                    problems.append(f"{name}: read another version of the folder {path}")
            elif not (root / path).is_file():
                problems.append(f"{name}: input {path} is neither committed nor made by a stage")
            elif file_md5(root / path) != md5:
                problems.append(f"{name}: ran with another version of {path}")
        for values in entry.get("params", {}).values():
            for key, value in values.items():
                current = lookup(params, key)
                if current != value:
                    problems.append(f"{name}: ran with {key} = {value!r}, params.yaml has {current!r}")
        for out in entry.get("outs", []):
            path = root / out["path"]
            if path.is_file() and not str(out.get("md5", "")).endswith(".dir") and file_md5(path) != out.get("md5"):
                problems.append(f"{name}: committed {out['path']} is not the file this run wrote")
    return problems


def main(root: Path) -> int:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    problems = lock_problems(lock, params, declared_inputs(root), root)
    for line in problems:
        print(f"dvc.lock: {line}")
    if problems:
        return 1
    print(f"dvc.lock: {len(lock['stages'])} stages, one coherent run of the committed code and params")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
