"""`sarnet repro --for`'s plan: stale stages and their downstream in dependency order, and only what fits."""

import pytest

from sarnet.refresh import (PACE_PRIOR_SECONDS, StageInfo, estimate_seconds, in_dependency_order, missing_inputs, pace,
                            recorded_reads, run_within, split_status, upstreams, with_downstream)

# prepare -> train -> evaluate -> table; train2 -> evaluate2 -> table; figures reads a folder of models
STAGES = [
    StageInfo("table", ("metrics/fid",), ("metrics/fid_table.md",)),  # listed first: order must come from the graph
    StageInfo("prepare", ("raw.gz",), ("data/mnist.npz",)),
    StageInfo("train", ("data/mnist.npz", "train.py"), ("models/a.pt",)),
    StageInfo("train2", ("data/mnist.npz", "train.py"), ("models/b.pt",)),
    StageInfo("evaluate", ("models/a.pt",), ("metrics/fid/a.json",)),
    StageInfo("evaluate2", ("models/b.pt",), ("metrics/fid/b.json",)),
    StageInfo("figures", ("models",), ("figures.png",)),
]


def test_upstreams_follow_files_and_folders_both_ways():
    above = upstreams(STAGES)
    assert above["table"] == {"evaluate", "evaluate2"}  # files inside the folder it reads
    assert above["figures"] == {"train", "train2"}
    assert above["prepare"] == set() and above["evaluate"] == {"train"}


def test_the_stale_stages_and_their_downstream_come_in_dependency_order():
    assert with_downstream({"train"}, STAGES) == ["train", "evaluate", "table", "figures"]
    order = with_downstream({"prepare"}, STAGES)
    # each training is followed by its evaluation, so a refresh cut short leaves scored models
    assert order == ["prepare", "train", "evaluate", "train2", "evaluate2", "table", "figures"]
    for stage, before in (("table", "evaluate"), ("table", "evaluate2"), ("evaluate2", "train2"), ("figures", "train")):
        assert order.index(before) < order.index(stage)
    assert with_downstream(set(), STAGES) == []


def test_a_frozen_stage_is_not_downstream_of_its_inputs():
    # the FID instruments: frozen, so new prepared data re-runs the generators' stages but not them
    frozen = [*STAGES, StageInfo("instrument", ("data/mnist.npz",), ("models/cnn.pt",), frozen=True),
              StageInfo("score", ("models/cnn.pt", "models/a.pt"), ("metrics/score.json",))]
    order = with_downstream({"prepare"}, frozen)
    assert "instrument" not in order and order.index("score") > order.index("train")
    assert upstreams(frozen)["instrument"] == set()
    assert with_downstream({"instrument"}, frozen) == ["instrument", "figures", "score"]  # its own change counts (figures reads models/)


def test_a_cycle_is_an_error():
    cycle = [StageInfo("a", ("y",), ("x",)), StageInfo("b", ("x",), ("y",))]
    with pytest.raises(ValueError, match="cycle"):
        with_downstream({"a"}, cycle)


def test_dvc_status_splits_into_stale_stages_and_outputs_this_machine_lacks():
    # shaped as dvc 3's Repo.status() answers (seen on a real project with its cache emptied)
    status = {
        "prepare": [{"changed outs": {"data/mnist.npz": "not in cache"}}],
        "train": [{"changed deps": {"data/mnist.npz": "deleted"}}, {"changed outs": {"models/a.pt": "not in cache"}}],
        "train2": [{"changed deps": {"data/mnist.npz": "deleted", "train.py": "modified"}}],  # code changed
        "evaluate": ["changed command"],
        "evaluate2": [{"changed deps": {"params.yaml": {"fid.sets": "modified"}}}],
        "figures": [{"changed outs": {"figures.png": "modified", "metrics/figures.json": "deleted"}}],  # edited by hand
        "table": [{"changed deps": {"metrics/fid": "deleted"}}],  # a folder no stage writes as such
    }
    present = {"models/a.pt"}  # in the work tree, not in the cache
    as_recorded = lambda stage, path: True  # noqa: E731  every stage read what its upstream recorded
    stale, missing = split_status(status, STAGES, present.__contains__, as_recorded)
    assert stale == {"train2", "evaluate", "evaluate2", "figures", "table"}
    assert missing == {"prepare": ("data/mnist.npz",), "train": ()}
    assert split_status({}, STAGES, present.__contains__, as_recorded) == (set(), {})
    # a deleted input that no stage writes (raw data gone) is not a missing output: the stage is stale
    stale, missing = split_status({"prepare": [{"changed deps": {"raw.gz": "deleted"}}]}, STAGES, present.__contains__,
                                  as_recorded)
    assert stale == {"prepare"} and missing == {}
    # train read data that prepare has replaced since: stale, although DVC only sees the file missing
    stale, missing = split_status(status, STAGES, present.__contains__, lambda stage, path: stage != "train")
    assert "train" in stale and "train" not in missing and "prepare" in missing


