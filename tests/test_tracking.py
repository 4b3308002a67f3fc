"""MLflow tracking: what a run records, and that tracking never costs a result."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sarnet.tracking import flatten, project_root, stage_run, tracking_uri
from data_dir import DATA_DIR, needs_data


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


# ---------------------------------------------------------------- MLflow that speaks DVC (issue 16)

def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def test_experiment_opens_on_the_runs_table(isolated_store):
    """MLflow 3's UI shows an experiment of unknown kind as a GenAI overview; ours is tagged as model development."""
    from sarnet.tracking import init_store

    experiment_id = init_store()
    experiment = _client().get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_store_made_before_the_kind_tag_gets_it(isolated_store):
    from sarnet.tracking import init_store

    experiment_id = _client().create_experiment("sarnet")  # an older store: no kind tag
    assert init_store() == experiment_id
    assert _client().get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_dvc_exp_run_stages_share_one_parent_named_after_the_experiment(isolated_store, monkeypatch):
    monkeypatch.delenv("SARNET_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "wiry-lamb")
    ids = []
    for stage in ("prepare@mnist", "train_sarnet_vae@8"):
        with stage_run(stage) as tracker:
            ids.append(tracker.run_id)
    client = _client()
    runs = [client.get_run(i) for i in ids]
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "wiry-lamb" and parent.info.status == "FINISHED"
    assert all(r.data.tags["dvc.exp_name"] == "wiry-lamb" for r in runs)
    assert [r.info.run_name for r in runs] == ["prepare@mnist", "train_sarnet_vae@8"]

    monkeypatch.setenv("DVC_EXP_NAME", "other-exp")  # another experiment: another parent
    with stage_run("prepare@mnist") as tracker:
        pass
    assert client.get_run(tracker.run_id).data.tags["mlflow.parentRunId"] != parent.info.run_id


def test_a_failing_exp_stage_leaves_the_experiment_parent_failed(isolated_store, monkeypatch):
    monkeypatch.delenv("SARNET_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "bad-exp")
    with stage_run("prepare@mnist") as tracker:
        pass
    with pytest.raises(RuntimeError):
        with stage_run("train_sarnet_vae@8"):
            raise RuntimeError("boom")
    parent = _client().get_run(_client().get_run(tracker.run_id).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"


def test_a_stage_failing_before_its_run_marks_the_experiment_failed(isolated_store, monkeypatch):
    """Bad params fail a stage before stage_run starts; the experiment's parent must still read FAILED."""
    from sarnet.tracking import end_experiment_parent

    monkeypatch.delenv("SARNET_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "early-fail")
    with stage_run("prepare@mnist"):
        pass
    end_experiment_parent("FAILED")
    client = _client()
    parents = client.search_runs([client.get_experiment_by_name("sarnet").experiment_id],
                                 filter_string="tags.`sarnet.pipeline` = 'true'")
    assert [(p.info.run_name, p.info.status) for p in parents] == [("early-fail", "FAILED")]


def test_sarnet_repro_parent_is_not_touched_by_exp_parent_logic(isolated_store, monkeypatch):
    """Under `sarnet repro` (SARNET_PARENT_RUN_ID set) a stage nests under that run, even with DVC_EXP_NAME."""
    from sarnet.tracking import pipeline_run

    monkeypatch.setenv("DVC_EXP_NAME", "ignored")
    with pipeline_run("dvc repro now") as parent:
        with stage_run("prepare@mnist") as tracker:
            pass
    assert _client().get_run(tracker.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_model_reference_is_dvcs_md5_and_no_copy(isolated_store, tmp_path):
    import hashlib

    from sarnet.tracking import model_reference

    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"weights" * 1000)
    assert model_reference(weights) == {"model.path": weights.as_posix(),
                                        "model.md5": hashlib.md5(b"weights" * 1000).hexdigest()}
    folder = tmp_path / "xgb"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.ubj").write_bytes(b"a")
    (folder / "sub" / "b.ubj").write_bytes(b"b")
    listing = f"a.ubj {hashlib.md5(b'a').hexdigest()}\nsub/b.ubj {hashlib.md5(b'b').hexdigest()}\n"
    assert model_reference(folder)["model.md5"] == hashlib.md5(listing.encode()).hexdigest()
    assert model_reference(tmp_path / "missing") == {"model.path": (tmp_path / "missing").as_posix()}


def test_evaluation_logs_fid_onto_the_run_that_trained_the_model(isolated_store, tmp_path, capsys):
    from sarnet.tracking import log_on_training_run, model_reference

    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"trained")
    with stage_run("train_sarnet_vae@8", params={"epochs": 200, "latent_dim": 8}) as old:
        old.set_tags(model_reference(weights))
    with stage_run("train_sarnet_vae@8", params={"epochs": 200, "latent_dim": 8}) as newest:
        newest.set_tags(model_reference(weights))
    with stage_run("train_sarnet_vae@16") as other:
        other.set_tags({"model.md5": "0" * 32})

    assert log_on_training_run(weights, {"fid_mean": 4.5, "fid_std": 0.2}) == newest.run_id
    run = _client().get_run(newest.run_id)
    assert run.data.metrics == {"fid_mean": 4.5, "fid_std": 0.2}
    assert run.data.params["epochs"] == "200"  # hyperparameters and FID on one run
    assert _client().get_run(old.run_id).data.metrics == {}
    assert _client().list_artifacts(newest.run_id) == []  # weights are referenced, never copied

    weights.write_bytes(b"retrained differently")
    assert log_on_training_run(weights, {"fid_mean": 1.0}) is None
    assert "no MLflow run trained" in capsys.readouterr().err


def test_a_trained_model_is_an_external_logged_model_with_its_evaluations_scores(isolated_store, tmp_path, capsys):
    import hashlib
    import json

    weights, data = tmp_path / "dcgan.safetensors", tmp_path / "mnist.npz"
    weights.write_bytes(b"dcgan weights")
    data.write_bytes(b"prepared fives")
    with stage_run("train@dcgan", params={"epochs": 138}) as train:
        model_id = train.log_model(weights, "dcgan", "dcgan", {"width": 128, "noise_dim": 100})
        train.log_dataset(data, "mnist-5", "training", {"digit": 5, "images": 5421})
    with stage_run("train@other") as other:  # another model: its scores must not reach dcgan
        other.log_model(tmp_path / "missing.safetensors", "other", "vqvae", {})
    with stage_run("evaluate@dcgan") as evaluation:
        assert evaluation.log_model_metrics(weights, {"fid_cnn": 9.75, "fid_mlp": 8.1}) == model_id

    client = _client()
    experiment = client.get_experiment_by_name("sarnet").experiment_id
    models = {m.name: m for m in client.search_logged_models([experiment])}
    assert set(models) == {"dcgan", "other"}
    model = models["dcgan"]
    assert model.model_id == model_id and model.source_run_id == train.run_id and str(model.status) == "READY"
    md5 = hashlib.md5(b"dcgan weights").hexdigest()
    assert model.params == {"kind": "dcgan", "dvc.path": weights.as_posix(), "dvc.md5": md5, "arch.width": "128",
                            "arch.noise_dim": "100"}
    assert model.tags["mlflow.model.isExternal"] == "true" and model.tags["model.md5"] == md5
    assert {m.key: m.value for m in model.metrics} == {"fid_cnn": 9.75, "fid_mlp": 8.1}
    assert {m.run_id for m in model.metrics} == {evaluation.run_id}
    assert models["other"].metrics in (None, [])
    assert _client().list_artifacts(train.run_id) == []  # weights are referenced, never copied
    trained = client.get_run(train.run_id)
    (dataset_input,) = trained.inputs.dataset_inputs
    assert dataset_input.dataset.name == "mnist-5"
    assert dataset_input.dataset.digest == hashlib.md5(b"prepared fives").hexdigest()
    assert json.loads(dataset_input.dataset.profile) == {"digit": 5, "images": 5421}
    assert [t.value for t in dataset_input.tags if t.key == "mlflow.data.context"] == ["training"]
    assert [m.model_id for m in trained.outputs.model_outputs] == [model_id]
    assert [m.model_id for m in client.get_run(evaluation.run_id).inputs.model_inputs] == [model_id]

    # Weights no run trained (and no header): a new model of unknown kind, with no source run, and a warning.
    weights.write_bytes(b"retrained differently")
    with stage_run("evaluate@dcgan") as again:
        orphan = again.log_model_metrics(weights, {"fid_cnn": 1.0})
    assert orphan not in (None, model_id) and "no MLflow run trained" in capsys.readouterr().err
    (made,) = [m for m in client.search_logged_models([experiment]) if m.model_id == orphan]
    assert made.source_run_id is None and made.params["kind"] == "unknown"
    assert {m.key: m.value for m in made.metrics} == {"fid_cnn": 1.0}


def test_an_evaluation_makes_a_logged_model_of_a_file_trained_before_models_were_logged(isolated_store):
    """The model records the kind and arguments its file states, its source is the run that tagged the
    file's md5 (not a later run that merely read it), and a second evaluation finds the same model."""
    import torch

    from sarnet.core.model_files import save_model
    from sarnet.families.gans import GanMLP
    from sarnet.core.model_files import read_description
    from sarnet.tracking import model_reference

    torch.manual_seed(0)
    weights = isolated_store / "dcgan.safetensors"
    save_model(GanMLP(noise_dim=4), weights)
    with stage_run("train@dcgan") as train:
        train.set_tags(model_reference(weights))  # what training stages record
    with stage_run("evaluate@other") as unrelated:
        unrelated.set_tags({"model.md5": "0" * 32})
    stated = read_description(weights)
    with stage_run("evaluate@dcgan") as first:
        model_id = first.log_model_metrics(weights, {"fid_cnn_mean": 9.5}, name="dcgan", kind=stated["kind"],
                                           arch=stated["args"])
    with stage_run("evaluate@dcgan") as second:
        assert second.log_model_metrics(weights, {"fid_cnn_mean": 9.25}, name="dcgan") == model_id

    client = _client()
    experiment = client.get_experiment_by_name("sarnet").experiment_id
    (model,) = client.search_logged_models([experiment])
    assert model.name == "dcgan" and model.source_run_id == train.run_id
    assert model.params["kind"] == "gan_mlp" and model.params["arch.noise_dim"] == "4"
    assert sorted((m.run_id == second.run_id, m.value) for m in model.metrics) == [(False, 9.5), (True, 9.25)]
    assert [m.model_id for m in client.get_run(train.run_id).outputs.model_outputs] == [model_id]
    assert [m.model_id for m in client.get_run(second.run_id).inputs.model_inputs] == [model_id]
    with stage_run("evaluate@dcgan_twin") as twin:  # another entry whose weights are the same bytes
        assert twin.log_model_metrics(weights, {"fid_cnn_mean": 9.5}, name="dcgan_twin") not in (None, model_id)


def test_a_stage_with_a_dataset_records_the_prepared_file_as_its_input(isolated_store):
    import hashlib
    import json

    import numpy as np

    prepared = isolated_store / "data" / "prepared"
    prepared.mkdir(parents=True)
    np.savez(prepared / "mnist.npz", train_labels=np.array([5, 1, 5, 5, 0], dtype=np.uint8),
             test_labels=np.array([5, 2, 3], dtype=np.uint8), train_images=np.zeros((5, 28, 28), np.uint8),
             test_images=np.zeros((3, 28, 28), np.uint8))
    with stage_run("train@dcgan", params={"digit": 5, "epochs": 3, "train_limit": 2}, dataset="mnist") as train:
        pass
    with stage_run("evaluate@all", params={"sets": 2}, dataset="mnist") as evaluation:
        pass
    with pytest.raises(RuntimeError):
        with stage_run("train@failed", params={"digit": 5}, dataset="mnist") as failed:
            raise RuntimeError("diverged")

    md5 = hashlib.md5((prepared / "mnist.npz").read_bytes()).hexdigest()
    client = _client()
    (fives,) = client.get_run(train.run_id).inputs.dataset_inputs
    assert (fives.dataset.name, fives.dataset.digest) == ("mnist-5", md5)
    assert json.loads(fives.dataset.profile) == {"dataset": "mnist", "digit": 5, "train_images": 2, "test_images": 1}
    assert [t.value for t in fives.tags if t.key == "mlflow.data.context"] == ["training"]
    (every,) = client.get_run(evaluation.run_id).inputs.dataset_inputs
    assert every.dataset.name == "mnist" and json.loads(every.dataset.profile)["train_images"] == 5
    assert [t.value for t in every.tags if t.key == "mlflow.data.context"] == ["evaluation"]
    assert client.get_run(failed.run_id).inputs.dataset_inputs == []


def _fake_dvc(isolated_store, script: str):
    bin_dir = isolated_store / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "dvc"
    fake.write_text("#!/bin/sh\n" + f'echo "$*" >> "{isolated_store}/dvc_calls"\n' + script)
    fake.chmod(0o755)
    return bin_dir


def test_sarnet_repro_pushes_to_the_default_remote_after_a_successful_run(isolated_store, monkeypatch, capsys):
    from sarnet.cli import main

    bin_dir = _fake_dvc(isolated_store, 'case "$1" in remote) echo shared ;; esac\nexit 0\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    main(["repro"])
    assert (isolated_store / "dvc_calls").read_text().splitlines() == ["repro", "remote default", "push"]

    (isolated_store / "dvc_calls").unlink()
    main(["repro", "--no-push", "fid_table"])
    assert (isolated_store / "dvc_calls").read_text().splitlines() == ["repro fid_table"]


def test_sarnet_repro_without_remote_or_with_a_failing_push_keeps_its_results(isolated_store, monkeypatch, capsys):
    from sarnet.cli import main

    bin_dir = _fake_dvc(isolated_store, 'case "$1" in remote) exit 251 ;; esac\nexit 0\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    main(["repro"])  # no remote: a note, exit 0
    assert "no default DVC remote" in capsys.readouterr().out

    _fake_dvc(isolated_store, 'case "$1" in remote) echo shared ;; push) exit 1 ;; esac\nexit 0\n')
    main(["repro"])  # the push fails: a warning, still exit 0 (the results are in the cache)
    assert "dvc push failed" in capsys.readouterr().err


def test_failed_repro_does_not_push(isolated_store, monkeypatch):
    from sarnet.cli import main

    bin_dir = _fake_dvc(isolated_store, 'case "$1" in remote) echo shared ;; repro) exit 2 ;; esac\nexit 0\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SystemExit) as exit_info:
        main(["repro"])
    assert exit_info.value.code == 2
    assert (isolated_store / "dvc_calls").read_text().splitlines() == ["repro"]


ROOT = Path(__file__).resolve().parents[1]


@needs_data
def test_a_stage_writes_the_same_bytes_with_tracking_on_unreachable_or_not_installed(tmp_path):
    """Why src/sarnet/tracking.py is no stage's dependency (docs/staleness.md): an instrument's training
    stage, run with a working store, with the store unreachable and without the mlflow package, writes
    byte-identical results. Also runs the instruments' training code, which DVC no longer re-runs (frozen)."""
    import shutil

    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_classifier"] |= {"epochs": 2, "train_limit": 1000}  # 2: a log after epoch 1 could touch epoch 2
    base_env = {k: v for k, v in os.environ.items() if k not in ("SARNET_PARENT_RUN_ID", "DVC_EXP_NAME", "DVC_STAGE")}
    base_env |= {"SARNET_DATA_DIR": str(DATA_DIR), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    made = subprocess.run([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "mnist"], cwd=prepared, capture_output=True,
                          text=True, timeout=300, env=base_env | {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert made.returncode == 0, made.stderr

    script = ROOT / "pipeline" / "train_classifier.py"
    without_mlflow = ("import runpy, sys; sys.modules['mlflow'] = None; "  # `import mlflow` now raises ImportError
                      f"sys.path.insert(0, {str(script.parent)!r}); sys.argv = [{str(script)!r}, 'mnist']; "
                      f"runpy.run_path({str(script)!r}, run_name='__main__')")
    modes = {"on": ([str(script), "mnist"], {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/on/mlflow.db"}),
             "unreachable": ([str(script), "mnist"], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
             "absent": (["-c", without_mlflow], {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/absent/mlflow.db"})}
    outputs = {}
    for mode, (argv, env) in modes.items():
        project = tmp_path / mode
        (project / "data" / "prepared").mkdir(parents=True)
        shutil.copy(prepared / "params.yaml", project / "params.yaml")
        shutil.copy(prepared / "data" / "prepared" / "mnist.npz", project / "data" / "prepared" / "mnist.npz")
        result = subprocess.run([sys.executable, *argv], cwd=project, capture_output=True, text=True, timeout=600,
                                env=base_env | env)
        assert result.returncode == 0, f"{mode}: {result.stderr[-2000:]}"
        tracked = "warning: MLflow store" not in result.stderr
        assert tracked == (mode == "on"), f"{mode}: {result.stderr[-1000:]}"  # each mode really is what it claims
        history = (project / "metrics" / "classifier" / "mnist_history.csv").read_text().splitlines()
        outputs[mode] = {
            "model": (project / "models" / "classifier" / "mnist.safetensors").read_bytes(),
            "metrics": (project / "metrics" / "classifier" / "mnist.json").read_bytes(),
            "history": [line.rsplit(",", 1)[0] for line in history],  # the last column is the epoch's seconds
        }
    assert (tmp_path / "on" / "mlflow.db").is_file() and not (tmp_path / "absent" / "mlflow.db").exists()
    assert outputs["on"]["history"][0] == "epoch,train_loss,test_loss"
    assert outputs["on"] == outputs["unreachable"] == outputs["absent"]


def test_a_failed_call_turns_tracking_off_and_the_run_still_ends(isolated_store, capsys):
    """A server without logged models or datasets fails those calls: one warning, and the run still ends
    FINISHED rather than staying RUNNING forever."""
    with stage_run("evaluate@dcgan", dataset="mnist") as tracker:
        def refuse(*args, **kwargs):
            raise RuntimeError("this server has no dataset inputs")

        tracker._client.log_inputs = refuse
        tracker.log_dataset("nowhere.npz", "mnist", "evaluation", {})
        assert not tracker.enabled
        tracker.log_metrics({"fid": 1.0})  # a no-op now, not an error
    assert "MLflow log_dataset failed" in capsys.readouterr().err
    assert _client().get_run(tracker.run_id).info.status == "FINISHED"
