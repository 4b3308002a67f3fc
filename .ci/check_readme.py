"""CI check: the results the README and docs/results.md show are the committed metrics, so they cannot
drift from the run.

    python .ci/check_readme.py           # check: exit 1 naming every difference, with its file
    python .ci/check_readme.py --write   # after a results run: rewrite those parts from metrics/, in their files

Generated blocks (<!-- name:start --> … <!-- name:end -->) are looked for in README.md and docs/results.md
and checked (and written) in whichever holds them; a block that neither holds is an error. Today the
README holds the FID table (`fid_table`: metrics/fid_table.md, verbatim) and the module map
(`module_map`: the package docstring's, its one source; required once src/sarnet/ exists), and
docs/results.md holds §4.1's ablation tables (`sarnet_ablation`: metrics/sarnet_ablation.md, verbatim),
the generative XGBoost's variants (`gen_xgboost_variants`: metrics/gen_xgboost_variants.md, verbatim)
and the numbers of every row of the training table (`training`: from metrics/train/ and
metrics/timing/train/). The prose around them and the reference column are the author's. In the FID
table each of our CNN cells also carries its evaluation's run date and, when that evaluation is stale
(.ci/check_lock.py) or newer than the table, a mark: `4.743 ± 0.235 (50; 2026-12-03) ⚠`. `--write` also
rewrites the two stale blocks that check_lock.py checks (the README's `stale`, docs/results.md's
`stale_detail`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

from sarnet.core.params import resolve_models

README = Path("README.md")
RESULTS = Path("docs") / "results.md"
DOCUMENTS = (README, RESULTS)  # where generated blocks may live
METRICS = Path("metrics")


def block(text: str, name: str) -> tuple[int, int]:
    """Start and end offsets of the text between <!-- name:start --> and <!-- name:end -->."""
    start, end = text.find(f"<!-- {name}:start -->"), text.find(f"<!-- {name}:end -->")
    if start < 0 or end < start:
        sys.exit(f"error: no {name} block (<!-- {name}:start --> … <!-- {name}:end -->)")
    return start, end


def _check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", Path(__file__).with_name("check_lock.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_lock"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


STALE_MARK = _check_lock().STALE_MARK


def annotate_fid_table(table: str, summary: dict[str, dict], current: dict[str, dict], dates: dict[str, str],
                       stale: set[str]) -> str:
    """The FID table as the README shows it: each model's CNN cell (`mean ± std (sets)` as in `summary`,
    metrics/fid.json) with its evaluation's run date (`dates`), and the stale mark when the evaluation is
    `stale` or when its metrics file (`current`, metrics/fid/<model>.json) no longer holds the table's numbers."""
    for model, record in summary.items():
        if model not in dates:
            continue
        record = record.get("cnn", record) | {"sets": record["sets"]}  # metrics/fid.json before issue 30: flat
        now = current.get(model, {})
        now = now.get("cnn", now)  # the CNN's numbers (records written before issue 30 kept them at the top level)
        newer = (now.get("mean"), now.get("std")) != (record["mean"], record["std"])
        cell = f"{record['mean']:.3f} ± {record['std']:.3f} ({record['sets']})"
        shown = f"{cell[:-1]}; {dates[model]})" + (f" {STALE_MARK}" if model in stale or newer else "")
        table = table.replace(f"| {cell} |", f"| {shown} |")
    return table


def readme_fid_table(root: Path = Path(".")) -> str:
    """metrics/fid_table.md annotated from dvc.lock, metrics/fid.json and metrics/fid/ (as is without a pipeline)."""
    table = (root / METRICS / "fid_table.md").read_text()
    if not ((root / "dvc.lock").is_file() and (root / METRICS / "fid.json").is_file()):
        return table
    check_lock = _check_lock()
    report, declared = check_lock.load(root)
    evaluated_by = {Path(out).stem: name for name, decl in declared.items() for out in decl.outs
                    if out.startswith("metrics/fid/") and out.count("/") == 2}
    summary = json.loads((root / METRICS / "fid.json").read_text())
    current = {model: json.loads(path.read_text()) for model in summary
               if (path := root / METRICS / "fid" / f"{model}.json").is_file()}
    dates = {model: check_lock.run_date(root, declared[stage]) for model, stage in evaluated_by.items()}
    return annotate_fid_table(table, summary, current, dates,
                              {model for model, stage in evaluated_by.items() if stage in report.stale})


