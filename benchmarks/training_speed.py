"""Benchmark: training speed of this tree against a baseline revision, for every model family, as ratios
measured in one run.

    .venv/bin/python benchmarks/training_speed.py [--baseline main] [--rounds 5] [--epochs 2] [--images 5421]
                                                  [--names sarnet_vae_L128 conv_vae_L128 ...]

Each named params.yaml entry (by default Table 4.1's L = 128 pair and one entry of every other family)
trains in both trees on the same random images through their own `sarnet.core.training.fit`, with the
entry's own training settings (the current tree's `precision` included; the baseline takes what its code
knows), in fresh subprocesses that alternate baseline, current, baseline, … for `--rounds` rounds, so
both see the same machine state. Each tree's best epoch is its time; the ratio baseline / current is the
speed-up (issue 33's goal for the SarNET VAE: ≤ 165 GEMM-1024 units per epoch, about 1.6×; the conv VAE
−25 %). `--images` below 5,421 times fewer steps per epoch for the slow families. The VQ-VAE trains one
autoencoder epoch and then its prior, so its best epoch is the autoencoder's. The baseline tree is a
temporary `git worktree` of `--baseline`. Pass `--device cuda` on a GPU machine.
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
IMAGES = 5421  # the training fives
NAMES = ("sarnet_vae_L128", "conv_vae_L128", "sarnet", "gan_mlp", "dcgan", "beta_vae_b2_l16", "vqvae", "pixelcnn",
         "pixelrnn_row")

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
kind, section, latent, epochs, device, images = json.loads(sys.argv[1])
if kind == "vqvae":
    section = {**section, "ae_epochs": 1}  # one autoencoder epoch, then the prior
seed_everything(0)
model = build_model(kind, section, latent)
fields = TrainConfig.__dataclass_fields__
config = TrainConfig(**{**{k: v for k, v in section.items() if k in fields}, "epochs": epochs, "seed": 0})
train = (torch.rand(images, 784, generator=torch.Generator().manual_seed(0)),)
with tempfile.TemporaryDirectory() as tmp:
    history = fit(model, lambda m, b: m.loss(b), train, config, f"{tmp}/c.pt", f"{tmp}/m.safetensors",
                  progress=False, device=torch.device(device))
print(json.dumps({"seconds_per_epoch": min(r.seconds for r in history)}))
"""


def time_tree(src: Path, kind: str, section: dict, epochs: int, device: str, images: int = IMAGES) -> float:
    """Best seconds per epoch of one fresh training of the params.yaml entry `section` in the tree whose
    package is at `src`."""
    args = json.dumps([kind, section, section.get("latent_dim"), epochs, device, images])
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
    parser.add_argument("--images", type=int, default=IMAGES, help="random training images (default: as many as the fives)")
    parser.add_argument("--names", nargs="+", default=NAMES, help="params.yaml model entries (default: one per family)")
    args = parser.parse_args()
    if args.rounds < 1 or args.epochs < 1 or args.images < 1:
        sys.exit("error: --rounds, --epochs and --images must be >= 1")
    from sarnet.core.params import resolve_models

    models = resolve_models(yaml.safe_load((ROOT / "params.yaml").read_text()))
    unknown = [name for name in args.names if name not in models]
    if unknown:
        sys.exit(f"error: no params.yaml model entry {unknown[0]!r}; choose from {', '.join(models)}")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"baseline {args.baseline}, {args.rounds} rounds of {args.epochs} epochs on {args.images:,} images")
    with tempfile.TemporaryDirectory() as scratch:
        baseline = Path(scratch) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(baseline), args.baseline],
                       check=True)
        try:
            for name in args.names:
                section = models[name]
                times: dict[str, list[float]] = {"baseline": [], "current": []}
                for _ in range(args.rounds):
                    for tree, src in (("baseline", baseline / "src"), ("current", ROOT / "src")):
                        times[tree].append(time_tree(src, section["kind"], section, args.epochs, args.device, args.images))
                best = {tree: min(values) for tree, values in times.items()}
                steps = -(-args.images // section["batch_size"])
                print(f"{name}: baseline {best['baseline']:.2f} s/epoch ({1000 * best['baseline'] / steps:.1f} ms/step), "
                      f"current {best['current']:.2f} s/epoch ({1000 * best['current'] / steps:.1f} ms/step) -> "
                      f"{best['baseline'] / best['current']:.2f}× faster; all epochs: baseline "
                      f"{[round(t, 2) for t in times['baseline']]}, current {[round(t, 2) for t in times['current']]}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)


if __name__ == "__main__":
    main()
