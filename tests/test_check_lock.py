"""CI's dvc.lock check: it passes a coherent run, fails an incoherent one, and finds every stale stage
(by code, by params, by upstream, never run, downstream of those) and a stale block that lies: the README's
compact one or docs/results.md's detail."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / ".ci" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_lock"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def repo(tmp_path):
    """Three stages as `dvc repro` would lock them: `make` runs make.py into a cached data file,
    `score` reads it and writes an uncached metrics file, with one param; `table` reads the metrics."""
    (tmp_path / "make.py").write_bytes(b"print('make')\n")
    (tmp_path / "score.json").write_bytes(b'{"fid": 4.2}\n')
    (tmp_path / "table.md").write_bytes(b"| 4.2 |\n")
    data_md5 = md5(b"arrays")
    lock = {"stages": {
        "make": {"deps": [{"path": "make.py", "md5": md5(b"print('make')\n")}],
                 "outs": [{"path": "data.npz", "md5": data_md5}]},
        "score": {"deps": [{"path": "data.npz", "md5": data_md5}],
                  "params": {"params.yaml": {"evaluate.sets": 10}},
                  "outs": [{"path": "score.json", "md5": md5(b'{"fid": 4.2}\n')}]},
        "table": {"deps": [{"path": "score.json", "md5": md5(b'{"fid": 4.2}\n')}],
                  "outs": [{"path": "table.md", "md5": md5(b"| 4.2 |\n")}]},
    }}
    return tmp_path, lock, {"evaluate": {"sets": 10}}


def declared(check_lock, **extra):
    """What dvc.yaml declares for the fixture's stages, plus `extra` stages."""
    decl = check_lock.StageDecl
    stages = {"make": decl({"make.py"}, set(), {"data.npz"}),
              "score": decl({"data.npz"}, {"evaluate.sets"}, {"score.json"}, {"score.json"}),
              "table": decl({"score.json"}, set(), {"table.md"}, {"table.md"})}
    return stages | extra


def test_a_coherent_current_lock_passes(check_lock, repo):
    root, lock, params = repo
    report = check_lock.check(lock, params, declared(check_lock), root)
    assert report.problems == [] and report.stale == {}


def test_stale_by_code_and_everything_downstream(check_lock, repo):
    root, lock, params = repo
    (root / "make.py").write_bytes(b"print('changed')\n")
    report = check_lock.check(lock, params, declared(check_lock), root)
    assert report.problems == []
    assert report.stale == {"make": "code changed: make.py", "score": "upstream make is stale",
                            "table": "upstream score is stale"}


def test_stale_by_params_leaves_upstream_current(check_lock, repo):
    root, lock, params = repo
    params["evaluate"]["sets"] = 50
    report = check_lock.check(lock, params, declared(check_lock), root)
    assert report.stale == {"score": "params changed: evaluate.sets = 10, params.yaml has 50",
                            "table": "upstream score is stale"}


def test_stale_by_upstream_a_stage_that_read_another_run_s_output(check_lock, repo):
    root, lock, params = repo
    lock["stages"]["score"]["deps"][0]["md5"] = md5(b"other arrays")
    report = check_lock.check(lock, params, declared(check_lock), root)
    assert list(report.stale) == ["score", "table"]
    assert report.stale["score"].startswith("read data.npz") and "but make recorded" in report.stale["score"]


def test_a_stage_never_run_is_stale_and_so_is_what_reads_its_outputs(check_lock, repo):
    root, lock, params = repo
    stages = declared(check_lock, plot=check_lock.StageDecl({"table.md"}, set(), {"plot.png"}),
                      caption=check_lock.StageDecl({"plot.png"}, set(), {"caption.txt"}))
    report = check_lock.check(lock, params, stages, root)
    assert report.problems == []
    assert report.stale == {"plot": "never ran", "caption": "never ran"}
    # `caption` ran once, reading a plot.png that no recorded run of `plot` made
    lock["stages"]["caption"] = {"deps": [{"path": "plot.png", "md5": md5(b"png")}],
                                 "outs": [{"path": "caption.txt", "md5": md5(b"text")}]}
    assert check_lock.check(lock, params, stages, root).stale["caption"] == "input plot.png is neither committed nor made by a stage"
    lock["stages"]["plot"] = {"deps": [{"path": "table.md", "md5": md5(b"| 4.2 |\n")}], "outs": [{"path": "plot.png", "md5": md5(b"png")}]}
    assert check_lock.check(lock, params, stages, root).stale == {}