def verbatim(text: str, name: str, table: str | None = None) -> tuple[str, list[str]]:
    """A document's `name` block holds metrics/<name>.md verbatim, from the file's first line to the block's
    end, or to `<!-- name:table-end -->` where the author's prose follows the table inside the block. Only
    the first line is searched for, so a table that gains rows (a new model) is still found and rewritten.
    `table`: what the block must hold instead of the file as it is (the annotated FID table)."""
    table = ((METRICS / f"{name}.md").read_text() if table is None else table).strip()
    start, end = block(text, name)
    inside = text[start:end]
    marker = f"<!-- {name}:start -->"
    if not inside[len(marker):].strip():  # an empty block: --write fills it
        return text[:start] + f"{marker}\n{table}\n" + text[end:], [f"{name} block: empty, metrics/{name}.md is not in it"]
    i = inside.find(table.splitlines()[0][:40])
    if i < 0:
        return text, [f"{name} block: no table to compare (the first line of metrics/{name}.md is missing)"]
    table_end = inside.find(f"<!-- {name}:table-end -->")
    j = table_end if table_end >= 0 else len(inside)
    if inside[i:j].rstrip("\n") == table:
        return text, []
    return (text[:start] + inside[:i] + table + "\n" + inside[j:] + text[end:],
            [f"{name} block: differs from metrics/{name}.md"])


def _row(model: str, epochs: int, train: dict, timing: dict, reference: str) -> str:
    digits = 3 if train["final_train_loss"] < 10 else 2  # the simple SarNETs' losses are below 1
    f = lambda x: f"{x:.{digits}f}"  # noqa: E731
    return (f"| {model} | {epochs} | {f(train['final_train_loss'])} / {f(train['final_test_loss'])} | "
            f"{f(train['best_test_loss'])} (epoch {train['best_test_epoch']}) | {reference} | "
            f"{timing['seconds_per_epoch']:.2f} | {timing['seconds']:.0f} |")


def training_table(text: str, document: str = "README.md") -> tuple[str, list[str]]:
    """The `training` block's rows against metrics/train/ and metrics/timing/train/ (`document`: the file it is in)."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    start, end = block(text, "training")
    lines, problems = text[start:end].split("\n"), []
    models = resolve_models(params)
    for index, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or not re.fullmatch(r"(sarnet|conv_vae|sarnet_vae)\w*( \(simple\))?", cells[0]):
            continue
        model = cells[0]
        name = "sarnet" if model == "sarnet (simple)" else model
        train_path, timing_path = METRICS / "train" / f"{name}.json", METRICS / "timing" / "train" / f"{name}.json"
        if not (train_path.exists() and timing_path.exists()):
            problems.append(f"training block: {model}: no {train_path} or {timing_path}")
            continue
        if name not in params["models"]:
            problems.append(f"training block: {model}: no such entry in params.yaml's `models`")
            continue
        epochs = models[name]["epochs"]
        expected = _row(model, epochs, json.loads(train_path.read_text()), json.loads(timing_path.read_text()), cells[4])
        if line.strip() != expected:
            problems.append(f"training block: {model}: {document} says\n    {line.strip()}\n  metrics say\n    {expected}")
            lines[index] = expected
    return text[:start] + "\n".join(lines) + text[end:], problems


def module_map(root: Path = Path(".")) -> str:
    """The module map of `src/sarnet/__init__.py`'s docstring (its one source), as the README shows it."""
    import ast

    doc = ast.get_docstring(ast.parse((root / "src" / "sarnet" / "__init__.py").read_text())) or ""
    if "Module map" not in doc:
        sys.exit("error: src/sarnet/__init__.py's docstring has no module map")
    lines = doc.split("Module map", 1)[1].split(":\n", 1)[1].splitlines()  # the map: after its (wrapped) heading
    return "```\n" + "\n".join(line.rstrip() for line in lines).strip("\n") + "\n```"


