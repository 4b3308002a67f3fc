"""The `sarnet` command line."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from sarnet.core.errors import SarnetError


def _init_tracking(args: argparse.Namespace) -> None:
    from sarnet.tracking import init_store, tracking_uri

    try:
        experiment_id = init_store(args.experiment)
    except Exception as exc:  # MLflow's own errors run to many lines; one is enough here
        raise SarnetError(f"MLflow store {tracking_uri()} unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    print(f"MLflow store {tracking_uri()}: experiment {args.experiment!r} (id {experiment_id}) ready")


class _PipelineEnded(Exception):
    """dvc repro ended with a non-zero status (the parent run is then closed as FAILED)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"dvc repro exited with status {status}")
        self.status = status


def _run_forwarding_signals(command: list[str]) -> int:
    """Run `command` in its own process group; SIGTERM and SIGINT are passed to the whole group
    (dvc and the stage it runs) and waited for, so no stage is left running without its pipeline."""
    import signal
    import subprocess

    child = subprocess.Popen(command, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:  # the group has already ended
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")
    return status


def _repro(args: argparse.Namespace) -> None:
    """`dvc repro` under one MLflow parent run, so this execution's stage runs are grouped. The
    parent run ends FINISHED only when dvc succeeds (FAILED on an error, KILLED on a signal).
    With `--for MINUTES`: only the stale stages that fit into that time (docs/staleness.md)."""
    import shutil
    from datetime import datetime, timezone

    from sarnet.tracking import init_store, pipeline_run

    if args.minutes is not None and not args.minutes > 0:  # `not >`: NaN too
        raise SarnetError(f"--for must be a positive number of minutes, got {args.minutes:g}")
    if args.minutes is not None and args.dvc_args:
        raise SarnetError(f"--for chooses the stages itself; it takes no dvc options ({' '.join(args.dvc_args)})")
    dvc = shutil.which("dvc")
    if dvc is None:
        raise SarnetError("dvc is not on PATH; run `make repro` (it installs the pinned tools into .venv)")
    started_at = time.monotonic()
    try:
        init_store()
    except Exception as exc:  # the stages warn and run untracked too: tracking never costs a result
        print(f"warning: MLflow store unavailable ({type(exc).__name__}); the pipeline runs untracked", file=sys.stderr)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ran_any = True
    try:
        with pipeline_run(f"dvc repro {started}" + ("" if args.minutes is None else f" (--for {args.minutes:g})")) as parent:
            try:
                if args.minutes is None:
                    status = _run_forwarding_signals([dvc, "repro", *args.dvc_args])
                else:
                    status, ran_any = _refresh_within(dvc, deadline=started_at + args.minutes * 60)
            finally:
                for artifact in ("dvc.lock", "metrics/fid_table.md", "metrics/wall_time.json"):
                    parent.log_artifact(artifact)
            if status != 0:
                parent.set_tags({"dvc.exit_status": status})
                raise _PipelineEnded(status)
    except _PipelineEnded as ended:
        sys.exit(ended.status)
    if args.push and ran_any:
        _push(dvc)


REPORT_STAGE = "fid_table"  # runs at the end of every refresh, so the table shows whatever finished


def _pipeline_state() -> tuple[list, dict, dict[str, tuple[float | None, float | None]]]:
    """dvc.yaml's stages (paths read and written, frozen or not), `dvc status` (the stages `dvc repro`
    would run now, each with its changes: code, params, inputs, missing outputs, never run), and each
    stage's last recorded seconds and GEMM time, both from its own timing file (metrics/timing/…;
    wall_time.json's seconds where the file has none)."""
    import json
    import logging
    from pathlib import Path

    from dvc.repo import Repo

    from sarnet.refresh import StageInfo

    try:
        wall = json.loads(Path("metrics/wall_time.json").read_text()).get("stages", {})
    except (OSError, ValueError):
        wall = {}
    stages, recorded = [], {}
    with Repo(".") as repo:
        for stage in repo.index.stages:
            deps = tuple(d.def_path for d in stage.deps if type(d).__name__ != "ParamsDependency")
            outs = tuple(o.def_path for o in stage.outs)
            stages.append(StageInfo(stage.addressing, deps, outs, frozen=bool(stage.frozen)))
            seconds, gemm = None, None
            for out in outs:
                if out.startswith("metrics/timing/") and out.endswith(".json"):
                    try:
                        timing = json.loads(Path(out).read_text())
                    except (OSError, ValueError):
                        timing = {}
                    seconds = timing.get("seconds", wall.get(out[len("metrics/timing/"):-len(".json")]))
                    run = timing.get("run")
                    gemm = run.get("gemm1024_ms") if isinstance(run, dict) else None
            recorded[stage.addressing] = (seconds, gemm)
        dvc_logger = logging.getLogger("dvc")
        level = dvc_logger.level
        dvc_logger.setLevel(logging.ERROR)  # "stage is frozen" warnings, once per instrument
        try:
            status = repo.status()
        finally:
            dvc_logger.setLevel(level)
    return stages, status, recorded


def _refresh_within(dvc: str, deadline: float) -> tuple[int, bool]:
    """Run the stale stages (and everything downstream of them) that fit before `deadline` (a
    time.monotonic() value), each by `dvc repro --single-item`, so each one that finishes is in dvc.lock
    at once; with them, the stages whose outputs a stale one reads and this machine lacks (a new
    machine's empty cache), but no other stage that only lacks its outputs. A stage rebuilt that way
    may give other bytes (another CPU type), which makes its readers stale: another round runs them.
    Returns dvc's status (0, or the failing stage's) and whether any stage ran."""
    import subprocess
    from pathlib import Path

    import yaml

    from sarnet.core.provenance import gemm_ms
    from sarnet.refresh import (estimate_seconds, in_dependency_order, missing_inputs, recorded_reads, run_within,
                                split_status, upstreams, with_downstream)

    if subprocess.run([dvc, "remote", "default"], capture_output=True, text=True).stdout.strip():
        # a machine or clone that lacks the models fetches them instead of training them again
        print("dvc pull: what the default remote already has", flush=True)
        subprocess.run([dvc, "pull", "--allow-missing", "--quiet"], capture_output=True)
    here_ms = gemm_ms()
    failures: list[int] = []

    def run(name: str) -> bool:
        status = _run_forwarding_signals([dvc, "repro", "--single-item", name])
        failures.extend([status] if status else [])
        return status == 0

    ran: list[str] = []
    planned: set[str] = set()
    for round_number in itertools.count(1):
        stages, status, recorded = _pipeline_state()
        lock = yaml.safe_load(Path("dvc.lock").read_text()) if Path("dvc.lock").exists() else {}
        stale, missing = split_status(status, stages, lambda path: Path(path).exists(), recorded_reads(lock or {}))
        wanted = set(with_downstream(stale, stages))
        rebuilt = missing_inputs(wanted, missing, stages)
        order = in_dependency_order(wanted | rebuilt, stages)
        if not order and round_number == 1:
            lacking = sum(1 for outs in missing.values() if outs)
            print("nothing is stale: every stage is up to date"
                  + (f" ({lacking} lack their outputs here, and no stale stage reads them)" if lacking else ""))
            return 0, False
        if not set(order) - planned - {REPORT_STAGE}:
            break  # only what the rounds before could not fit: no reader of a rebuilt stage became stale
        planned |= set(order)
        estimates = {name: estimate_seconds(*recorded.get(name, (None, None)), here_ms) for name in order}
        budget_s = deadline - time.monotonic()  # the pull, the status and the GEMM above came out of it
        print(("" if round_number == 1 else "again, as the stages rebuilt above changed what their readers read: ")
              + f"{len(order)} stages to refresh"
              + (f" ({len(rebuilt)} of them only because a stale stage reads their outputs, which this machine lacks)"
                 if rebuilt else "")
              + f", about {sum(estimates.values()) / 60:.0f} min in all on this machine "
              f"(GEMM-1024 {here_ms:.1f} ms); {budget_s / 60:.1f} min available", flush=True)
        result = run_within(order, upstreams(stages), estimates, budget_s, run,
                            always=[REPORT_STAGE] if REPORT_STAGE in order else [])
        ran.extend(result.ran)
        if result.failed:
            print(f"error: stage {result.failed} failed; dvc.lock holds the stages that finished before it", file=sys.stderr)
            return failures[0], bool(ran)
        if not rebuilt & set(result.ran):
            break  # no stage was rebuilt, so no reader of one can have become stale
    left = len(result.skipped)
    print(f"refreshed {len(set(ran))} stage(s); " + (f"{left} not started for lack of time: run `sarnet repro --for` again"
                                                    if left else "nothing left to refresh"))
    return 0, bool(ran)


def _push(dvc: str) -> None:
    """`dvc push` of the results to the default remote, so another clone can `dvc pull` the models
    instead of training them. A failed push warns: the results are already safe in the cache."""
    import subprocess

    remote = subprocess.run([dvc, "remote", "default"], capture_output=True, text=True)
    if remote.returncode != 0 or not remote.stdout.strip():
        print("note: no default DVC remote; results stay in this clone's cache (see README, sharing models)")
        return
    print(f"dvc push to remote {remote.stdout.strip()!r}", flush=True)
    if _run_forwarding_signals([dvc, "push"]) != 0:
        print("warning: dvc push failed; the results are in the local cache, push later with `dvc push`", file=sys.stderr)
        return
    try:  # push's exit status is not enough: a killed earlier push can leave folders in part (issue 31)
        _verify_remote(dvc)
    except SarnetError as exc:
        print(f"warning: {exc}", file=sys.stderr)


def _verify_remote(dvc: str, remote: str | None = None) -> None:
    """Read the remote back: every object the cached outputs of dvc.lock need must be there. DVC
    trusts a folder's manifest on the remote (treeverse/dvc#10977), so the manifests of folders held
    only in part are deleted there and `dvc push` runs again, which then uploads the rest. Raises
    SarnetError, in one line, when the remote still lacks objects or cannot be read."""
    from sarnet.remote import check_remote, forget_incomplete, remote_summary  # DVC's API: imported when used

    check = check_remote(".", remote)
    if check.missing:
        if check.incomplete:
            print(f"remote {check.remote!r} holds {len(check.incomplete)} folder(s) only in part "
                  "(a killed push?); pushing their missing files", flush=True)
            forget_incomplete(check)
        _run_forwarding_signals([dvc, "push", "--remote", check.remote])
        check = check_remote(".", remote)
    if check.missing or check.unlisted:
        raise SarnetError(remote_summary(check))
    print(remote_summary(check))


def _verify_remote_command(args: argparse.Namespace) -> None:
    import shutil

    dvc = shutil.which("dvc")
    if dvc is None:
        raise SarnetError("dvc is not on PATH; run `make repro` (it installs the pinned tools into .venv)")
    _verify_remote(dvc, args.remote)


# MLflow 3's UI keeps its GenAI / Model training switch in the browser; this query sets it, so a fresh
# browser opens in the model-training view, where the runs table and the models table live.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def ui_pages(host: str, port: int, experiment_id: str) -> dict[str, str]:
    """The UI's runs table and model table (every generator with its FIDs) of the experiment, in the
    model-training view."""
    base = f"http://{host}:{port}/#/experiments/{experiment_id}"
    return {"runs": f"{base}/runs?{MODEL_TRAINING_VIEW}", "models": f"{base}/models?{MODEL_TRAINING_VIEW}"}


def _ui(args: argparse.Namespace) -> None:
    from sarnet.tracking import init_store, tracking_uri

    experiment_id = init_store()
    uri = tracking_uri()
    pages = ui_pages(args.host, args.port, experiment_id)
    print(f"MLflow UI over {uri} (Ctrl-C stops it)\n  runs table:   {pages['runs']}\n"
          f"  models table: {pages['models']}  (every generator with its FIDs; sort by a column)", flush=True)
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(mlflow, [mlflow, "server", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])


def _read_params(path: str) -> dict:
    """The whole params file (sampling settings and figure defaults come from it); one-line errors."""
    from sarnet.core.params import read_params_file

    return read_params_file(path, hint="pass --params, or run from the project root")


def _section(params: dict, path: str, *keys: str) -> dict:
    """params[keys[0]][keys[1]]..., which must be a mapping."""
    value: object = params
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise SarnetError(f"{path}: no `{'.'.join(keys[: depth + 1])}` section")
        value = value[key]
    if not isinstance(value, dict):
        raise SarnetError(f"{path}: `{'.'.join(keys)}` must be a mapping, got {type(value).__name__}")
    return value


def _settings(params: dict, path: str, *keys: str) -> dict:
    """A section of sampling settings, every value a finite number (or a flag): a string in
    params.yaml stops here in one line, not as a TypeError inside the sampler."""
    from sarnet.core.params import check_number

    settings = dict(_section(params, path, *keys))
    for key, value in settings.items():
        if not isinstance(value, bool):  # flags such as `refine` are settings too
            check_number(".".join(keys), key, value)
    return settings


def _load(path: str, kinds: tuple[str, ...] | None = None):
    """The generator a file describes (the one loader, sarnet.families); `kinds`: the kinds this command takes."""
    from sarnet.core.model_files import read_description
    from sarnet.families import KINDS, load_model

    kind = read_description(path)["kind"]  # before rebuilding anything: a wrong file is one line
    if kind not in (kinds or KINDS):
        raise SarnetError(f"{path}: this command needs a {' or '.join(kinds or KINDS)} model, this is a {kind}")
    return load_model(path)


def _check_nrow(nrow: int) -> None:
    if nrow < 1:
        raise SarnetError(f"--nrow must be >= 1, got {nrow}")


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise SarnetError(f"--threshold must be in [0, 1], got {threshold}")


def _check_outputs(*paths: str | None) -> None:
    """Before any work: every output is a file name in a folder we can write to (or create)."""
    from pathlib import Path

    for path in filter(None, paths):
        target = Path(path)
        if target.is_dir():
            raise SarnetError(f"{path}: a directory; give a file name")
        folder = target.parent
        while not folder.exists():  # atomic_path creates missing folders: check the nearest existing one
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise SarnetError(f"{path}: cannot write into {folder}")


def _save_outputs(images, out: str, npz: str | None, nrow: int) -> None:
    import numpy as np

    from sarnet.core.files import atomic_path, save_grid

    save_grid(images.reshape(-1, 28, 28), out, nrow=nrow)
    print(f"wrote {out}")
    if npz:
        with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=images.numpy())
        print(f"wrote {npz}")


