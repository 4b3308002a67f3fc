"""The `sarnet` command line."""

from __future__ import annotations

import argparse
import os
import sys

from sarnet.errors import SarnetError


def _init_tracking(args: argparse.Namespace) -> None:
    from sarnet.tracking import init_store, tracking_uri

    experiment_id = init_store(args.experiment)
    print(f"MLflow store {tracking_uri()}: experiment {args.experiment!r} (id {experiment_id}) ready")


def _ui(args: argparse.Namespace) -> None:
    from sarnet.tracking import init_store, tracking_uri

    init_store()
    uri = tracking_uri()
    print(f"MLflow UI on http://{args.host}:{args.port} over {uri} (Ctrl-C stops it)", flush=True)
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(mlflow, [mlflow, "server", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])


def _load_generator(path: str, params_file: str):
    """(kind, model) from a trained state dict; the kind and latent size are read off its keys and
    shapes, the hidden layer shapes from params.yaml (the defaults if the file is absent)."""
    from pathlib import Path

    import torch
    import yaml

    from sarnet.models import build_model

    if not Path(path).is_file():
        raise SarnetError(f"{path}: no such model file; train it with `dvc repro` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SarnetError(f"{path}: not a state dict saved by sarnet ({type(exc).__name__})") from None
    if "deconv.0.weight" in state:
        kind = "conv_vae"
    elif "decoder.layers.0.weight" in state:
        kind = "sarnet_vae"
    elif "stack.layers.0.weight" in state:
        kind = "sarnet"
    else:
        raise SarnetError(f"{path}: not a SarNET, SarNET VAE or conv VAE state dict")
    all_params = yaml.safe_load(Path(params_file).read_text()) if Path(params_file).is_file() else {}
    params = dict(all_params.get(kind, {}))
    if kind == "sarnet":
        channels = state["stack.layers.0.mask"].shape[1] // 784  # input channels: 1 (regression) or C classes
        params["classes"] = channels if channels > 1 else 0
    latent_dim = state["encoder.mu.weight"].shape[0] if "encoder.mu.weight" in state else None
    model = build_model(kind, params, latent_dim)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SarnetError(f"{path}: does not match the architecture in {params_file} ({str(exc).splitlines()[0]})") from None
    return kind, model.eval(), all_params.get("sampling", {})


def _save_outputs(images, out: str, npz: str | None, nrow: int) -> None:
    import numpy as np

    from sarnet.figures import save_grid
    from sarnet.files import atomic_path

    save_grid(images.reshape(-1, 28, 28), out, nrow=nrow)
    print(f"wrote {out}")
    if npz:
        with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=images.numpy())
        print(f"wrote {npz}")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from sarnet.sampling import generate_model_samples

    if args.n < 1:
        raise SarnetError(f"-n must be >= 1, got {args.n}")
    kind, model, sampling = _load_generator(args.model, args.params)
    if args.threshold is not None:
        sampling.setdefault("sarnet_vae", {})["threshold"] = args.threshold
    images = generate_model_samples(kind, model, args.n, torch.Generator().manual_seed(args.seed), sampling)
    _save_outputs(images, args.out, args.npz, args.nrow)


def _inpaint(args: argparse.Namespace) -> None:
    import torch

    from sarnet.data import load_prepared, to_unit_tensor
    from sarnet.models import SarNetVAE

    kind, model, sampling = _load_generator(args.model, args.params)
    if not isinstance(model, SarNetVAE):
        raise SarnetError(f"{args.model}: inpainting needs a SarNET VAE, this is a {kind}")
    settings = {"keep_patches": 24, "n_styles": 8, "z_scale": 1 / 1.5, "threshold": 0.15} | sampling.get("inpaint", {})
    keep = args.keep_patches if args.keep_patches is not None else settings["keep_patches"]
    styles = args.n_styles if args.n_styles is not None else settings["n_styles"]
    if not 1 <= keep <= model.decoder.n_patches:
        raise SarnetError(f"--keep-patches must be in 1..{model.decoder.n_patches}, got {keep}")
    test = load_prepared(args.data, digit=None if args.digit < 0 else args.digit).test
    if any(not 0 <= i < len(test.images) for i in args.index):
        raise SarnetError(f"--index must be in 0..{len(test.images) - 1}")
    images = to_unit_tensor(test.images[args.index])
    completed = model.inpaint(images, keep, styles, torch.Generator().manual_seed(args.seed),
                              z_scale=settings["z_scale"], threshold=settings["threshold"])
    kept = images.flatten(1).clone()
    kept[:, model.decoder.layers[0].in_patch_index >= keep] = 0
    rows = torch.cat([images[:, None], kept.view(-1, 1, 28, 28), completed], dim=1)  # original, kept part, styles
    _save_outputs(rows, args.out, args.npz, nrow=styles + 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sarnet", description="SarNET research pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-tracking", help="create the MLflow store and experiment (once, before parallel runs)")
    p.add_argument("--experiment", default="sarnet")
    p.set_defaults(func=_init_tracking)

    p = sub.add_parser("ui", help="open the MLflow UI on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui)

    p = sub.add_parser("sample", help="generate images from a trained model into a PNG grid")
    p.add_argument("--model", required=True, help="state dict, e.g. models/sarnet_vae/sarnet_vae_L128.pt")
    p.add_argument("-n", type=int, default=100, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, help="SarNET VAE pixel threshold (default: params.yaml)")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--npz", help="also write the images as .npz")
    p.add_argument("--nrow", type=int, default=10)
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_sample)

    p = sub.add_parser("inpaint", help="complete test images from their top patches in several styles")
    p.add_argument("--model", required=True, help="SarNET VAE state dict")
    p.add_argument("--data", default="data/prepared/mnist.npz", help="prepared dataset (.npz)")
    p.add_argument("--digit", type=int, default=5, help="class to take test images from (-1: all)")
    p.add_argument("--index", type=int, nargs="+", default=[0, 1, 2, 3], help="test image indices")
    p.add_argument("--keep-patches", type=int, help="patches kept from each image (default: params.yaml, 24)")
    p.add_argument("--n-styles", type=int, help="completions per image (default: params.yaml, 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="inpaint.png")
    p.add_argument("--npz", help="also write the completions as .npz")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_inpaint)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SarnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