def test_an_input_or_param_declared_after_the_run_makes_the_stage_stale(check_lock, repo):
    # dvc.yaml gained an input (a module the stage imports) and a param key; the lock predates both
    root, lock, params = repo
    params["evaluate"]["seed"] = 2024
    stages = declared(check_lock)
    stages["score"].deps.add("src/fid.py")
    stages["score"].params.add("evaluate.seed")
    report = check_lock.check(lock, params, stages, root)
    assert report.stale["score"] == "dvc.yaml declares input src/fid.py, not recorded by its run"


def test_a_changed_command_or_a_new_output_makes_the_stage_stale(check_lock, repo):
    root, lock, params = repo
    stages = declared(check_lock)
    lock["stages"]["make"]["cmd"] = "python make.py"
    stages["make"].cmd = "python make.py --fast"
    assert check_lock.check(lock, params, stages, root).stale["make"] == (
        "command changed: 'python make.py' ran, dvc.yaml says 'python make.py --fast'")
    stages["make"].cmd = "python make.py"
    stages["score"].outs.add("score_sets.json")
    report = check_lock.check(lock, params, stages, root)
    assert report.stale == {"score": "dvc.yaml declares output score_sets.json, not made by its run",
                            "table": "upstream score is stale"}


def test_a_committed_output_folder_is_checked_file_by_file(check_lock, repo):
    root, lock, params = repo
    (root / "grids").mkdir()
    (root / "grids" / "a.png").write_bytes(b"png a")
    listing = [{"md5": md5(b"png a"), "relpath": "a.png"}]
    lock["stages"]["table"]["outs"].append({"path": "grids", "md5": md5(json.dumps(listing, sort_keys=True).encode()) + ".dir"})
    stages = declared(check_lock)
    stages["table"].outs.add("grids")
    stages["table"].uncached.add("grids")
    assert check_lock.check(lock, params, stages, root).problems == []
    (root / "grids" / "b.png").write_bytes(b"png b")  # a file the run did not write
    assert check_lock.check(lock, params, stages, root).problems == [
        "table: committed folder grids is not the folder this run wrote"]
    for child in (root / "grids").iterdir():
        child.unlink()
    (root / "grids").rmdir()
    assert check_lock.check(lock, params, stages, root).problems == [
        "table: committed folder grids is not the folder this run wrote"]


def test_edited_or_missing_committed_outputs_are_problems(check_lock, repo):
    root, lock, params = repo
    (root / "score.json").write_bytes(b'{"fid": 1.0}\n')
    (root / "table.md").unlink()
    lock["stages"]["gone"] = {"deps": []}  # a stage dvc.yaml dropped: DVC keeps its entry, and so may we
    report = check_lock.check(lock, params, declared(check_lock), root)
    assert report.problems == ["score: committed score.json is not the file this run wrote",
                               "table: table.md is an uncached output of this run, but not in the repository"]


def test_every_missing_output_the_lock_lists_is_a_problem_unless_dvc_yaml_caches_it(check_lock, repo):
    # issue 31: dvc.yaml dropped `score.json` (DVC still calls the stage current) and the file is gone;
    # the lock lists a result no one holds, yet the check returned []
    root, lock, params = repo
    (root / "score.json").unlink()
    stages = declared(check_lock)
    stages["score"].outs.clear()
    stages["score"].uncached.clear()
    assert check_lock.lock_problems(lock, params, stages, root) == [
        "score: score.json is an output of this run that dvc.yaml no longer declares, and not in the repository"]
    # the same output spelled `./score.json` in dvc.yaml (the lock keeps DVC's spelling), a file of an
    # uncached folder, and a cached output (dvc pull brings it) that nobody committed
    stages["score"].outs.add("./score.json/")
    stages["score"].uncached.add("./score.json/")
    assert check_lock.lock_problems(lock, params, stages, root) == [
        "score: score.json is an uncached output of this run, but not in the repository"]
    lock["stages"]["score"]["outs"] = [{"path": "grids/a.png", "md5": md5(b"png")}]
    stages["score"].outs, stages["score"].uncached = {"grids"}, {"grids"}
    assert check_lock.check(lock, params, stages, root).problems == [
        "score: grids/a.png is an uncached output of this run, but not in the repository"]
    stages["score"].uncached.clear()
    assert check_lock.check(lock, params, stages, root).problems == []


