"""The `tierwise` command: offline tools over the same code the services run."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .data import shared_files

ROOT = Path(__file__).resolve().parent.parent


def _train(args: argparse.Namespace) -> int:
    from classifier_service.train import train

    data = args.data or shared_files()
    if not data:
        print("tierwise train: no --data given and ../shared/data/routing is absent", file=sys.stderr)
        return 2
    head = train([Path(p) for p in data], args.out / args.name, args.name, args.target_quality, args.c)
    print(f"wrote {args.out / args.name / 'head.json'} version={head.version} thresholds={head.thresholds}")
    for key in sorted(k for k in head.card if k.startswith("held_out_")):
        print(f"  {key}: {head.card[key]}")
    return 0


def _client(args: argparse.Namespace):
    from .client import ClientOptions, RouterClient

    return RouterClient(args.address, ClientOptions(timeout_s=args.timeout, api_key=os.environ.get("TIERWISE_API_KEY"),
                                                    tls=args.tls))


def _route(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with _client(args) as tw:
        reply = tw.route(args.query, strategy=args.strategy)
    print(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True), indent=2))
    return 0


def _complete(args: argparse.Namespace) -> int:
    with _client(args) as tw:
        for piece in tw.stream(args.prompt, strategy=args.strategy, max_tokens=args.max_tokens):
            print(piece, end="", flush=True)
        s = tw.last_summary
    print()
    if s is not None:
        print(f"[tier {s.tier} {s.provider}/{s.model} strategy={s.strategy}{' degraded' if s.degraded else ''} "
              f"tokens={s.usage.input_tokens}+{s.usage.output_tokens} cost=${s.cost_usd:.6f} "
              f"escalations={s.escalations}]", file=sys.stderr)
    return 0


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("TIERWISE_ROUTER_ADDRESS", "127.0.0.1:50052"),
                   help="router host:port (env TIERWISE_ROUTER_ADDRESS)")
    p.add_argument("--strategy", default="", help="routing strategy (default: the router's)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    p.add_argument("--tls", action="store_true", help="use TLS (API key from TIERWISE_API_KEY)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tierwise")
    sub = ap.add_subparsers(dest="command", required=True)
    ro = sub.add_parser("route", help="ask the router which tier a query needs")
    ro.add_argument("query")
    _add_client_flags(ro)
    ro.set_defaults(run=_route)
    co = sub.add_parser("complete", help="answer a prompt through the router, streaming")
    co.add_argument("prompt")
    co.add_argument("--max-tokens", type=int, default=0)
    _add_client_flags(co)
    co.set_defaults(run=_complete)
    tr = sub.add_parser("train", help="fit the tier head the classifier serves")
    tr.add_argument("--data", nargs="+", help="routing records (default: ../shared/data/routing/*.dev.jsonl)")
    tr.add_argument("--out", type=Path, default=ROOT / "models" / "heads")
    tr.add_argument("--name", default="default")
    tr.add_argument("--target-quality", type=float, default=0.95)
    tr.add_argument("--c", type=float, default=1.0, help="inverse L2 regularisation strength")
    tr.set_defaults(run=_train)
    args = ap.parse_args(argv)
    try:
        return args.run(args)
    except Exception as err:  # a gRPC error: print its status, not a traceback
        import grpc

        if isinstance(err, grpc.RpcError):
            print(f"tierwise {args.command}: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
