"""`sarnet repro` under faults: a kill reaches the running stage, a failed or refused dvc run
closes the parent MLflow run as FAILED, and an unreachable tracking store costs no result."""

import os
import signal
import subprocess
import sys
import time

import pytest

from sarnet.tracking import PARENT_RUN_ENV, tracking_uri
from data_dir import DATA_DIR, HAS_DATA

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


def test_stages_run_untracked_without_the_mlflow_package(isolated_store):
    script = ("import sys\n"
              "sys.modules['mlflow'] = sys.modules['mlflow.tracking'] = sys.modules['mlflow.entities'] = None\n"
              "from sarnet.tracking import stage_run\n"
              "with stage_run('calibrate', params={'n': 1}, tags={'t': 1}) as tracker:\n"
              "    tracker.log_metrics({'fid': 1.0}); tracker.set_tags({'a': 'b'}); tracker.log_artifact(sys.executable)\n"
              "open('output', 'w').write('done')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=isolated_store, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and (isolated_store / "output").read_text() == "done"
    assert "Traceback" not in result.stderr and result.stderr.count("warning:") == 1


def test_a_directory_in_place_of_the_store_costs_one_warning_not_minutes(isolated_store, capsys):
    from sarnet.tracking import stage_run

    (isolated_store / "mlflow.db").mkdir()
    started = time.monotonic()
    with stage_run("calibrate", params={"n": 1}) as tracker:
        tracker.log_metrics({"fid": 1.0})
    assert not tracker.enabled and time.monotonic() - started < 10
    assert capsys.readouterr().err.count("warning:") == 1


def test_init_tracking_on_an_unreachable_store_is_one_line(isolated_store):
    env = os.environ | {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "sarnet.cli", "init-tracking"], cwd=isolated_store, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: MLflow store http://127.0.0.1:9 unavailable") and len(lines) <= 3


# -- files and data ----------------------------------------------------------------------------

def test_a_gzip_bomb_is_refused_without_decompressing_it(tmp_path):
    import gzip
    import tracemalloc

    from sarnet.core.data import read_idx_bytes
    from sarnet.core.errors import DataError

    # the header promises 60000×28×28 images (47 MB); the stream goes on for 1 GB of zeros
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (60000, 28, 28))
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as fh:
        fh.write(header)
        zeros = bytes(1 << 20)
        for _ in range(1024):
            fh.write(zeros)
    assert bomb.stat().st_size < 5_000_000
    tracemalloc.start()
    started = time.monotonic()
    content = read_idx_bytes(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(content) == len(header) + 60000 * 28 * 28 + 1  # one byte beyond what the header allows, no more
    assert peak < 200_000_000 and time.monotonic() - started < 20
    from sarnet.core.data import parse_idx

    with pytest.raises(DataError, match="expected 47040016"):
        parse_idx(content, bomb)
    huge = tmp_path / "huge.gz"
    with gzip.open(huge, "wb") as fh:
        fh.write(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2**31, 28, 28)))
    with pytest.raises(DataError, match="claims .* bytes"):
        read_idx_bytes(huge)


def test_a_data_folder_that_is_a_file_says_so(tmp_path, monkeypatch):
    from sarnet.core.data import DATASETS, DATA_DIR_ENV, find_raw_dir
    from sarnet.core.errors import DataError

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)  # CI sets it, and it wins over the argument
    (tmp_path / "data").write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        find_raw_dir(DATASETS["mnist"], tmp_path / "data")


def test_temp_files_of_killed_writers_are_swept_and_live_ones_kept(tmp_path):
    from sarnet.core.files import STALE_TEMP_SECONDS, write_text

    stale, live = tmp_path / ".mnist.npz.abc123.tmp", tmp_path / ".mnist.npz.def456.tmp"
    other = tmp_path / ".fashion.npz.abc123.tmp"
    for path in (stale, live, other):
        path.write_text("partial")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    write_text(tmp_path / "mnist.npz", "whole")
    assert not stale.exists() and live.exists() and other.exists()  # only this output's old temps
    assert (tmp_path / "mnist.npz").read_text() == "whole"