def module_map_block(text: str, root: Path = Path(".")) -> tuple[str, list[str]]:
    """The `module_map` block (in the README) must be the package docstring's module map."""
    start, end = block(text, "module_map")
    head = start + len("<!-- module_map:start -->")
    wanted = "\n" + module_map(root) + "\n"
    if text[head:end] == wanted:
        return text, []
    return text[:head] + wanted + text[end:], ["module_map block: differs from src/sarnet/__init__.py's module map"]


BLOCKS = ("fid_table", "sarnet_ablation", "gen_xgboost_variants", "calibration", "training", "module_map")


def check_blocks(texts: dict[Path, str], root: Path = Path(".")) -> tuple[dict[Path, str], list[str]]:
    """Every generated block, in every document of `texts` that holds it, against metrics/ (and the module map
    against the package docstring): the texts as `--write` leaves them, and one problem per difference, each
    naming its document. Exits naming every block that no document holds (the module map: only once
    src/sarnet/ exists)."""
    wanted_map = (root / "src" / "sarnet" / "__init__.py").is_file()
    missing = [name for name in BLOCKS if not any(f"<!-- {name}:start -->" in text for text in texts.values())
               and (name != "module_map" or wanted_map)]
    if missing:
        sys.exit(f"error: no {', '.join(missing)} block in {' or '.join(doc.as_posix() for doc in DOCUMENTS)}")
    texts, problems, fid_table = dict(texts), [], None
    for name in BLOCKS:
        for doc, text in texts.items():
            where = doc.as_posix()
            start = text.find(f"<!-- {name}:start -->")
            if start < 0:
                continue
            if text.find(f"<!-- {name}:end -->", start) < 0:
                sys.exit(f"error: {where}: the {name} block has no end (<!-- {name}:end -->)")
            if name == "fid_table":
                fid_table = readme_fid_table(root) if fid_table is None else fid_table
                texts[doc], found = verbatim(text, name, fid_table)
            elif name == "training":
                texts[doc], found = training_table(text, where)
            elif name == "module_map":
                texts[doc], found = module_map_block(text, root)
            elif name == "calibration":  # metrics/calibration.md below its `# …` title
                calibration = (root / METRICS / "calibration.md").read_text().split("\n", 1)
                body = calibration[1] if calibration[0].startswith("# ") and len(calibration) > 1 else "\n".join(calibration)
                texts[doc], found = verbatim(text, name, body)
            else:
                texts[doc], found = verbatim(text, name)
            problems += [f"{where}: {problem}" for problem in found]
    return texts, problems


def main() -> None:
    before = {doc: doc.read_text() for doc in DOCUMENTS if doc.is_file()}
    texts, problems = check_blocks(before)
    if "--write" in sys.argv[1:]:
        for doc, text in texts.items():
            if text != before[doc]:
                doc.write_text(text)
            count = sum(problem.startswith(f"{doc.as_posix()}: ") for problem in problems)
            print(f"{doc.as_posix()}: {count} part(s) rewritten from metrics/")
        if Path("dvc.yaml").is_file():
            _check_lock().main(Path("."), write=True)
        return
    if problems:
        print("Results differ from the committed metrics (python .ci/check_readme.py --write):\n  "
              + "\n  ".join(problems))
        sys.exit(1)
    print(f"{', '.join(doc.as_posix() for doc in texts)}: results match metrics/")


if __name__ == "__main__":
    main()
