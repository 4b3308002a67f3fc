"""A team's set-up: stages logging to an `mlflow server` over HTTP, read back through its REST API."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from data_dir import DATA_DIR, needs_data

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = DATA_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a sqlite database and an artifact folder, as in the README."""
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start (exit status {server.poll()})")
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@needs_data
def test_a_stage_logs_to_an_mlflow_server_and_the_run_reads_back_over_http(mlflow_server, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "SARNET_DATA_DIR": str(SHARED_DATA),
           "DVC_STAGE": "prepare@mnist"}
    env.pop("SARNET_PARENT_RUN_ID", None)
    env.pop("DVC_EXP_NAME", None)
    result = subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "mnist"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr  # logged, not degraded to untracked
    assert not (project / "mlflow.db").exists()  # nothing went to a local store

    experiment = json.load(urllib.request.urlopen(
        f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=sarnet", timeout=30))
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = _post(f"{mlflow_server}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["info"]["run_name"] == "prepare@mnist" and run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["train_images"] == 60000 and metrics["test_images"] == 10000
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["dvc.stage"] == "prepare@mnist" and tags["dataset"] == "mnist"
    artifacts = json.load(urllib.request.urlopen(
        f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}", timeout=30))
    assert [f["path"] for f in artifacts.get("files", [])] == ["mnist_labels.json"]