def test_recorded_reads_compares_what_a_stage_read_with_what_its_writer_recorded():
    lock = {"schema": "2.0", "stages": {
        "prepare": {"deps": [{"path": "raw.gz", "md5": "r1"}], "outs": [{"path": "data/mnist.npz", "md5": "d2"}]},
        "train": {"deps": [{"path": "data/mnist.npz", "md5": "d2"}], "outs": [{"path": "models/a.pt", "md5": "a1"}]},
        "train2": {"deps": [{"path": "data/mnist.npz", "md5": "d1"}], "outs": [{"path": "models/b.pt", "md5": "b1"}]},
        "figures": {"deps": [{"path": "models", "md5": "m1.dir"}], "outs": [{"path": "figures.png", "md5": "f1"}]},
    }}
    reads = recorded_reads(lock)
    assert reads("train", "data/mnist.npz") and not reads("train2", "data/mnist.npz")  # train2 read the older data
    assert not reads("evaluate", "models/a.pt")  # no run recorded: not known to be current
    assert not reads("figures", "models")  # no stage records the folder as its output
    assert not recorded_reads({})("train", "data/mnist.npz")


def test_only_the_missing_outputs_a_stale_stage_reads_are_rebuilt():
    lacking = {"prepare": ("data/mnist.npz",), "train": ("models/a.pt",), "train2": ("models/b.pt",),
               "evaluate": ()}  # evaluate lacks nothing (its outputs are in git), only its input
    # evaluate2 is stale: it needs train2's model, which needs prepare's data; train's model is not read
    assert missing_inputs({"evaluate2", "table"}, lacking, STAGES) == {"train2", "prepare"}
    # figures reads the models folder: both models
    assert missing_inputs({"figures"}, lacking, STAGES) == {"train", "train2", "prepare"}
    assert in_dependency_order({"figures", "train", "train2", "prepare"}, STAGES) == ["prepare", "train", "train2", "figures"]
    # a stage that runs anyway is not counted as rebuilt, and what its outputs hold is not asked for
    assert missing_inputs({"train2", "evaluate2"}, lacking, STAGES) == {"prepare"}
    assert missing_inputs({"table"}, lacking, STAGES) == set()  # the evaluations' metrics are here
    assert missing_inputs(set(), lacking, STAGES) == set()
    # a frozen stage never reads its inputs again
    frozen = [*STAGES, StageInfo("instrument", ("data/mnist.npz",), ("models/cnn.pt",), frozen=True)]
    assert missing_inputs({"instrument"}, lacking, frozen) == set()


def test_estimates_scale_with_the_machine_s_gemm_time():
    assert estimate_seconds(100.0, 5.0, 10.0) == 200.0 + 8.0  # a machine twice as slow, and DVC's 8 s
    assert estimate_seconds(100.0, None, 10.0) == 100.0 + 8.0
    assert estimate_seconds(None, 5.0, 5.0) == 600.0


class FakeClock:
    def __init__(self, durations):
        self.now, self.durations, self.ran = 0.0, durations, []

    def __call__(self):
        return self.now

    def run(self, name):
        self.ran.append(name)
        self.now += self.durations[name]
        return True


def test_only_what_fits_runs_what_waits_on_a_skipped_stage_does_not_and_the_report_always_does():
    order = ["prepare", "train", "train2", "evaluate", "evaluate2", "table"]
    durations = {"prepare": 10, "train": 100, "train2": 500, "evaluate": 50, "evaluate2": 50, "table": 5}
    clock = FakeClock(durations)
    result = run_within(order, upstreams(STAGES), {k: float(v) for k, v in durations.items()}, 300.0, clock.run,
                        always=("table",), clock=clock, say=lambda _: None)
    assert clock.ran == result.ran == ["prepare", "train", "evaluate", "table"]
    assert result.skipped == {"train2": "needs about 8.3 min, 3.1 min left", "evaluate2": "waits for train2"}  # 300 − 110 − 5
    assert result.failed is None
    # the second call: prepare, train and evaluate are no longer stale
    clock2 = FakeClock(durations)
    rest = run_within(["train2", "evaluate2", "table"], upstreams(STAGES), {k: float(v) for k, v in durations.items()},
                      600.0, clock2.run, always=("table",), clock=clock2, say=lambda _: None)
    assert rest.ran == ["train2", "evaluate2", "table"] and rest.skipped == {}


