"""Benchmark: the simple SarNET noise sampler, "incremental" (only the units of patches <= i+1 at step i)
against "naive" (the whole stack at every step, as the thesis's notebooks), as ratios measured in one run,
and both in forward passes per image.

    .venv/bin/python benchmarks/sarnet_sampling.py [--n 2048] [--rounds 3] [--names sarnet sarnet_patch2 ...]

The architectures are params.yaml's regression entries with random weights (the sampler's cost does not
depend on the weights) and their `sampling.sarnet` settings. Each method's time is its best of `--rounds`;
"forward passes" divides it by the time of one plain forward pass over the same images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from sarnet.core.params import resolve_models
from sarnet.core.training import seed_everything
from sarnet.families import build_model

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("sarnet", "sarnet_patch2", "sarnet_patch7")


def best_of(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="images per timing (one sampler batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--names", nargs="+", choices=NAMES, default=NAMES)
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1:
        raise SystemExit("error: --n and --rounds must be >= 1")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    models, settings = resolve_models(params), params["sampling"]["sarnet"]
    noise = {k: settings[k] for k in ("alpha_max", "p_earlier", "threshold", "refine")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} images, best of {args.rounds}")
    for name in args.names:
        seed_everything(0)
        model = build_model("sarnet", models[name], None).eval()
        x = torch.rand(args.n, 784)
        with torch.no_grad():
            forward = best_of(lambda: model.stack(x), args.rounds)
        timed = {method: best_of(lambda: model.sample_noise(args.n, torch.Generator().manual_seed(1), **noise,
                                                            method=method), args.rounds)
                 for method in ("naive", "incremental")}
        print(f"{name} ({model.stack.n_patches} patches): naive {timed['naive'] / args.n * 1e3:.2f} ms/image "
              f"({timed['naive'] / forward:.1f} forward passes), incremental {timed['incremental'] / args.n * 1e3:.2f} "
              f"ms/image ({timed['incremental'] / forward:.1f} forward passes): {timed['naive'] / timed['incremental']:.2f}× faster")


if __name__ == "__main__":
    main()