MAX_SAMPLES = 10_000  # one FID set; generated in one piece and drawn as one grid, so bounded (docs/reliability.md)


def _sample(args: argparse.Namespace) -> None:
    from sarnet.core.device import default_device
    from sarnet.families import KINDS

    if args.n < 1:
        raise SarnetError(f"-n must be >= 1, got {args.n}")
    if args.n > MAX_SAMPLES:
        raise SarnetError(f"-n must be <= {MAX_SAMPLES}, got {args.n} (run again with other --seed values for more)")
    _check_nrow(args.nrow)
    _check_outputs(args.out, args.npz)
    _check_threshold(args.threshold)
    device = default_device()  # $SARNET_DEVICE as the stages read it: a bad or absent device is one line, before any work
    model = _load(args.model, tuple(k for k in KINDS if k != "gen_xgboost")).to(device)
    settings = _settings(_read_params(args.params), args.params, "sampling", model.kind)
    if args.threshold is not None:
        if "threshold" not in model.sampling_keys:
            raise SarnetError(f"--threshold: a {model.kind} has no sampling threshold")
        settings["threshold"] = args.threshold
    _save_outputs(model.generate(args.n, args.seed, settings), args.out, args.npz, args.nrow)


def _inpaint(args: argparse.Namespace) -> None:
    import torch

    from sarnet.core.data import to_unit_tensor
    from sarnet.explain import inpainting_rows

    _check_outputs(args.out, args.npz)
    model = _load(args.model, ("sarnet_vae",))
    settings = _settings(_read_params(args.params), args.params, "sampling", "inpaint")
    if args.keep_patches is not None:
        settings["keep_patches"] = args.keep_patches
    if args.n_styles is not None:
        settings["n_styles"] = args.n_styles
    if not 1 <= settings["keep_patches"] <= model.decoder.n_patches:
        raise SarnetError(f"--keep-patches must be in 1..{model.decoder.n_patches}, got {settings['keep_patches']}")
    if settings["n_styles"] < 1:
        raise SarnetError(f"--n-styles must be >= 1, got {settings['n_styles']}")
    test = _test_images(args.data, args.digit)
    if any(not 0 <= i < len(test.images) for i in args.index):
        raise SarnetError(f"--index must be in 0..{len(test.images) - 1}")
    images = to_unit_tensor(test.images[args.index])
    rows = inpainting_rows(model, images, torch.Generator().manual_seed(args.seed), **settings)
    _save_outputs(rows, args.out, args.npz, nrow=settings["n_styles"] + 2)  # per row: original, kept part, styles