def test_the_report_keeps_its_time_and_runs_even_when_the_rest_used_up_the_budget():
    durations = {"prepare": 10, "train": 100, "evaluate": 50, "table": 5}
    clock = FakeClock(durations)
    # 160 s: prepare + train + evaluate would fill it exactly and squeeze the report out
    result = run_within(["prepare", "train", "evaluate", "table"], upstreams(STAGES),
                        {k: float(v) for k, v in durations.items()}, 160.0, clock.run, always=("table",), clock=clock,
                        say=lambda _: None)
    assert result.ran == ["prepare", "train", "table"]
    assert result.skipped == {"evaluate": "needs about 0.8 min, 0.8 min left"}  # 160 − 110 − the report's 5 s
    # a report that overran the others' estimates still runs
    late = FakeClock({"prepare": 500, "table": 5})
    result = run_within(["prepare", "table"], upstreams(STAGES), {"prepare": 10.0, "table": 5.0}, 100.0, late.run,
                        always=("table",), clock=late, say=lambda _: None)
    assert result.ran == ["prepare", "table"]


def test_a_stage_that_overruns_its_estimate_leaves_less_time_for_the_next():
    clock = FakeClock({"prepare": 250, "train": 100})
    result = run_within(["prepare", "train"], upstreams(STAGES), {"prepare": 10.0, "train": 100.0}, 300.0, clock.run,
                        clock=clock, say=lambda _: None)
    assert result.ran == ["prepare"] and "train" in result.skipped


def test_estimates_follow_how_fast_the_stages_of_this_call_ran():
    assert pace(0.0, 0.0) == 1.0
    assert pace(600.0, 1200.0) == (600.0 + PACE_PRIOR_SECONDS) / (1200.0 + PACE_PRIOR_SECONDS)
    # a machine on which stages take half their estimates (the GEMM scaling misjudged it)
    estimates = {"prepare": 600.0, "train": 600.0, "train2": 900.0, "table": 5.0}
    order = ["prepare", "train", "train2", "table"]
    said = []
    fast = FakeClock({"prepare": 300, "train": 300, "train2": 450, "table": 5})
    result = run_within(order, upstreams(STAGES), estimates, 1500.0, fast.run, always=("table",), clock=fast,
                        say=said.append)
    # after 600 s against 1,200 estimated: train2 needs 900 × 1,200/1,800 = 600 s of the 1,500 − 600 − 5·(2/3) left
    assert result.ran == ["prepare", "train", "train2", "table"]
    assert any(line.startswith("[3/4] train2 (about 10.0 min") and "estimates ×0.67" in line for line in said), said
    # taken at their word, the estimates would have left train2 out
    slow = FakeClock({"prepare": 600, "train": 600, "train2": 900, "table": 5})
    result = run_within(order, upstreams(STAGES), estimates, 1500.0, slow.run, always=("table",), clock=slow,
                        say=lambda _: None)
    assert result.ran == ["prepare", "train", "table"] and "train2" in result.skipped


def test_the_first_failure_stops_the_refresh():
    calls = []
    result = run_within(["prepare", "train", "train2"], upstreams(STAGES), dict.fromkeys(["prepare", "train", "train2"], 1.0),
                        100.0, lambda name: calls.append(name) or name != "train", say=lambda _: None)
    assert calls == ["prepare", "train"] and result.failed == "train" and result.ran == ["prepare"]


