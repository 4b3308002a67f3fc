"""The kept mutation run (docs/testing.md "Mutation check"): one-line bugs, each applied alone to a copy
of the working tree, must each make the tests that guard it fail. A mutation the tests miss survives.

    .venv/bin/python tests/mutation_check.py            # every mutation, then the survivors
    .venv/bin/python tests/mutation_check.py --list     # the list
    .venv/bin/python tests/mutation_check.py --only noise_on_the_next_patch fid_mlp_against_the_whole_pool

About 8 minutes on 2 cores, so not part of CI: run it before resolving an issue that touches the
samplers, the FID, the lock check or the training loop. Exit status 1 while any mutation survives, or
when a guarding test fails on the unmutated copy (then nothing it says can be trusted).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: the tests that guard this line


MUTATIONS: tuple[Mutation, ...] = (
    # --- the five of issue 31's audit
    Mutation("training_never_resumes", "src/sarnet/core/training.py",
             'state.get("fingerprint") != fingerprint', 'state.get("fingerprint") != fingerprint + "!"',
             ("tests/test_training.py", "tests/test_baselines.py", "-k", "resume")),
    Mutation("fid_mlp_against_the_whole_pool", "src/sarnet/instruments/fid.py",
             "feature_statistics(real_features[name][draw])",
             "feature_statistics(real_features[name][draw] if name == first else real_features[name])",
             ("tests/test_instruments.py", "tests/test_scores.py", "tests/test_evaluation.py", "tests/test_fid.py")),
    Mutation("noise_on_the_next_patch", "src/sarnet/families/sarnet.py",
             "(patch_index < i) | (patch_index == i)", "(patch_index < i) | (patch_index == i + 1)",
             ("tests/test_sampling.py", "-k", "noise")),
    Mutation("pixelcnn_cache_drops_the_residual", "src/sarnet/families/pixel.py",
             "h = h + F.relu(torch.addmm(b, maps[i].gather(r, c, block.taps), w))",
             "h = F.relu(torch.addmm(b, maps[i].gather(r, c, block.taps), w))",
             ("tests/test_autoregressive.py", "-k", "pixelcnn or cached or naive")),
    Mutation("gated_cache_drops_the_horizontal_bias", "src/sarnet/families/pixel.py",
             "links.append(link_row(block.link, v, block.horizontal.bias))",
             "links.append(link_row(block.link, v, torch.zeros_like(block.horizontal.bias)))",
             ("tests/test_autoregressive.py", "-k", "gated")),
    Mutation("gated_vertical_stack_sees_its_own_row", "src/sarnet/families/pixel.py",
             "v = _gate(self.vertical(F.pad(v, (1, 1, 1, 0))), dim=1)",
             "v = _gate(self.vertical(F.pad(v, (1, 1, 0, 1))), dim=1)",
             ("tests/test_autoregressive.py", "-k", "gated")),
    Mutation("row_lstm_cache_drops_the_input_bias", "src/sarnet/families/pixel.py",
             "gates = torch.addmm(bs + layer.input_to_state.bias, windows, ws)",
             "gates = torch.addmm(bs, windows, ws)",
             ("tests/test_autoregressive.py", "-k", "row_lstm or pixelrnn")),
    Mutation("row_lstm_cache_first_layer_sees_its_own_row", "src/sarnet/families/pixel.py",
             "first_row = F.conv2d(pixels[:, :, r : r + reach], w_above",
             "first_row = F.conv2d(pixels[:, :, r + 1 : r + reach + 1], w_above",
             ("tests/test_autoregressive.py", "-k", "row_lstm or pixelrnn")),
    Mutation("incremental_patch0_empty_prefix", "src/sarnet/masked/semidense.py",
             "prefix = self.in_offsets[k] if (layer.first and k > 0) else self.in_offsets[k + 1]",
             "prefix = self.in_offsets[k] if layer.first else self.in_offsets[k + 1]",
             ("tests/test_sampling.py",)),
    # --- the training loop
    Mutation("config_not_fingerprinted", "src/sarnet/core/training.py",
             "digest = hashlib.sha256(config.fingerprint().encode())", "digest = hashlib.sha256()",
             ("tests/test_training.py",)),
    Mutation("same_shuffle_every_epoch", "src/sarnet/core/training.py",
             "manual_seed(config.seed * 1_000_003 + epoch)", "manual_seed(config.seed * 1_000_003)",
             ("tests/test_training.py",)),
    Mutation("after_epoch_measure_shifts_the_rng", "src/sarnet/core/training.py",
             "            torch.set_rng_state(rng)\n", "            pass\n",
             ("tests/test_training.py", "-k", "measure_after")),
    Mutation("no_checkpoint_lock", "src/sarnet/core/training.py",
             "with checkpoint_lock(Path(checkpoint_path)):", "with contextlib.nullcontext():",
             ("tests/test_reliability.py", "-k", "same_checkpoint")),
    Mutation("params_edit_not_checked", "pipeline/_stage.py",
             "            check_params_unchanged()\n", "            pass\n",
             ("tests/test_reliability.py", "-k", "params_it_read")),
    # --- the samplers
    Mutation("xgboost_draws_restart_each_batch", "src/sarnet/families/xgboost.py",
             "bits.advance(self.start * self.k)", "bits.advance(0)",
             ("tests/test_gen_xgboost.py", "-k", "batch_size")),
    Mutation("conv_vae_codes_restart_each_batch", "src/sarnet/families/conv_vae.py",
             "self.decode(None, z[i : i + batch_size])", "self.decode(None, z[: min(batch_size, n - i)])",
             ("tests/test_baselines.py", "-k", "batch_size")),
    Mutation("pixel_temperature_ignored", "src/sarnet/masked/conv.py",
             "torch.softmax(logits.double().cpu() / temperature, dim=1)", "torch.softmax(logits.double().cpu(), dim=1)",
             ("tests/test_autoregressive.py",)),
    # --- the FID and the calibration
    Mutation("fid_cross_term_halved", "src/sarnet/instruments/fid.py",
             "- 2.0 * trace_sqrt)", "- trace_sqrt)", ("tests/test_fid.py",)),
    Mutation("calibration_blur_row_uses_sigma_1", "src/sarnet/instruments/calibration.py",
             "_transformed(lambda x, g: blur_columns(x, 0.5))", "_transformed(lambda x, g: blur_columns(x, 1.0))",
             ("tests/test_calibration.py",)),
    # --- the fault probe's fixes
    Mutation("model_file_size_not_checked", "src/sarnet/core/model_files.py",
             "    if needed > held:\n", "    if False:\n",
             ("tests/test_foundation.py", "-k", "more_than_it_holds")),
    # --- the lock check
    Mutation("lock_check_misses_an_undeclared_missing_output", ".ci/check_lock.py",
             "            elif kept is None:\n", "            elif False:\n", ("tests/test_check_lock.py",)),
    Mutation("lock_check_ignores_changed_params", ".ci/check_lock.py",
             "                if current != value:\n", "                if False:\n", ("tests/test_check_lock.py",)),
    # --- sarnet repro --for on a new machine (2026-12-08): only what a stale stage reads is rebuilt
    Mutation("refresh_rebuilds_every_missing_output", "src/sarnet/refresh.py",
             "if outs and name not in needed and name not in run and _reads(reader, outs):",
             "if outs and name not in needed and name not in run:",
             ("tests/test_refresh.py",)),
    Mutation("refresh_counts_a_deleted_raw_input_as_missing", "src/sarnet/refresh.py",
             'state == "deleted" and path in outputs', 'state == "deleted"',
             ("tests/test_refresh.py",)),
    Mutation("lock_check_lists_a_nested_output_folder_as_a_file", ".ci/check_lock.py",
             ' and not str(md5).endswith(".dir")}', "}", ("tests/test_check_lock.py",)),
)


def copy_tree(destination: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored): what the tests run on."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    # A repository of its own (DVC and the lock check read git), with the tree as one commit.
    identity = {"GIT_AUTHOR_NAME": "mutation check", "GIT_AUTHOR_EMAIL": "mutation@check",
                "GIT_COMMITTER_NAME": "mutation check", "GIT_COMMITTER_EMAIL": "mutation@check"}
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--no-verify", "-m", "the working tree"]):
        subprocess.run(["git", *command], cwd=destination, env=os.environ | identity, check=True, capture_output=True)


def run_tests(copy: Path, args: tuple[str, ...]) -> tuple[bool, float]:
    """Whether the tests pass on the copy, and how long they took."""
    env = os.environ | {"PYTHONPATH": str(copy / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args], cwd=copy,
                            env=env, capture_output=True, text=True)
    if result.returncode not in (0, 1):  # 2-5: the run itself broke (collection, usage): no verdict
        raise SystemExit(f"error: pytest {' '.join(args)} could not run (status {result.returncode}):\n"
                         f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.returncode == 0, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"error: no mutation named {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
        return 1
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}; guarded by {' '.join(m.tests)}")
        return 0
    if "SARNET_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["SARNET_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
    survivors, broken = [], []
    with tempfile.TemporaryDirectory(prefix="sarnet-mutants-") as folder:
        copy = Path(folder)
        copy_tree(copy)
        for m in chosen:  # every mutation must apply where it says, before any test runs
            count = (copy / m.path).read_text().count(m.old)
            if count != 1:
                print(f"error: {m.name}: the line to mutate occurs {count} times in {m.path} (update the list)", file=sys.stderr)
                return 1
        for guard in dict.fromkeys(m.tests for m in chosen):  # the unmutated copy must pass every guard
            passed, seconds = run_tests(copy, guard)
            print(f"unmutated  {'pass' if passed else 'FAIL'}  {seconds:5.1f}s  {' '.join(guard)}", flush=True)
            if not passed:
                broken.append(guard)
        if broken:
            print("error: guarding tests fail without any mutation; fix them first", file=sys.stderr)
            return 1
        for m in chosen:
            path = copy / m.path
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            try:
                passed, seconds = run_tests(copy, m.tests)
            finally:
                path.write_text(original)
            print(f"{'SURVIVED' if passed else 'caught  '}  {seconds:5.1f}s  {m.name}", flush=True)
            if passed:
                survivors.append(m)
    print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutations caught")
    for m in survivors:
        print(f"survivor: {m.name} ({m.path}: {m.old.strip()!r} -> {m.new.strip()!r}); guarded by {' '.join(m.tests)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