def _test_images(path: str, digit: int):
    """The test split of a prepared dataset (digit < 0: every class); anything else is one line."""
    import zipfile

    from sarnet.core.data import load_prepared

    try:
        return load_prepared(path, digit=None if digit < 0 else digit).test
    except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise SarnetError(f"{path}: not a prepared dataset (the .npz of `dvc repro prepare`): "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None


def _explain(args: argparse.Namespace) -> None:
    import numpy as np

    from sarnet.core.data import to_unit_tensor
    from sarnet.core.files import atomic_path, save_rgb_grid
    from sarnet.explain import check_target_patch, importance_figure, stack_of

    _check_outputs(args.out, args.npz)
    model = _load(args.model, ("sarnet_vae", "sarnet"))
    figure = _section(_read_params(args.params), args.params, "figures", args.figure_set)
    targets = args.targets if args.targets is not None else figure["targets"]
    k = args.k if args.k is not None else figure["k"]
    n_patches = stack_of(model).n_patches
    for target in targets:  # checked before the data is read, so a typo fails fast
        check_target_patch(target, n_patches)
    if k < 1:
        raise SarnetError(f"--k must be >= 1, got {k}")
    if args.scale < 1:
        raise SarnetError(f"--scale must be >= 1, got {args.scale}")
    test = _test_images(args.data, args.digit)
    if not 0 <= args.index < len(test.images):
        raise SarnetError(f"--index must be in 0..{len(test.images) - 1}")
    image = to_unit_tensor(test.images[args.index : args.index + 1])[0]
    importance, overlays = importance_figure(model, image, targets, k=k)
    save_rgb_grid(overlays, args.out, nrow=len(targets), scale=args.scale)
    print(f"wrote {args.out}")
    if args.npz:
        with atomic_path(args.npz) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, importance=importance, targets=np.asarray(targets),
                                image=image.numpy(), overlays=overlays.astype(np.float32))
        print(f"wrote {args.npz}")


