"""MLflow tracking: what a run records, and that tracking never costs a result."""

import os
import subprocess
from pathlib import Path

import pytest

from sarnet.tracking import flatten, project_root, stage_run, tracking_uri


def test_default_store_is_sqlite_in_project_root(isolated_store):
    assert tracking_uri() == f"sqlite:///{isolated_store.resolve() / 'mlflow.db'}"


def test_env_var_overrides_store(isolated_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking_uri() == "http://example.invalid:5000"


def test_queued_experiment_workspace_uses_outer_project(tmp_path):
    inner = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    inner.mkdir(parents=True)
    assert project_root(inner) == (tmp_path / "proj").resolve()
    assert project_root(tmp_path) == tmp_path.resolve()


def test_flatten_nested_params():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}


def test_stage_run_records_params_metrics_tags_and_artifacts(isolated_store):
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    artifact = isolated_store / "result.json"
    artifact.write_text("{}")
    with stage_run("train@mnist", params={"train": {"epochs": 3}}, dataset="mnist") as tracker:
        assert tracker.enabled
        tracker.log_metrics({"loss": 0.5}, step=1)
        tracker.log_metrics({"loss": 0.25}, step=2)
        tracker.log_artifact(artifact)
        run_id = tracker.run_id

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.epochs": "3"}
    assert run.data.tags["dvc.stage"] == "train@mnist"
    assert run.data.tags["dataset"] == "mnist"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run.data.tags["git.commit"] == head
    assert run.data.tags["git.dirty"] == "false"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.5), (2, 0.25)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["result.json"]
    assert (isolated_store / "mlartifacts").is_dir()


def test_failed_stage_marks_run_failed(isolated_store):
    with pytest.raises(RuntimeError):
        with stage_run("boom") as tracker:
            run_id = tracker.run_id
            raise RuntimeError("stage failed")
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri()).get_run(run_id).info.status == "FAILED"


def test_unreachable_store_warns_and_stage_still_writes_outputs(isolated_store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = isolated_store / "metrics.json"
    with stage_run("prepare@mnist", params={"x": 1}) as tracker:
        tracker.log_metrics({"a": 1.0})
        tracker.log_artifact(out)
        out.write_text("{}")
    assert out.read_text() == "{}"
    assert not tracker.enabled
    err = capsys.readouterr().err
    assert "warning:" in err and "unreachable" in err


def test_unwritable_sqlite_store_warns(isolated_store, monkeypatch, capsys):
    (isolated_store / "a-file").write_text("")  # a store path below a file can never be created
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{isolated_store}/a-file/mlflow.db")
    with stage_run("calibrate") as tracker:
        pass
    assert not tracker.enabled
    assert "warning:" in capsys.readouterr().err


def test_sarnet_repro_passes_options_to_dvc_under_one_parent_run(isolated_store, monkeypatch):
    """`sarnet repro -f stage` runs `dvc repro -f stage` with the parent run's id exported, and
    exits with dvc's status, recorded on the parent run."""
    from sarnet.cli import main
    from sarnet.tracking import PARENT_RUN_ENV

    bin_dir = isolated_store / "bin"
    bin_dir.mkdir()
    fake_dvc = bin_dir / "dvc"
    fake_dvc.write_text(f'#!/bin/sh\necho "$* parent=${PARENT_RUN_ENV}" > "{isolated_store}/dvc_call"\nexit 3\n')
    fake_dvc.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)

    with pytest.raises(SystemExit) as exit_info:
        main(["repro", "-f", "fid_table"])
    assert exit_info.value.code == 3
    args, parent = (isolated_store / "dvc_call").read_text().strip().split(" parent=")
    assert args == "repro -f fid_table"
    assert PARENT_RUN_ENV not in os.environ  # restored after the block

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri()).get_run(parent)
    assert run.data.tags["dvc.exit_status"] == "3"


def test_terminated_stage_closes_its_run_as_killed(isolated_store):
    # A stage killed with SIGTERM (kill, a CI time-out) must not leave its MLflow run RUNNING.
    import signal
    import sys
    import time

    from mlflow.tracking import MlflowClient

    script = isolated_store / "stage.py"
    script.write_text(
        "import time\n"
        "from sarnet.tracking import stage_run\n"
        "with stage_run('long') as tracker:\n"
        "    print(tracker.run_id, flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().strip()
    assert MlflowClient(tracking_uri()).get_run(run_id).info.status == "RUNNING"
    child.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert child.wait(timeout=60) != 0
    assert time.monotonic() - started < 30  # it stopped at the signal, not after its sleep
    assert MlflowClient(tracking_uri()).get_run(run_id).info.status == "KILLED"