def test_a_stage_that_cannot_write_its_output_says_so_in_one_line(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not HAS_DATA:
        pytest.skip(f"offline MNIST not found under {DATA_DIR} (set SARNET_DATA_DIR)")
    (tmp_path / "params.yaml").write_text("prepare: {datasets: [mnist], data_dir: null, download_dir: data/raw}\n")
    (tmp_path / "data").write_text("")  # data/prepared/ can never be created below a file
    env = os.environ | {"SARNET_DATA_DIR": str(DATA_DIR)}
    result = subprocess.run([sys.executable, str(root / "pipeline" / "prepare.py"), "mnist"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")


# ---------------------------------------------------------------- a SIGKILLed `dvc repro` (fault probe, issue 31)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

# A stage under DVC (DVC_STAGE set) that records it started, then works for a minute.
SLOW_STAGE = """import sys, time
sys.path.insert(0, {pipeline!r})
from _stage import stage

@stage
def main():
    open("stage.started", "w").write("yes")
    time.sleep(60)

main()
"""

# A stand-in for `dvc repro` that is SIGKILLed: it runs the stage and prints its pid.
KILLED_DVC = """import os, subprocess, sys, time
stage = subprocess.Popen([sys.executable, "stage.py"], env=os.environ | {{"DVC_STAGE": "train@x"}},
                         stderr=open("stage.err", "w"))
print(stage.pid, flush=True)
time.sleep(120)
"""


def _exited(pid: int) -> bool:
    """Gone, or a zombie nobody reaps (a container's pid 1 may not)."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="the watch reads /proc")
def test_a_stage_stops_when_the_dvc_process_running_it_is_killed(tmp_path):
    (tmp_path / "stage.py").write_text(SLOW_STAGE.format(pipeline=str(ROOT / "pipeline")))
    (tmp_path / "dvc.py").write_text(KILLED_DVC.format())
    dvc = subprocess.Popen([sys.executable, "dvc.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    stage_pid = int(dvc.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "stage.started").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "stage.started").exists()
        dvc.kill()  # SIGKILL: nothing is passed on to the stage
        dvc.wait()
        deadline = time.monotonic() + 15
        while not _exited(stage_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _exited(stage_pid), "the orphaned stage went on"
        assert "is gone; stopping the stage" in (tmp_path / "stage.err").read_text()
    finally:
        if not _exited(stage_pid):
            os.kill(stage_pid, signal.SIGKILL)


def test_a_second_run_into_the_same_checkpoint_is_one_line_until_the_first_dies(tmp_path):
    """The orphan and the re-run both trained into checkpoints/<name>.pt: the second is refused while the
    first lives, and runs once it is gone (the kernel drops a dead holder's lock)."""
    import torch

    from sarnet.core.errors import RunInProgress
    from sarnet.core.training import TrainConfig, fit
    from test_training import TinyNet, mse, regression_data

    checkpoint = tmp_path / "m.pt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from sarnet.core.training import checkpoint_lock\n"
                               "with checkpoint_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
                               str(checkpoint)], stdout=subprocess.PIPE, text=True)
    config = TrainConfig(epochs=1, batch_size=16, lr=0.01, optimizer="sgd", seed=0)

    def train():
        return fit(TinyNet(), mse, regression_data(), config, checkpoint, tmp_path / "m.safetensors",
                   progress=False, device=torch.device("cpu"))

    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInProgress) as info:
            train()
        assert f"pid {holder.pid}" in str(info.value) and "\n" not in str(info.value)
        assert not (tmp_path / "m.safetensors").exists()
    finally:
        holder.kill()
        holder.wait()
    assert len(train()) == 1 and (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------- params.yaml edited while a stage runs (fault probe, issue 31)

EDITING_STAGE = """import sys
sys.path.insert(0, {pipeline!r})
import yaml
from _model_spec import model_spec
from _stage import params, stage

@stage
def main(edit):
    spec = model_spec("conv_vae_L8")
    params("evaluate")
    p = yaml.safe_load(open("params.yaml"))
    section, *middle, key = edit.split(".")
    target = p[section]
    for part in middle:
        target = target[part]
    target[key] = 99  # what an editor or a checkout does while the stage runs
    open("params.yaml", "w").write(yaml.safe_dump(p))
    print("trained with", spec.params["epochs"])

main()
"""


@pytest.mark.parametrize("edit, fails", [("models.conv_vae_L8.epochs", True), ("model_bases.conv_vae.epochs", True),
                                         ("evaluate.sets", True), ("models.conv_vae_L16.epochs", False),
                                         ("prepare.seed", False)])
def test_a_stage_fails_when_params_it_read_change_before_it_ends(tmp_path, edit, fails):
    """DVC records the params it finds when a stage ends: an edit of a value the stage read must fail the
    stage (so nothing is recorded), and an edit of anything else must not."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model_bases"]["conv_vae"].setdefault("epochs", 1)
    params["models"]["conv_vae_L8"]["epochs"] = 1
    params.setdefault("prepare", {})["seed"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "stage.py").write_text(EDITING_STAGE.format(pipeline=str(ROOT / "pipeline")))
    result = subprocess.run([sys.executable, "stage.py", edit], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert "Traceback" not in result.stderr
    if fails:
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: params.yaml changed while the stage ran") and edit in last and "-> 99" in last
    else:
        assert result.returncode == 0, result.stderr