def _interpolate(args: argparse.Namespace) -> None:
    import numpy as np

    from sarnet.core.data import to_unit_tensor
    from sarnet.core.files import atomic_path
    from sarnet.explain import interpolation_row

    _check_outputs(args.out, args.npz)
    model = _load(args.model, ("sarnet_vae",))
    params = _read_params(args.params)
    steps = args.steps if args.steps is not None else _section(params, args.params, "figures", args.figure_set)["steps"]
    if steps < 2:
        raise SarnetError(f"--steps must be >= 2 (both ends), got {steps}")
    _check_threshold(args.threshold)
    threshold = args.threshold if args.threshold is not None else _settings(params, args.params, "sampling", "sarnet_vae")["threshold"]
    if args.pair is not None:
        if args.digit >= 0:
            raise SarnetError("--pair picks images by label from every class; leave --digit at -1")
        test = _test_images(args.data, -1)
        missing = [label for label in args.pair if not (test.labels == label).any()]
        if missing:
            raise SarnetError(f"no test image with label {missing[0]} in {args.data}")
        index = [int(np.flatnonzero(test.labels == label)[0]) for label in args.pair]
    else:
        test = _test_images(args.data, args.digit)
        index = args.index
        if any(not 0 <= i < len(test.images) for i in index):
            raise SarnetError(f"--index must be in 0..{len(test.images) - 1}")
    ends = to_unit_tensor(test.images[index])
    row = interpolation_row(model, ends[0], ends[1], steps, threshold=threshold)  # A, the path, B
    _save_outputs(row, args.out, None, nrow=len(row))
    if args.npz:
        with atomic_path(args.npz) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=row[1:-1].numpy(), originals=ends.numpy(), test_index=np.asarray(index))
        print(f"wrote {args.npz}")


