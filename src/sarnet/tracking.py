"""MLflow tracking that never costs a result.

Every stage execution is one MLflow run with its params, metrics, artifacts and tags for the git
commit, a dirty-tree flag, the DVC stage and the dataset. Runs of one pipeline execution nest under
a parent run: `sarnet repro`'s, or for `dvc exp run` one parent per experiment name. Model weights
are not copied into MLflow: a training run carries their path and hash (the DVC cache holds them),
and an evaluation logs its FID onto the run that trained the model. The default store is a sqlite file at
the project root with artifacts in a local folder; `MLFLOW_TRACKING_URI` points elsewhere (a
remote server works unchanged). If the store cannot be reached, or any call fails, the run goes
on untracked after one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sarnet.core.provenance import git_state

DEFAULT_EXPERIMENT = "sarnet"
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
# Set by `sarnet repro` for the `dvc repro` it runs: every stage's run becomes a child of that
# pipeline execution's parent run, so the UI shows one execution's models side by side.
PARENT_RUN_ENV = "SARNET_PARENT_RUN_ID"
# Set by DVC for every `dvc exp run` execution (queued or not): the experiment's name.
EXPERIMENT_NAME_ENV = "DVC_EXP_NAME"

# Fail fast on an unreachable server (MLflow's own default retries for minutes); user settings win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def project_root(start: Path | None = None) -> Path:
    """Where the default store lives: the working directory, or for a `dvc exp run --queue`
    workspace (a temporary copy under `.dvc/tmp/exps/`) the project it was copied from."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or project_root()) / STORE_FILE}"