def test_a_param_declared_after_the_run_makes_the_stage_stale(check_lock, repo):
    root, lock, params = repo
    params["evaluate"]["seed"] = 2024
    stages = declared(check_lock)
    stages["score"].params.add("evaluate.seed")
    report = check_lock.check(lock, params, stages, root)
    assert report.stale == {"score": "dvc.yaml declares param evaluate.seed, not recorded by its run",
                            "table": "upstream score is stale"}


def test_a_frozen_stage_reading_a_stale_output_stays_current(check_lock, repo):
    # an instrument trained on data whose code has since changed: its committed bytes are still the result
    root, lock, params = repo
    (root / "make.py").write_bytes(b"print('changed')\n")
    stages = declared(check_lock)
    stages["score"].frozen = True
    assert check_lock.check(lock, params, stages, root).stale == {"make": "code changed: make.py"}


def test_a_frozen_stage_is_judged_by_its_outputs_only(check_lock, repo):
    # an instrument: its code changed, but its committed output is still the file its run wrote
    root, lock, params = repo
    (root / "make.py").write_bytes(b"print('changed')\n")
    stages = declared(check_lock)
    stages["make"].frozen = True
    assert check_lock.check(lock, params, stages, root).stale == {}


def test_folder_inputs_are_hashed_like_dvc_from_committed_and_stage_made_files(check_lock, repo):
    # `summary` reads a folder holding a committed metrics file and a model only the `make` stage made
    # (absent here, as in a fresh clone): its hash must follow both.
    root, lock, params = repo
    (root / "results").mkdir()
    (root / "results" / "fid.json").write_bytes(b"{}\n")
    lock["stages"]["make"]["outs"].append({"path": "results/model.pt", "md5": md5(b"weights")})
    listing = [{"md5": md5(b"{}\n"), "relpath": "fid.json"}, {"md5": md5(b"weights"), "relpath": "model.pt"}]
    folder_md5 = md5(json.dumps(listing, sort_keys=True).encode()) + ".dir"
    lock["stages"]["summary"] = {"deps": [{"path": "results", "md5": folder_md5}]}
    stages = declared(check_lock, summary=check_lock.StageDecl({"results"}, set(), set()))
    stages["make"].outs.add("results/model.pt")
    assert check_lock.check(lock, params, stages, root).stale == {}
    (root / "results" / "fid.json").write_bytes(b'{"edited": 1}\n')
    assert check_lock.check(lock, params, stages, root).stale == {"summary": "read another version of the folder results"}
    (root / "results" / "fid.json").write_bytes(b"{}\n")
    (root / "make.py").write_bytes(b"print('changed')\n")  # the folder holds an output of a stale stage
    assert check_lock.check(lock, params, stages, root).stale["summary"] == "upstream make is stale"


def test_a_folder_input_holding_a_committed_output_folder_lists_its_files_as_dvc_does(check_lock, repo):
    # `make` also writes the committed folder results/curves/; DVC's hash of `results` lists the files
    # inside it, never the subfolder's own .dir hash (the bug that kept `fid_table` stale for good).
    root, lock, params = repo
    (root / "results" / "curves").mkdir(parents=True)
    (root / "results" / "curves" / "a.csv").write_bytes(b"x,y\n")
    def dir_hash(relpath: str) -> str:  # DVC's hash of a folder holding only a.csv, at `relpath`
        return md5(json.dumps([{"md5": md5(b"x,y\n"), "relpath": relpath}], sort_keys=True).encode()) + ".dir"
    lock["stages"]["make"]["outs"].append({"path": "results/curves", "md5": dir_hash("a.csv")})
    lock["stages"]["summary"] = {"deps": [{"path": "results", "md5": dir_hash("curves/a.csv")}]}
    stages = declared(check_lock, summary=check_lock.StageDecl({"results"}, set(), set()))
    stages["make"].outs.add("results/curves")
    stages["make"].uncached.add("results/curves")
    assert check_lock.check(lock, params, stages, root).stale == {}
    (root / "results" / "curves" / "a.csv").write_bytes(b"x,y\n1,2\n")
    assert check_lock.check(lock, params, stages, root).stale["summary"] == "read another version of the folder results"


def readme(block: str, name: str = "stale") -> str:
    return f"# x\n\n<!-- {name}:start -->\n{block}\n<!-- {name}:end -->\n\nmore\n"