def _dvc_project(tmp_path, reads: dict):
    """A git + DVC project in `tmp_path` whose stage <name> writes <name>.txt, the concatenation of what
    it reads (`reads`: name -> (declared inputs, one more input the command reads but dvc.yaml does not
    declare, or "")), and a timing file of 1 s; run once. Returns a runner of commands in it."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "DVC_NO_ANALYTICS": "1"}
    env.pop("SARNET_PARENT_RUN_ID", None)

    def sh(*cmd):
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)

    (tmp_path / "stage.py").write_text(
        "import json, sys\nfrom pathlib import Path\nname, src = sys.argv[1], sys.argv[2:]\n"
        "text = ''.join(Path(s).read_text() for s in src)\nPath(f'{name}.txt').write_text(text + name)\n"
        "Path('metrics/timing').mkdir(parents=True, exist_ok=True)\n"
        "Path(f'metrics/timing/{name}.json').write_text(json.dumps({'seconds': 1.0}))\n")
    dvc_yaml = {"stages": {
        name: {"cmd": f"python stage.py {name} {' '.join([*src, undeclared])}".rstrip(), "deps": ["stage.py", *src],
               "outs": [f"{name}.txt", {f"metrics/timing/{name}.json": {"cache": False}}]}
        for name, (src, undeclared) in reads.items()}}
    (tmp_path / "dvc.yaml").write_text(json.dumps(dvc_yaml))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        assert sh(*cmd).returncode == 0
    return sh


def test_sarnet_repro_for_runs_what_fits_and_a_second_call_finishes(tmp_path):
    """`sarnet repro --for` on a real DVC project: a → b → c, all stale after a's script changed; b is
    recorded as taking hours, so the first call runs a only; once b's record says seconds, the second
    call runs b and c, and DVC then has nothing left to do."""
    import json
    import re
    import sys

    (tmp_path / "a.py").write_text("# a\n")
    sh = _dvc_project(tmp_path, {"a": (["a.py"], ""), "b": (["a.txt"], ""), "c": (["b.txt"], "")})
    (tmp_path / "a.py").write_text("# a, changed\n")
    (tmp_path / "metrics" / "timing" / "b.json").write_text(json.dumps({"seconds": 7200.0}))  # b: two hours

    first = sh(sys.executable, "-m", "sarnet.cli", "repro", "--no-push", "--for", "1")
    assert first.returncode == 0, first.stderr
    assert "3 stages to refresh" in first.stdout and "[1/3] a (about" in first.stdout
    # 7,200 s + DVC's 8, times this call's pace (a's few seconds against its 9 s estimate barely move it)
    assert re.search(r"b: not started, needs about 11\d\.\d min|b: not started, needs about 120\.\d min", first.stdout)
    assert "c: not started, waits for b" in first.stdout
    assert (tmp_path / "a.txt").read_text() == "# a, changed\na"
    assert (tmp_path / "b.txt").read_text() == "# a\nab"  # not re-run

    (tmp_path / "metrics" / "timing" / "b.json").write_text(json.dumps({"seconds": 1.0}))  # dvc.lock: b is now "changed" too
    second = sh(sys.executable, "-m", "sarnet.cli", "repro", "--no-push", "--for", "1")
    assert second.returncode == 0, second.stderr
    assert "refreshed 2 stage(s); nothing left to refresh" in second.stdout
    assert (tmp_path / "c.txt").read_text() == "# a, changed\nabc"
    assert "Data and pipelines are up to date" in sh("dvc", "status").stdout
    third = sh(sys.executable, "-m", "sarnet.cli", "repro", "--no-push", "--for", "1")
    assert "nothing is stale" in third.stdout


def test_sarnet_repro_for_on_a_new_machine_rebuilds_only_what_a_stale_stage_reads(tmp_path):
    """A new machine: an empty DVC cache and no models, while dvc.lock is current but for c's code.
    `sarnet repro --for` rebuilds a and b (c reads b's output, b reads a's), then c; d and e only lack
    their outputs, so they stay as they are. When the rebuilt a gives other bytes (another CPU type:
    here an input dvc.yaml does not declare), its other reader d is stale, and a second round runs it."""
    import shutil
    import sys

    def new_machine():
        shutil.rmtree(tmp_path / ".dvc" / "cache")
        for name in "abcde":
            (tmp_path / f"{name}.txt").unlink(missing_ok=True)

    for name, text in (("a.py", "# a\n"), ("c.py", "# c\n"), ("e.py", "# e\n"), ("cpu", "cpu 1\n")):
        (tmp_path / name).write_text(text)
    sh = _dvc_project(tmp_path, {"a": (["a.py"], "cpu"), "b": (["a.txt"], ""), "c": (["b.txt", "c.py"], ""),
                                 "d": (["a.txt"], ""), "e": (["e.py"], "")})

    new_machine()
    (tmp_path / "c.py").write_text("# c, changed\n")
    first = sh(sys.executable, "-m", "sarnet.cli", "repro", "--no-push", "--for", "5")
    assert first.returncode == 0, first.stderr
    assert "3 stages to refresh (2 of them only because a stale stage reads their outputs" in first.stdout
    assert [line.split()[1] for line in first.stdout.splitlines() if line.startswith("[")] == ["a", "b", "c"]
    assert "refreshed 3 stage(s); nothing left to refresh" in first.stdout
    assert (tmp_path / "c.txt").read_text() == "# a\ncpu 1\nab# c, changed\nc"
    assert not (tmp_path / "d.txt").exists() and not (tmp_path / "e.txt").exists()
    again = sh(sys.executable, "-m", "sarnet.cli", "repro", "--no-push", "--for", "5")
    assert "nothing is stale: every stage is up to date (2 lack their outputs here" in again.stdout, again.stdout

    new_machine()
    (tmp_path / "cpu").write_text("cpu 2\n")  # the rebuilt a.txt will differ from the one d read
    (tmp_path / "c.py").write_text("# c, changed again\n")
    second = sh(sys.executable, "-m", "sarnet.cli", "repro", "--no-push", "--for", "5")
    assert second.returncode == 0, second.stderr
    assert "again, as the stages rebuilt above changed what their readers read: 1 stages to refresh" in second.stdout
    assert [line.split()[1] for line in second.stdout.splitlines() if line.startswith("[")] == ["a", "b", "c", "d"]
    assert (tmp_path / "d.txt").read_text() == "# a\ncpu 2\nad"
    assert not (tmp_path / "e.txt").exists()
    assert sh("dvc", "status", "d").stdout.strip() == "Data and pipelines are up to date."
