"""`sarnet repro` under faults: a kill reaches the running stage, a failed or refused dvc run
closes the parent MLflow run as FAILED, and an unreachable tracking store costs no result."""

import os
import signal
import subprocess
import sys
import time

import pytest

from sarnet.tracking import PARENT_RUN_ENV, tracking_uri

# A stand-in for `dvc repro`: starts a long "stage" (as dvc does) that records its pid, then waits for it.
FAKE_DVC = """#!{python}
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)  # real dvc exits quietly on a signal too
stage = subprocess.Popen([{python!r}, "-c", "import os, signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                          "open('stage.pid', 'w').write(str(os.getpid())); time.sleep(120)"])
open("dvc.pid", "w").write(str(__import__("os").getpid()))
sys.exit(stage.wait())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not yet reaped by its parent) counts as ended
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def _fake_dvc(folder, body: str) -> dict[str, str]:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    dvc.write_text(body)
    dvc.chmod(0o755)
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop(PARENT_RUN_ENV, None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _wait_for(path, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def _parent_runs():
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("sarnet")
    return [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("dvc.stage") == "pipeline"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_killing_sarnet_repro_stops_the_running_stage_and_marks_the_run_killed(sig, isolated_store):
    env = _fake_dvc(isolated_store, FAKE_DVC.format(python=sys.executable))
    repro = subprocess.Popen([sys.executable, "-m", "sarnet.cli", "repro"], cwd=isolated_store, env=env,
                             stderr=subprocess.PIPE, text=True)
    stage_pid = _wait_for(isolated_store / "stage.pid")
    dvc_pid = _wait_for(isolated_store / "dvc.pid")
    repro.send_signal(sig)
    assert repro.wait(timeout=60) == 130
    assert not _alive(stage_pid) and not _alive(dvc_pid), "the stage outlived its pipeline"
    err = repro.stderr.read()
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted: sarnet repro stopped"
    (parent,) = _parent_runs()
    assert parent.info.status == "KILLED"


def test_a_failed_dvc_run_closes_the_parent_run_as_failed(isolated_store):
    env = _fake_dvc(isolated_store, "#!/bin/sh\necho 'ERROR: failed to reproduce' >&2\nexit 254\n")
    result = subprocess.run([sys.executable, "-m", "sarnet.cli", "repro"], cwd=isolated_store, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 254 and "Traceback" not in result.stderr
    (parent,) = _parent_runs()
    assert parent.info.status == "FAILED" and parent.data.tags["dvc.exit_status"] == "254"


def test_an_unreachable_store_does_not_stop_the_pipeline(isolated_store):
    env = _fake_dvc(isolated_store, f"#!/bin/sh\ntouch '{isolated_store}/ran'\nexit 0\n")
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "sarnet.cli", "repro"], cwd=isolated_store, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and (isolated_store / "ran").exists()
    assert "Traceback" not in result.stderr and "warning:" in result.stderr
    assert time.monotonic() - started < 120