def test_the_stale_blocks_list_each_stale_stage_with_its_run_date_and_reason(check_lock, repo):
    root, lock, params = repo
    stages = declared(check_lock)
    stages["score"].outs.add("metrics/timing/score.json")
    (root / "metrics" / "timing").mkdir(parents=True)
    (root / "metrics" / "timing" / "score.json").write_text(json.dumps({"run": {"date": "2026-12-05T10:00:00Z"}}))
    params["evaluate"]["sets"] = 50
    report = check_lock.check(lock, params, stages, root)
    block = check_lock.stale_block(report, stages, root)
    assert "**2 of 3 stages are stale**" in block
    assert block.endswith("\n\n- other stages ×2, oldest run 2026-12-05: `score`, `table`")  # compact: no reasons
    detail = check_lock.stale_detail_block(report, stages, root)
    assert detail.startswith("2 of 3 stages are stale")
    assert "| `score` | 2026-12-05 | params changed: evaluate.sets = 10, params.yaml has 50 |" in detail
    assert "| `table` | unknown | upstream score is stale |" in detail  # no timing file, no git history
    text, wrong = check_lock.readme_with_block(readme(block), report, stages, root)
    assert wrong is None and text == readme(block)
    text, wrong = check_lock.results_with_block(readme(detail, "stale_detail"), report, stages, root)
    assert wrong is None and text == readme(detail, "stale_detail")


def test_the_readme_s_stale_block_is_one_line_per_kind_of_stage_with_its_oldest_run(check_lock, tmp_path):
    """67 stale stages were a 67-row table in the README: now one line per `kind@` (dvc.yaml order), the
    stages that are no foreach item last; each line names its items and their oldest run."""
    decl = check_lock.StageDecl
    timing = {"train@a": "2026-12-07", "train@b": "2026-12-03", "evaluate@a": "2026-12-04", "fid_table": "2026-12-08"}
    (tmp_path / "metrics" / "timing").mkdir(parents=True)
    stages = {}
    for name in ("train@a", "train@b", "train@c", "evaluate@a", "evaluate@c", "fid_table", "calibrate"):
        out = f"metrics/timing/{name.replace('@', '_')}.json"
        stages[name] = decl(outs={out})
        if name in timing:
            (tmp_path / out).write_text(json.dumps({"run": {"date": timing[name] + "T10:00:00Z"}}))
    report = check_lock.LockReport([], {"train@a": "code changed: a.py", "train@b": "params changed: x",
                                        "train@c": "never ran", "evaluate@a": "upstream train@a is stale",
                                        "evaluate@c": "never ran", "fid_table": "upstream evaluate@a is stale"})
    assert check_lock.stale_block(report, stages, tmp_path).split("\n")[1:] == [
        "",
        "- `train@` ×3, oldest run 2026-12-03, 1 never ran: a, b, c",
        "- `evaluate@` ×2, oldest run 2026-12-04, 1 never ran: a, c",
        "- other stages ×1, oldest run 2026-12-08: `fid_table`"]
    assert "**6 of 7 stages are stale**" in check_lock.stale_block(report, stages, tmp_path)
    detail = check_lock.stale_detail_block(report, stages, tmp_path).split("\n")
    assert detail[2:] == ["| stage | last run | stale because |", "| --- | --- | --- |",
                          "| `train@a` | 2026-12-07 | code changed: a.py |", "| `train@b` | 2026-12-03 | params changed: x |",
                          "| `train@c` | never | never ran |", "| `evaluate@a` | 2026-12-04 | upstream train@a is stale |",
                          "| `evaluate@c` | never | never ran |", "| `fid_table` | 2026-12-08 | upstream evaluate@a is stale |"]
    fresh = check_lock.LockReport([], {})
    assert check_lock.stale_block(fresh, stages, tmp_path).startswith("No stage is stale")
    assert check_lock.stale_detail_block(fresh, stages, tmp_path).startswith("No stage is stale")


