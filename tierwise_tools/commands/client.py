"""`tierwise route` and `tierwise complete`: ask a running router, through the Python client."""
from __future__ import annotations

import argparse
import json
import os
import sys

from google.protobuf.json_format import MessageToDict

from tierwise.client import ClientOptions, RouterClient

from .common import at_least, quality_target


def register(sub) -> None:
    ro = sub.add_parser("route", help="ask the router which tier a query needs")
    ro.add_argument("query")
    _add_client_flags(ro)
    ro.set_defaults(run=route)
    co = sub.add_parser("complete", help="answer a prompt through the router, streaming")
    co.add_argument("prompt")
    co.add_argument("--max-tokens", type=at_least(int, 0), default=0)
    _add_client_flags(co)
    co.set_defaults(run=complete)


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    # TIERWISE_ADDRESS is the name the Node, Go and Java examples read; the older TIERWISE_ROUTER_ADDRESS still works
    address = os.environ.get("TIERWISE_ADDRESS") or os.environ.get("TIERWISE_ROUTER_ADDRESS") or "127.0.0.1:50052"
    p.add_argument("--address", default=address, help="router host:port (env TIERWISE_ADDRESS)")
    p.add_argument("--strategy", default="", help="routing strategy (default: the router's)")
    p.add_argument("--quality-target", type=quality_target, help="quality vs frontier the decision is held to, "
                   "e.g. 0.99 (default: the head's)")
    p.add_argument("--timeout", type=at_least(float, 0, strict=True), default=60.0, help="deadline in seconds")
    p.add_argument("--tls", action="store_true", help="use TLS; the API key (env TIERWISE_API_KEY) goes out in clear "
                   "without it")


def _client(args: argparse.Namespace) -> RouterClient:
    return RouterClient(args.address, ClientOptions(timeout_s=args.timeout, api_key=os.environ.get("TIERWISE_API_KEY"),
                                                    tls=args.tls))


def route(args: argparse.Namespace) -> int:
    with _client(args) as tw:
        reply = tw.route(args.query, strategy=args.strategy, quality_target=args.quality_target)
    print(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True), indent=2))
    return 0


def complete(args: argparse.Namespace) -> int:
    with _client(args) as tw:
        for piece in tw.stream(args.prompt, strategy=args.strategy, max_tokens=args.max_tokens,
                               quality_target=args.quality_target):
            print(piece, end="", flush=True)
        s = tw.last_summary
    print()
    if s is not None:
        print(f"[tier {s.tier} {s.provider}/{s.model} strategy={s.strategy}{' degraded' if s.degraded else ''} "
              f"tokens={s.usage.input_tokens}+{s.usage.output_tokens} cost=${s.cost_usd:.6f} "
              f"escalations={s.escalations}]", file=sys.stderr)
    return 0
