"""Benchmark: the cached samplers of PixelCNN, PixelRNN (Row LSTM) and the VQ-VAE's prior against their
naive loops, as ratios measured in one run, and images/s for 10,000 images.

    .venv/bin/python benchmarks/autoregressive_sampling.py [--n-naive 20] [--n 10000] [--models DIR] [--names NAME ...]

The architectures are params.yaml's `baselines` entries, with random weights (sampling costs the same
for any weights) or, with --models, the trained files models/<kind>/<name>.safetensors. Goal: cached
≥ 50× faster than naive (issue 19), ≤ 3 ms per image (issue 33).

With `--baseline REV` it also times the cached sampler of the model's family module as it was at git
revision REV (over this tree's shared helpers), on the same weights and uniforms, alternating the two
for `--rounds` rounds on the `--n` images: the ratio and whether both drew the same images.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sarnet.core.params import resolve_models
from sarnet.core.training import seed_everything
from sarnet.families import build_model, load_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("pixelcnn", "vqvae", "pixelrnn_row")


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def baseline_model(model: torch.nn.Module, revision: str) -> torch.nn.Module:
    """The same model (arguments and weights) built from its family module as it was at `revision`."""
    module_name = type(model).__module__
    relative = "src/" + module_name.replace(".", "/") + ".py"
    source = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=ROOT, capture_output=True, text=True)
    if source.returncode:
        raise SystemExit(f"error: git show {revision}:{relative}: {source.stderr.strip()}")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(source.stdout)
    spec = importlib.util.spec_from_file_location(f"baseline_{module_name.rsplit('.', 1)[1]}", file.name)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        Path(file.name).unlink()
    old = getattr(module, type(model).__name__)(**model.model_args)
    old.load_state_dict(model.state_dict())
    return old.eval()


def compare_with_baseline(name: str, model: torch.nn.Module, revision: str, n: int, rounds: int, settings: dict) -> None:
    old = baseline_model(model, revision)
    best, images = {"baseline": float("inf"), "current": float("inf")}, {}
    for _ in range(rounds):
        for label, m in (("baseline", old), ("current", model)):
            start = time.perf_counter()
            images[label] = m.sample(n, torch.Generator().manual_seed(1), batch_size=settings["batch_size"],
                                     temperature=settings["temperature"])
            best[label] = min(best[label], time.perf_counter() - start)
    same = torch.equal(images["baseline"], images["current"])
    print(f"{name}: cached sampler at {revision} {best['baseline'] / n * 1e3:.2f} ms/image, now "
          f"{best['current'] / n * 1e3:.2f} ms/image: {best['baseline'] / best['current']:.2f}× faster; "
          f"same images: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-naive", type=int, default=20, help="images for the cached/naive ratio")
    parser.add_argument("--n", type=int, default=10_000, help="images for the throughput")
    parser.add_argument("--models", help="folder holding <kind>/<name>.safetensors (default: random weights)")
    parser.add_argument("--names", nargs="+", choices=MODELS, default=MODELS, help="which entries (default: all)")
    parser.add_argument("--baseline", help="git revision whose family module's cached sampler to compare with")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/current alternations with --baseline (best of)")
    args = parser.parse_args()
    if args.n_naive < 1 or args.n < 1:
        raise SystemExit("error: --n-naive and --n must be >= 1")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    models = resolve_models(params)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    for name in (name for name in args.names if name in models):
        entry = models[name]
        settings = params["sampling"][entry["kind"]]
        seed_everything(0)
        if args.models:
            path = Path(args.models) / entry["kind"] / f"{name}.safetensors"
            if not path.is_file():  # one untrained model does not cost the others' numbers
                print(f"{name}: no model file {path}, skipped (train it with `dvc repro`, or drop --models)")
                continue
            model = load_model(path)
        else:
            model = build_model(entry["kind"], entry, entry.get("latent_dim"))
        model.eval()

        def draw(n: int, method: str) -> None:
            model.sample(n, torch.Generator().manual_seed(1), batch_size=settings["batch_size"],
                         temperature=settings["temperature"], method=method)

        naive = seconds(lambda: draw(args.n_naive, "naive"))
        cached = seconds(lambda: draw(args.n_naive, "cached"))
        bulk = seconds(lambda: draw(args.n, "cached"))
        print(f"{name}: {args.n_naive} images naive {naive:.2f} s, cached {cached:.3f} s -> cached is "
              f"{naive / cached:.0f}× faster (goal ≥ 50×); {args.n:,} images cached in {bulk:.1f} s "
              f"({args.n / bulk:,.0f} images/s; 10 FID sets ≈ {10 * bulk * 10_000 / args.n / 60:.1f} min)")
        if args.baseline:
            compare_with_baseline(name, model, args.baseline, args.n, args.rounds, settings)


if __name__ == "__main__":
    main()