def _is_local_default() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params are flat strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """A handle on one MLflow run whose calls never raise: the first failure warns and turns it off."""

    def __init__(self, client: Any = None, run_id: str | None = None) -> None:
        self._client = client
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self._client is not None and self.run_id is not None

    def _call(self, what: str, fn: Callable[[], Any]) -> None:
        if not self.enabled:
            return
        try:
            fn()
        except Exception as exc:  # any tracking failure must not stop the stage
            _warn(f"MLflow {what} failed ({type(exc).__name__}: {str(exc)[:200]}); continuing without tracking")
            self._client = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:  # untracked (or no mlflow installed): nothing to import or send
            return
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            batch = items[i : i + 100]
            self._call("log_params", lambda: self._client.log_batch(self.run_id, params=batch))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled:  # untracked (or no mlflow installed): nothing to import or send
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._call("log_metrics", lambda: self._client.log_batch(self.run_id, metrics=items))

    def log_series(self, series: Mapping[str, Sequence[float]], first_step: int) -> None:
        """Each named series as one metric at steps first_step, first_step + 1, …; batched, since a
        GAN's per-step losses are thousands of points (MLflow takes 1,000 metrics per request)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, float(value), now, first_step + i) for name, values in series.items()
                 for i, value in enumerate(values)]
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            self._call("log_series", lambda: self._client.log_batch(self.run_id, metrics=chunk))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:  # untracked (or no mlflow installed): nothing to import or send
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("set_tags", lambda: self._client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if Path(path).exists():
            self._call("log_artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def _create_logged_model(self, name: str, model_type: str, reference: Mapping[str, str], kind: str | None,
                             arch: Mapping[str, Any], source_run_id: str | None) -> str:
        """An external logged model (the weights stay in DVC) recording the file's DVC path and md5, its kind
        and architecture as params; the output of `source_run_id`, the run that trained it, when known."""
        from mlflow.entities import LoggedModelOutput
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

        params = {"kind": kind or "unknown", "dvc.path": reference["model.path"], "dvc.md5": reference.get("model.md5", "")}
        params |= flatten(arch, "arch.")
        experiment_id = self._client.get_run(self.run_id).info.experiment_id
        model = self._client.create_logged_model(
            experiment_id, name=name, source_run_id=source_run_id, model_type=model_type,
            tags={MLFLOW_MODEL_IS_EXTERNAL: "true", **reference}, params={k: v[:6000] for k, v in params.items()})
        self._client.finalize_logged_model(model.model_id, "READY")
        if source_run_id:
            self._client.log_outputs(source_run_id, [LoggedModelOutput(model.model_id, 0)])
        return model.model_id

    def log_model(self, path: str | os.PathLike, name: str, kind: str, arch: Mapping[str, Any],
                  model_type: str = "generator") -> str | None:
        """The model file at `path` as an MLflow 3 logged model made by this run. It is external: the
        weights stay in DVC, and the model records their DVC path and md5, its kind and its architecture
        as params (MLflow's model view lists and sorts them). The run also keeps its `model.path` and
        `model.md5` tags. Returns the model's id; None when untracked."""
        reference = model_reference(path)
        self.set_tags(reference)
        created: list[str] = []
        self._call("log_model", lambda: created.append(
            self._create_logged_model(name, model_type, reference, kind, arch, self.run_id)))
        return created[0] if created else None

    def use_model(self, path: str | os.PathLike, name: str, model_type: str = "generator", kind: str | None = None,
                  arch: Mapping[str, Any] | None = None) -> str | None:
        """The logged model `name` of the file at `path`, recorded as this run's input. It is found by name and
        the file's md5; a file no logged model holds yet (a model trained before models were logged, or an
        instrument, whose stage is frozen) becomes one here: external, with `kind` and `arch` (what the file
        states), the output of the newest run tagged with its md5, the run that trained it. Returns the
        model's id; None when untracked or the file is missing."""
        if not self.enabled:
            return None
        reference = model_reference(path)
        md5 = reference.get("model.md5")
        if md5 is None:
            _warn(f"{path} is missing; no MLflow logged model is linked to this run")
            return None
        found: list[str] = []

        def find_or_create() -> None:
            from mlflow.entities import LoggedModelInput

            experiment_id = self._client.get_run(self.run_id).info.experiment_id
            # by name too: two entries whose weights happen to be the same bytes stay two models
            models = self._client.search_logged_models(
                [experiment_id], filter_string=f"tags.`model.md5` = '{md5}' AND name = '{name}'",
                order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1)
            if models:
                model_id = models[0].model_id
            else:
                trained = self._client.search_runs([experiment_id], filter_string=f"tags.`model.md5` = '{md5}'",
                                                   order_by=["attributes.start_time DESC"], max_results=1)
                if not trained:
                    _warn(f"no MLflow run trained {path} (md5 {md5}); its logged model has no source run")
                model_id = self._create_logged_model(name, model_type, reference, kind, arch or {},
                                                     trained[0].info.run_id if trained else None)
            self._client.log_inputs(self.run_id, models=[LoggedModelInput(model_id)])
            found.append(model_id)

        self._call("use_model", find_or_create)
        return found[0] if found else None

    def log_dataset(self, path: str | os.PathLike, name: str, context: str, profile: Mapping[str, Any]) -> None:
        """The prepared file this run read, as an MLflow dataset input: its name (e.g. `mnist-5`), the
        file's md5 as the digest, its path as the source, and `profile` (digit, number of images)."""
        if not self.enabled:
            return

        def log() -> None:
            from mlflow.entities import Dataset, DatasetInput, InputTag

            try:
                digest = _file_md5(Path(path))
            except OSError:
                digest = "missing"  # the reference is a convenience: never a reason to fail the stage
            dataset = Dataset(name, digest, "local", Path(path).as_posix(), None, json.dumps(dict(profile), sort_keys=True))
            self._client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

        self._call("log_dataset", log)

    def log_model_metrics(self, path: str | os.PathLike, metrics: Mapping[str, float], name: str | None = None,
                          kind: str | None = None, arch: Mapping[str, Any] | None = None) -> str | None:
        """Log `metrics` on this run against the logged model of the file at `path` (`use_model`: found by
        its md5, or created and linked to its training run), so the model view shows them beside the model.
        Returns the model's id; None when untracked."""
        model_id = self.use_model(path, name or Path(path).stem, "generator", kind, arch)
        if model_id is None:
            return None
        def log() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in metrics.items()]
            self._client.log_batch(self.run_id, metrics=items)

        self._call("log_model_metrics", log)
        return model_id if self.enabled else None


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_reference(path: str | os.PathLike) -> dict[str, str]:
    """Tags that point at a model's weights instead of copying them: its path in the project and an
    md5 (for a file, the hash DVC files it under in its cache; for a folder, the md5 of its files'
    names and md5s)."""
    path = Path(path)
    tags = {"model.path": path.as_posix()}
    try:
        if path.is_file():
            tags["model.md5"] = _file_md5(path)
        elif path.is_dir():
            listing = "".join(f"{f.relative_to(path).as_posix()} {_file_md5(f)}\n"
                              for f in sorted(path.rglob("*")) if f.is_file())
            tags["model.md5"] = hashlib.md5(listing.encode()).hexdigest()
    except OSError:
        pass  # the reference is a convenience: never a reason to fail the stage
    return tags


