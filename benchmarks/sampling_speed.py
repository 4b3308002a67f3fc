"""Benchmark: SarNET VAE sampling and training speed on this machine, as ratios measured in one run.

    .venv/bin/python benchmarks/sampling_speed.py [--model models/sarnet_vae/sarnet_vae_L128.safetensors]

Prints: incremental vs naive sampling (goal ≥ 20×), incremental vs one batched decoder forward
pass (goal ≤ 1.5×), images/s for 10,000 images (the reference: 5–8 s per 10k on a GPU), seconds
per training epoch on the 5,421 training fives, and the fraction of the machine's matmul
throughput (float32 GEMM) that training reaches. The architecture and the sampling threshold are
params.yaml's (`models.sarnet_vae_L128`, `sampling.sarnet_vae`); a --model file brings its own architecture.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from sarnet.core.model_files import SUFFIX
from sarnet.core.params import resolve_models
from sarnet.core.training import TrainConfig, fit, seed_everything
from sarnet.families import build_model, load_model
from sarnet.families.sarnet_vae import SarNetVAE

ROOT = Path(__file__).resolve().parents[1]
LATENT_DIM = 128  # without --model: the thesis's main model, SarNetVAE L = 128


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_gflops(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = best_of(lambda: torch.mm(a, b), repeats=5)
    return 2 * n**3 / seconds / 1e9


def model_macs(model: SarNetVAE) -> int:
    """Multiply-accumulates of one training forward pass per image (dense decoder, as trained)."""
    macs = sum(layer.weight.numel() for layer in model.decoder.layers)
    x = torch.zeros(1, 1, 28, 28)
    for module in model.encoder.features:
        if isinstance(module, torch.nn.Conv2d):
            out = module(x)
            macs += out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            x = out
        else:
            x = module(x)
    macs += model.encoder.mu.weight.numel() + model.encoder.logvar.weight.numel()
    return macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="trained SarNET VAE model file, e.g. models/sarnet_vae/sarnet_vae_L128"
                                        f"{SUFFIX} (default: random weights, L = {LATENT_DIM})")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml to read (default: the project's)")
    parser.add_argument("--n-naive", type=int, default=500, help="images for the naive vs incremental ratio")
    parser.add_argument("--train-epochs", type=int, default=2)
    args = parser.parse_args()

    params = yaml.safe_load(Path(args.params).read_text())
    threshold = params["sampling"]["sarnet_vae"]["threshold"]
    seed_everything(0)
    if args.model:
        model = load_model(args.model, kind="sarnet_vae")
    else:
        model = build_model("sarnet_vae", resolve_models(params)[f"sarnet_vae_L{LATENT_DIM}"], LATENT_DIM)
    model.eval()
    latent = model.latent_dim
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; "
          f"SarNetVAE {model.model_args}, threshold {threshold}")

    n = args.n_naive
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    t_naive = best_of(lambda: model.sample(n, gen(), threshold=threshold, method="naive"), repeats=1)
    t_incr = best_of(lambda: model.sample(n, gen(), threshold=threshold, method="incremental"))
    print(f"sampling {n} images: naive {t_naive:.3f}s, incremental {t_incr:.3f}s -> incremental is {t_naive / t_incr:.1f}× faster (goal ≥ 20×)")

    n_big = 10_000
    z = torch.randn(n_big, latent, generator=gen())
    x = torch.rand(n_big, 784, generator=gen())
    with torch.no_grad():
        t_forward = best_of(lambda: model.decoder(x, z))
    t_10k = best_of(lambda: model.sample(n_big, gen(), threshold=threshold, method="incremental"))
    print(f"10,000 images: incremental sampling {t_10k:.3f}s vs one batched decoder forward {t_forward:.3f}s "
          f"-> ratio {t_10k / t_forward:.2f} (goal ≤ 1.5)")
    print(f"throughput: {n_big / t_10k:,.0f} images/s ({t_10k:.2f}s per 10k; reference 5–8 s per 10k on a GPU "
          f"-> {5 / t_10k:.1f}–{8 / t_10k:.1f}× faster)")

    train = (torch.rand(5421, 784, generator=gen()),)
    config = TrainConfig(epochs=args.train_epochs, batch_size=64, lr=1e-3, reduction="sum", seed=0)
    seed_everything(0)
    trainee = SarNetVAE(**model.model_args)  # the benchmarked architecture, fresh weights
    with tempfile.TemporaryDirectory() as tmp:
        history = fit(trainee, lambda m, b: m.loss(b), train, config, f"{tmp}/ckpt.pt", f"{tmp}/final{SUFFIX}",
                      progress=False, device=torch.device("cpu"))
    epoch_s = min(r.seconds for r in history)
    achieved = 3 * 2 * model_macs(trainee) * len(train[0]) / epoch_s / 1e9  # forward + backward ≈ 3 forwards
    peak = gemm_gflops()
    print(f"training SarNetVAE(L = {latent}): {epoch_s:.2f}s per epoch on 5,421 images; {achieved:.1f} GFLOP/s of "
          f"{peak:.1f} GFLOP/s GEMM peak -> {achieved / peak:.0%} of the machine's matmul throughput")


if __name__ == "__main__":
    main()