MIN_SCORE_IMAGES = 20  # a covariance of the 10 logits needs well over 10 images


def _read_images(path: str) -> "torch.Tensor":
    """The `images` array of an .npz file as (N, 28, 28) float32 in [0, 1]: uint8 bytes (/ 255), as the
    evaluations commit them, or floats in [0, 1], as `sarnet sample --npz` writes them."""
    import numpy as np
    import torch

    from sarnet.core.params import MAX_IMAGES

    import zipfile

    if not os.path.isfile(path):
        raise SarnetError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise SarnetError(f"{path}: not an .npz file (an .npz is a zip archive of arrays)")
    try:  # the shape from the array's header first: a forged file could claim any size
        with zipfile.ZipFile(path) as archive, archive.open("images.npy") as member:
            version = np.lib.format.read_magic(member)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = header(member)[0]
        if int(np.prod(shape, dtype=np.float64)) > MAX_IMAGES * 28 * 28:
            raise SarnetError(f"{path}: `images` has shape {shape}; at most {MAX_IMAGES:,} images of 28×28")
    except KeyError:
        pass  # no images.npy member: reported below with the arrays the file has
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SarnetError(f"{path}: not a readable .npz of arrays ({exc})") from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise SarnetError(f"{path}: no `images` array (has: {', '.join(npz.files) or 'none'})")
            images = npz["images"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # an object array, a damaged member
        raise SarnetError(f"{path}: not a readable .npz of arrays ({exc})") from None
    if images.ndim == 2 and images.shape[1] == 28 * 28:
        images = images.reshape(-1, 28, 28)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise SarnetError(f"{path}: `images` must be (N, 28, 28) or (N, 784), got {images.shape}")
    if not MIN_SCORE_IMAGES <= len(images) <= MAX_IMAGES:
        raise SarnetError(f"{path}: {len(images)} images; an FID needs {MIN_SCORE_IMAGES} to {MAX_IMAGES:,}")
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32) / 255.0)
    if images.dtype.kind != "f":
        raise SarnetError(f"{path}: `images` must be uint8 bytes or floats in [0, 1], got {images.dtype}")
    images = images.astype(np.float32)
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise SarnetError(f"{path}: float images must be finite and in [0, 1]")
    return torch.from_numpy(images)


