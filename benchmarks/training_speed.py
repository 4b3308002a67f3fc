"""Benchmark: training speed of this tree against a baseline revision, as ratios measured in one run.

    .venv/bin/python benchmarks/training_speed.py [--baseline main] [--rounds 5] [--epochs 2]

For the SarNET VAE and the conv VAE (L = 128, the paper's `params.yaml` settings: batch 64, Adam,
BCE + KL summed) both trees train on the same 5,421 random images through their own
`sarnet.core.training.fit` (the current tree with its section's `precision`, the baseline with whatever its
code has), in fresh subprocesses that alternate baseline, current, baseline, … for
`--rounds` rounds, so both see the same machine state. Each tree's best epoch is its time; the
ratio baseline / current is the speed-up (issue 15's goal: ≥ 1.6× on 2 CPU cores). The baseline
tree is a temporary `git worktree` of `--baseline`. Pass `--device cuda` on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LATENT_DIM = 128
IMAGES = 5421  # the training fives

# Runs inside each tree's subprocess, with that tree's `src` first on the path.
STEP_SCRIPT = r"""
import json, sys, tempfile
import torch
try:
    from sarnet.core.training import TrainConfig, fit, seed_everything
    from sarnet.families import build_model
except ImportError:  # a baseline tree from before the family modules (issue 30)
    try:
        from sarnet.registry import build_model
    except ImportError:  # ... and from before the registry
        from sarnet.models import build_model
    from sarnet.training import TrainConfig, fit, seed_everything
kind, section, latent, epochs, device = json.loads(sys.argv[1])
seed_everything(0)
model = build_model(kind, section, latent)
extra = {"precision": section["precision"]} if "precision" in section and "precision" in TrainConfig.__dataclass_fields__ else {}
config = TrainConfig(epochs=epochs, batch_size=section["batch_size"], lr=section["lr"],
                     optimizer=section["optimizer"], reduction=section["reduction"], seed=0, **extra)
train = (torch.rand(%d, 784, generator=torch.Generator().manual_seed(0)),)
with tempfile.TemporaryDirectory() as tmp:
    history = fit(model, lambda m, b: m.loss(b), train, config, f"{tmp}/c.pt", f"{tmp}/m.safetensors",
                  progress=False, device=torch.device(device))
steps = -(-len(train[0]) // config.batch_size)
print(json.dumps({"seconds_per_epoch": min(r.seconds for r in history), "steps": steps}))
""" % IMAGES


def time_tree(src: Path, kind: str, section: dict, epochs: int, device: str) -> float:
    """Best seconds per epoch of one fresh training in the tree whose package is at `src`."""
    args = json.dumps([kind, section, LATENT_DIM, epochs, device])
    result = subprocess.run([sys.executable, "-c", STEP_SCRIPT, args], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(src)}, check=False)
    if result.returncode != 0:
        sys.exit(f"error: training in {src} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds_per_epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating baseline/current rounds")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training (the best one counts)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.rounds < 1 or args.epochs < 1:
        sys.exit("error: --rounds and --epochs must be >= 1")
    from sarnet.core.params import resolve_models

    models = resolve_models(yaml.safe_load((ROOT / "params.yaml").read_text()))
    sections = {kind: models[f"{kind}_L{LATENT_DIM}"] for kind in ("sarnet_vae", "conv_vae")}  # Table 4.1's L = 128 rows
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"baseline {args.baseline}, {args.rounds} rounds of {args.epochs} epochs on {IMAGES:,} images")
    with tempfile.TemporaryDirectory() as scratch:
        baseline = Path(scratch) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(baseline), args.baseline],
                       check=True)
        try:
            for kind in ("sarnet_vae", "conv_vae"):
                times: dict[str, list[float]] = {"baseline": [], "current": []}
                for _ in range(args.rounds):
                    for name, src in (("baseline", baseline / "src"), ("current", ROOT / "src")):
                        times[name].append(time_tree(src, kind, sections[kind], args.epochs, args.device))
                best = {name: min(values) for name, values in times.items()}
                steps = -(-IMAGES // sections[kind]["batch_size"])
                print(f"{kind} L = {LATENT_DIM}: baseline {best['baseline']:.2f} s/epoch "
                      f"({1000 * best['baseline'] / steps:.1f} ms/step), current {best['current']:.2f} s/epoch "
                      f"({1000 * best['current'] / steps:.1f} ms/step) -> {best['baseline'] / best['current']:.2f}× faster "
                      f"(goal ≥ 1.6×); all epochs: baseline {[round(t, 2) for t in times['baseline']]}, "
                      f"current {[round(t, 2) for t in times['current']]}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)


if __name__ == "__main__":
    main()
