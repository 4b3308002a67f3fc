"""The project files a stage script imports, directly or through other project modules, found by
walking the import statements (ast) of the script, pipeline/ helpers and src/sarnet modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_file(name: str, script_dir: Path) -> Path | None:
    """The project file an absolute import name refers to, if it is one of ours."""
    parts = name.split(".")
    if parts[0] == "sarnet":
        base = ROOT / "src" / Path(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    candidate = script_dir / f"{parts[0]}.py"  # a sibling module of the stage script (pipeline/_stage.py)
    return candidate if len(parts) == 1 and candidate.is_file() else None


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from sarnet import x`
    return names


def project_imports(script: str | Path, *also: str | Path) -> set[str]:
    """Paths (relative to the project root, POSIX) of the script and every project file it imports;
    `also`: modules it imports on demand (a family module the registry loads), walked the same way."""
    script = (ROOT / script).resolve()
    seen: set[Path] = set()
    todo = [script, *((ROOT / extra).resolve() for extra in also)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            found = _module_file(name, script.parent)
            if found is not None and found not in seen:
                todo.append(found)
        package = ROOT / "src" / "sarnet"
        for parent in path.parents:  # importing sarnet.x.y runs sarnet/__init__.py and sarnet/x/__init__.py
            if (parent == package or package in parent.parents) and (parent / "__init__.py").is_file():
                todo.append(parent / "__init__.py")  # (core/, masked/, instruments/: namespace packages)
    return {p.relative_to(ROOT).as_posix() for p in seen}
