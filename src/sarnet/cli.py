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