def _score(args: argparse.Namespace) -> None:
    import json

    from sarnet.instruments.classifier import INSTRUMENT_NAMES, instrument_path
    from sarnet.instruments.fid import FidScorer
    from sarnet.instruments.loader import load_instrument

    images, reference = _read_images(args.images), _read_images(args.reference)
    _check_outputs(args.json)
    fids = {}
    for instrument in INSTRUMENT_NAMES:
        path = os.path.join(args.classifiers, instrument_path(args.dataset, instrument).name)
        if not os.path.isfile(path):
            raise SarnetError(f"{path}: no {instrument} instrument for {args.dataset} (see --classifiers)")
        fids[instrument] = FidScorer(load_instrument(path, instrument=instrument)).fid(images, reference)
    print(f"FID of {args.images} ({len(images)} images) against {args.reference} ({len(reference)}), "
          f"{args.dataset} instruments: " + ", ".join(f"{k} {v:.3f}" for k, v in fids.items()))
    if args.json:
        from sarnet.core.files import write_text

        write_text(args.json, json.dumps({"images": args.images, "reference": args.reference, "dataset": args.dataset,
                                          "n_images": len(images), "n_reference": len(reference), "fid": fids},
                                         indent=2) + "\n")
        print(f"wrote {args.json}")


def _add_model_and_test_data(p: argparse.ArgumentParser, model_help: str, digit: int, digit_help: str) -> None:
    """The options every command on a trained model and test images shares."""
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--data", default="data/prepared/mnist.npz", help="prepared dataset (.npz)")
    p.add_argument("--digit", type=int, default=digit, help=digit_help)
    p.add_argument("--params", default="params.yaml", help="sampling settings and figure defaults")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sarnet", description="SarNET research pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-tracking", help="create the MLflow store and experiment (once, before parallel runs)")
    p.add_argument("--experiment", default="sarnet")
    p.set_defaults(func=_init_tracking)

    p = sub.add_parser("repro", help="`dvc repro` with every stage's MLflow run under one parent run, then `dvc push`")
    p.add_argument("--no-push", dest="push", action="store_false", help="do not push the results to the DVC remote")
    p.add_argument("--for", dest="minutes", type=float, metavar="MINUTES",
                   help="refresh only the stale stages that fit into this many minutes, in dependency order "
                        "(estimated from metrics/wall_time.json); run it again for the rest")
    p.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed on to dvc repro (e.g. a stage name, -f)")
    p.set_defaults(func=_repro)

    p = sub.add_parser("verify-remote", help="check that the DVC remote holds every object dvc.lock needs; "
                                             "push again what a killed push left out")
    p.add_argument("--remote", help="DVC remote name (default: the default remote)")
    p.set_defaults(func=_verify_remote_command)

    p = sub.add_parser("ui", help="serve the MLflow UI on 127.0.0.1: the runs table and the models table")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui)

    p = sub.add_parser("score", help="FID of one .npz of images against another, by both frozen instruments")
    p.add_argument("--images", required=True, help=".npz with an `images` array: (N, 28, 28) uint8, or floats in [0, 1]")
    p.add_argument("--reference", required=True, help="the .npz to score against, same format")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion"), help="whose instruments score them")
    p.add_argument("--classifiers", default="models/classifier", help="folder of the frozen instruments")
    p.add_argument("--json", help="also write the FIDs as JSON")
    p.set_defaults(func=_score)

    p = sub.add_parser("sample", help="generate images from a trained model into a PNG grid")
    p.add_argument("--model", required=True, help="model file, e.g. models/sarnet_vae/sarnet_vae_L128.safetensors")
    p.add_argument("-n", type=int, default=100, help=f"number of images (at most {MAX_SAMPLES})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, help="pixel threshold (default: params.yaml sampling.<kind>)")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--npz", help="also write the images as .npz")
    p.add_argument("--nrow", type=int, default=10)
    p.add_argument("--params", default="params.yaml", help="sampling settings (section sampling.<kind>)")
    p.set_defaults(func=_sample)

    p = sub.add_parser("inpaint", help="complete test images from their top patches in several styles")
    _add_model_and_test_data(p, "SarNET VAE model file", 5, "class to take test images from (-1: all)")
    p.add_argument("--index", type=int, nargs="+", default=[0, 1, 2, 3], help="test image indices")
    p.add_argument("--keep-patches", type=int, help="patches kept from each image (default: params.yaml sampling.inpaint)")
    p.add_argument("--n-styles", type=int, help="completions per image (default: params.yaml sampling.inpaint)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="inpaint.png")
    p.add_argument("--npz", help="also write the completions as .npz")
    p.set_defaults(func=_inpaint)

    p = sub.add_parser("explain", help="patch importance (§5.1): the top input patches behind chosen output patches")
    _add_model_and_test_data(p, "SarNET VAE or SarNET model file", 5, "class to take the test image from (-1: all)")
    p.add_argument("--index", type=int, default=0, help="test image index within that class")
    p.add_argument("--targets", type=int, nargs="+", help="output patches to explain (default: params.yaml figures.<set>)")
    p.add_argument("--k", type=int, help="patches shown per target (default: params.yaml figures.<set>)")
    p.add_argument("--figure-set", default="mnist_5", help="params.yaml figures entry the defaults come from")
    p.add_argument("--scale", type=int, default=4, help="pixel enlargement of the PNG")
    p.add_argument("--out", default="importance.png")
    p.add_argument("--npz", help="also write the importance vectors as .npz")
    p.set_defaults(func=_explain)

    p = sub.add_parser("interpolate", help="decode the line between two test images' latent codes")
    _add_model_and_test_data(p, "SarNET VAE model file", -1, "class to take --index images from (-1: all)")
    ends = p.add_mutually_exclusive_group()
    ends.add_argument("--index", type=int, nargs=2, default=[0, 1], metavar=("A", "B"), help="test image indices")
    ends.add_argument("--pair", type=int, nargs=2, metavar=("LABEL_A", "LABEL_B"),
                      help="take the first test image of each label instead")
    p.add_argument("--steps", type=int, help="images along the path, both ends included (default: params.yaml figures.<set>)")
    p.add_argument("--figure-set", default="mnist_5", help="params.yaml figures entry the --steps default comes from")
    p.add_argument("--threshold", type=float, help="pixel threshold (default: params.yaml sampling.sarnet_vae)")
    p.add_argument("--out", default="interp.png")
    p.add_argument("--npz", help="also write the decoded path as .npz")
    p.set_defaults(func=_interpolate)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # `repro` hands its options (-f, --downstream, ...) to dvc, which argparse would reject as unknown.
    args, unknown = parser.parse_known_args(argv)
    if unknown and getattr(args, "func", None) is _repro:
        args.dvc_args = unknown + args.dvc_args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.func(args)
    except SarnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"interrupted: sarnet {args.command} stopped", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # a full disk, a file vanishing under us: outputs are atomic, so nothing partial is left
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