def test_a_stale_block_that_lies_is_reported_and_rewritten(check_lock, repo):
    root, lock, params = repo
    (root / "make.py").write_bytes(b"print('changed')\n")
    stages = declared(check_lock)
    report = check_lock.check(lock, params, stages, root)
    current = check_lock.stale_block(report, stages, root)
    lie = "No stage is stale: every committed result is a run of the committed code and params."
    text, wrong = check_lock.readme_with_block(readme(lie), report, stages, root)
    assert wrong.startswith("README.md: the stale block is not what dvc.lock says")
    assert text == readme(current) and "- other stages ×3: `make`, `score`, `table`" in text
    assert check_lock.readme_with_block("# no block\n", report, stages, root)[1].startswith("README.md: no stale block")
    text, wrong = check_lock.results_with_block(readme(lie, "stale_detail"), report, stages, root)
    assert wrong.startswith("docs/results.md: the stale_detail block is not what dvc.lock says")
    assert "| `make` | unknown | code changed: make.py |" in text
    assert check_lock.results_with_block("# no block\n", report, stages, root)[1].startswith(
        "docs/results.md: no stale_detail block")


def test_main_checks_and_writes_the_readme_s_block_and_the_detail_block_in_docs_results(check_lock, repo, monkeypatch, capsys):
    root, lock, params = repo
    (root / "make.py").write_bytes(b"print('changed')\n")
    stages = declared(check_lock)
    report = check_lock.check(lock, params, stages, root)
    monkeypatch.setattr(check_lock, "load", lambda _: (report, stages))  # dvc.yaml's stages without DVC
    lie = "No stage is stale."
    (root / "README.md").write_text(readme(check_lock.stale_block(report, stages, root)))
    assert check_lock.main(root, write=False) == 1
    assert "docs/results.md: missing; it must hold the stale_detail block" in capsys.readouterr().out
    (root / "docs").mkdir()
    (root / "docs" / "results.md").write_text(readme(lie, "stale_detail"))
    assert check_lock.main(root, write=False) == 1
    out = capsys.readouterr().out
    assert "docs/results.md: the stale_detail block is not what dvc.lock says" in out and "README.md" not in out
    assert check_lock.main(root, write=True) == 0
    assert "docs/results.md: stale_detail block rewritten" in capsys.readouterr().out
    assert "| `make` | unknown | code changed: make.py |" in (root / "docs" / "results.md").read_text()
    (root / "README.md").write_text(readme(lie))
    assert check_lock.main(root, write=False) == 1
    assert "README.md: the stale block is not what dvc.lock says" in capsys.readouterr().out
    assert check_lock.main(root, write=True) == 0 and check_lock.main(root, write=False) == 0


def test_declared_stages_reads_dvc_yaml_as_dvc_resolves_it(check_lock):
    stages = check_lock.declared_stages(ROOT)
    fashion = stages["train@sarnet_vae_fashion_L128"]  # a foreach stage, its templates filled in
    assert "pipeline/train_model.py" in fashion.deps and "data/prepared/fashion.npz" in fashion.deps
    assert "src/sarnet/families/sarnet_vae.py" in fashion.deps  # from the entry's `family`, through its base
    assert "models.sarnet_vae_fashion_L128" in fashion.params and "calibrate" in stages
    assert "metrics/calibration.json" in stages["calibrate"].uncached


def test_declared_stages_are_named_by_stage_from_any_working_directory(check_lock, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVC's own stage addresses would then be paths relative to here
    stages = check_lock.declared_stages(ROOT)
    assert "calibrate" in stages and "prepare@mnist" in stages


def test_run_dates_come_from_the_timing_file_else_the_committed_legacy_list_never_git(check_lock, tmp_path, monkeypatch):
    legacy = tmp_path / "run_dates.json"
    legacy.write_text(json.dumps({"metrics/timing/old.json": "2026-12-03"}))
    monkeypatch.setattr(check_lock, "LEGACY_DATES", legacy)
    (tmp_path / "metrics" / "timing").mkdir(parents=True)
    (tmp_path / "metrics" / "timing" / "old.json").write_text(json.dumps({"seconds": 1.0}))
    (tmp_path / "metrics" / "timing" / "new.json").write_text(json.dumps({"seconds": 1.0, "run": {"date": "2026-12-06T22:00:00Z"}}))
    (tmp_path / "metrics" / "timing" / "other.json").write_text(json.dumps({"seconds": 1.0}))
    date = lambda out: check_lock.run_date(tmp_path, check_lock.StageDecl(outs={"models/m.pt", out}))  # noqa: E731
    assert date("metrics/timing/old.json") == "2026-12-03"
    assert date("metrics/timing/new.json") == "2026-12-06"
    assert date("metrics/timing/other.json") == "unknown"  # not in the list, and git is never asked
