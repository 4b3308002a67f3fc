"""Profile: where a training step's time goes, by operator, for the SarNET VAE and the conv VAE.

    .venv/bin/python benchmarks/training_profile.py [--steps 40] [--top 12]

Runs `--steps` training steps (batch 64, Adam, the paper's `params.yaml` settings, L = 128) after a
warm-up under torch.profiler and prints each model's operators by self CPU time. The numbers are
this machine's; the ranking says what to speed up first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from sarnet.core.params import resolve_models
from sarnet.core.training import seed_everything
from sarnet.families import build_model

ROOT = Path(__file__).resolve().parents[1]
LATENT_DIM = 128


def profile_steps(kind: str, section: dict, steps: int, top: int) -> None:
    seed_everything(0)
    model = build_model(kind, section, LATENT_DIM).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=section["lr"], fused=True)
    batch = (torch.rand(section["batch_size"], 784, generator=torch.Generator().manual_seed(0)),)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch).sum().backward()
        optimizer.step()

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n{kind} L = {LATENT_DIM}, batch {section['batch_size']}: {total / steps / 1000:.1f} ms per step (profiled)")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        print(f"  {e.self_cpu_time_total / total:6.1%}  {e.self_cpu_time_total / steps / 1000:6.2f} ms  {e.key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if args.steps < 1 or args.top < 1:
        raise SystemExit("error: --steps and --top must be >= 1")
    models = resolve_models(yaml.safe_load((ROOT / "params.yaml").read_text()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    for kind in ("sarnet_vae", "conv_vae"):
        profile_steps(kind, models[f"{kind}_L{LATENT_DIM}"], args.steps, args.top)  # Table 4.1's L = 128 rows


if __name__ == "__main__":
    main()
