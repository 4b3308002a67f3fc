"""`sarnet repro --for`'s plan: stale stages and their downstream in dependency order, and only what fits."""

import pytest

from sarnet.refresh import StageInfo, estimate_seconds, run_within, upstreams, with_downstream

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
    assert order == ["prepare", "train", "train2", "evaluate", "evaluate2", "table", "figures"]
    for stage, before in (("table", "evaluate"), ("table", "evaluate2"), ("evaluate2", "train2"), ("figures", "train")):
        assert order.index(before) < order.index(stage)
    assert with_downstream(set(), STAGES) == []


def test_a_cycle_is_an_error():
    cycle = [StageInfo("a", ("y",), ("x",)), StageInfo("b", ("x",), ("y",))]
    with pytest.raises(ValueError, match="cycle"):
        with_downstream({"a"}, cycle)


def test_estimates_scale_with_the_machine_s_gemm_time():
    assert estimate_seconds(100.0, 5.0, 10.0) == 200.0  # a machine twice as slow
    assert estimate_seconds(100.0, None, 10.0) == 100.0
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
    assert result.skipped == {"train2": "needs about 8.3 min, 3.2 min left", "evaluate2": "waits for train2"}
    assert result.failed is None
    # the second call: prepare, train and evaluate are no longer stale
    clock2 = FakeClock(durations)
    rest = run_within(["train2", "evaluate2", "table"], upstreams(STAGES), {k: float(v) for k, v in durations.items()},
                      600.0, clock2.run, always=("table",), clock=clock2, say=lambda _: None)
    assert rest.ran == ["train2", "evaluate2", "table"] and rest.skipped == {}


def test_a_stage_that_overruns_its_estimate_leaves_less_time_for_the_next():
    clock = FakeClock({"prepare": 250, "train": 100})
    result = run_within(["prepare", "train"], upstreams(STAGES), {"prepare": 10.0, "train": 100.0}, 300.0, clock.run,
                        clock=clock, say=lambda _: None)
    assert result.ran == ["prepare"] and "train" in result.skipped


def test_the_first_failure_stops_the_refresh():
    calls = []
    result = run_within(["prepare", "train", "train2"], upstreams(STAGES), dict.fromkeys(["prepare", "train", "train2"], 1.0),
                        100.0, lambda name: calls.append(name) or name != "train", say=lambda _: None)
    assert calls == ["prepare", "train"] and result.failed == "train" and result.ran == ["prepare"]