def log_on_training_run(model_path: str | os.PathLike, metrics: Mapping[str, float],
                        experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Log `metrics` onto the newest run that trained the model at `model_path` (found by its
    `model.md5` tag), so one run holds the model's hyperparameters and its results side by side.
    Returns that run's id; None (with a warning) when there is none or the store fails."""
    md5 = model_reference(model_path).get("model.md5")
    if md5 is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = _client()
            found = client.get_experiment_by_name(experiment)
            runs = [] if found is None else client.search_runs(
                [found.experiment_id], filter_string=f"tags.`model.md5` = '{md5}'",
                order_by=["attributes.start_time DESC"], max_results=1)
    except Exception as exc:
        _warn(f"MLflow search for the training run of {model_path} failed ({type(exc).__name__}); not linked")
        return None
    if not runs:
        _warn(f"no MLflow run trained {model_path} (md5 {md5}); its results stay on this run only")
        return None
    tracker = Tracker(client, runs[0].info.run_id)
    tracker.log_metrics(metrics)
    return tracker.run_id if tracker.enabled else None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _client():
    if _is_local_default() and (project_root() / STORE_FILE).exists() and not (project_root() / STORE_FILE).is_file():
        # sqlite would retry for minutes on a directory in the store's place
        raise OSError(f"{project_root() / STORE_FILE} is not a file")
    for noisy in ("mlflow", "alembic", "sqlalchemy"):  # their own error logs would repeat our one warning
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    from mlflow.tracking import MlflowClient

    # No mlflow.set_tracking_uri: it exports MLFLOW_TRACKING_URI, which would hide the default.
    return MlflowClient(tracking_uri=tracking_uri())


# MLflow 3's UI opens an experiment of unknown kind on its GenAI overview; this kind opens the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: Any, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, creating it (with a local artifact folder for the default store) if needed;
    tagged as model development, so the UI shows its runs table."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = (project_root() / ARTIFACT_DIR).as_uri() if _is_local_default() else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:  # another process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:  # a store made before the tag existed
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def init_store(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Create the store and experiment once, before parallel writers (e.g. `dvc exp run --queue -j 2`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ensure_experiment(_client(), experiment)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill`, CI time-outs and job schedulers send SIGTERM, which ends Python without running
    `finally` blocks: the MLflow run would stay RUNNING forever. Raised as KeyboardInterrupt, it
    reaches them, and the run is closed as KILLED."""
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _experiment_parent(client: Any, experiment_id: str, exp_name: str) -> str:
    """The parent run of DVC experiment `exp_name` (created by its first stage), marked RUNNING."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`dvc.exp_name` = '{exp_name}' and "
                               "tags.`sarnet.pipeline` = 'true'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=exp_name, tags={
        "sarnet.pipeline": "true", "dvc.exp_name": exp_name, "dvc.stage": "pipeline", **git_state()})
    return run.info.run_id


def end_experiment_parent(status: str) -> None:
    """Mark the parent run of the running `dvc exp run` (if any) with `status`: for a stage that fails
    before its own run starts (bad params, missing inputs). Never raises."""
    exp_name = os.environ.get(EXPERIMENT_NAME_ENV)
    if not exp_name or os.environ.get(PARENT_RUN_ENV):  # `sarnet repro` ends its own parent run
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = _client()
            run_id = _experiment_parent(client, ensure_experiment(client), exp_name)
            client.set_terminated(run_id, status)
    except Exception as exc:
        _warn(f"MLflow could not mark experiment {exp_name} {status} ({type(exc).__name__})")


PREPARED_DIR = Path("data/prepared")
CONTEXTS = {"prepare": "prepared", "train": "training", "evaluate": "evaluation"}


def log_prepared_dataset(tracker: Tracker, dataset: str, digit: int | None, stage: str,
                         train_limit: int | None = None) -> None:
    """data/prepared/<dataset>.npz as the run's dataset input, named `<dataset>` or `<dataset>-<digit>`,
    with its md5 and, in its profile, the digit and how many training and test images of that digit the
    file holds (training: at most `train_limit`, the slice a training entry keeps)."""
    if not tracker.enabled:
        return
    import numpy as np

    path = PREPARED_DIR / f"{dataset}.npz"
    profile: dict[str, Any] = {"dataset": dataset, "digit": digit}
    try:
        with np.load(path) as npz:  # only the label arrays are read
            for split in ("train", "test"):
                labels = npz[f"{split}_labels"]
                count = int(len(labels) if digit is None else (labels == digit).sum())
                profile[f"{split}_images"] = min(count, train_limit) if split == "train" and train_limit else count
    except Exception:  # a missing or unreadable file: the record is a convenience, never a reason to fail the stage
        pass
    context = CONTEXTS.get(stage.split("@")[0].split("_")[0], stage.split("@")[0])
    tracker.log_dataset(path, dataset if digit is None else f"{dataset}-{digit}", context, profile)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    digit: int | None = None,
) -> Iterator[Tracker]:
    """One MLflow run around a stage execution; yields a Tracker that is a no-op if tracking failed.
    With `dataset`, a successful run records the prepared file as its dataset input (`log_prepared_dataset`;
    `digit`, or else `params`' own `digit`, names the class it keeps).
    Under `dvc exp run` the experiment's parent run ends with the status of its latest stage: since
    DVC stops at the first failing stage, a failed pipeline leaves it FAILED, a whole one FINISHED."""
    tracker = closer = Tracker()
    exp_parent = Tracker()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = _client()
            experiment_id = ensure_experiment(client, experiment)
            all_tags = {"dvc.stage": stage, **git_state(), **(tags or {})}
            if dataset:
                all_tags["dataset"] = dataset
            exp_name = os.environ.get(EXPERIMENT_NAME_ENV)
            if exp_name:
                all_tags["dvc.exp_name"] = exp_name
            parent_run_id = parent_run_id or os.environ.get(PARENT_RUN_ENV)
            if not parent_run_id and exp_name:  # a `dvc exp run` stage: its experiment's parent run
                parent_run_id = exp_parent.run_id = _experiment_parent(client, experiment_id, exp_name)
                exp_parent._client = client
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = client.create_run(experiment_id, run_name=run_name or stage, tags={k: str(v) for k, v in all_tags.items()})
        tracker = Tracker(client, run.info.run_id)
        closer = Tracker(client, run.info.run_id)  # ends the run even after a failed call turned `tracker` off
    except Exception as exc:
        _warn(f"MLflow store {tracking_uri()} unreachable ({type(exc).__name__}: {str(exc)[:200]}); "
              "the stage runs untracked and still writes its outputs")
    if params:
        tracker.log_params(params)
    status = "FAILED"
    try:
        with _sigterm_as_interrupt():
            yield tracker
        if dataset:  # at the end: `prepare` writes the file it records
            chosen = digit if digit is not None else (params or {}).get("digit")
            limit = (params or {}).get("train_limit")
            log_prepared_dataset(tracker, dataset, chosen if isinstance(chosen, int) else None, stage,
                                 limit if isinstance(limit, int) else None)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        closer._call("set_terminated", lambda: closer._client.set_terminated(closer.run_id, status))
        exp_parent._call("set_terminated", lambda: exp_parent._client.set_terminated(exp_parent.run_id, status))


@contextlib.contextmanager
def pipeline_run(name: str, experiment: str = DEFAULT_EXPERIMENT) -> Iterator[Tracker]:
    """The parent run of one pipeline execution: while the block runs, PARENT_RUN_ENV names it, so
    stage runs started by child processes nest under it. Untracked (with a warning) if the store fails."""
    with stage_run("pipeline", run_name=name, experiment=experiment) as tracker:
        previous = os.environ.get(PARENT_RUN_ENV)
        if tracker.enabled:
            os.environ[PARENT_RUN_ENV] = tracker.run_id
        try:
            yield tracker
        finally:
            if previous is None:
                os.environ.pop(PARENT_RUN_ENV, None)
            else:
                os.environ[PARENT_RUN_ENV] = previous
