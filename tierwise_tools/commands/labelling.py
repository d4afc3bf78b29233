"""`tierwise label`: label queries by asking every tier and judging against tier 3."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from router_service.config import ConfigError, load
from tierwise.tiers import TIERS

from router_service.labelling import Tab

from ..label import label, read_queries
from .common import at_least, refusal


def register(sub) -> None:
    p = sub.add_parser("label", help="label queries by asking every tier and judging against tier 3")
    p.add_argument("--queries", type=Path, required=True, help="JSON lines with \"query\" (or plain lines)")
    p.add_argument("--config", required=True, help="router YAML: the tiers' providers and prices")
    p.add_argument("--out", type=Path, default=Path("labelled.jsonl"), help="records are appended here (resumable)")
    p.add_argument("--source", default="label", help="the records' source name")
    p.add_argument("--judge-tier", type=int, default=TIERS[0], choices=TIERS)
    p.add_argument("--rate", type=at_least(float, 0, strict=True), default=2.0,
                   help="provider calls started per second, at most")
    p.add_argument("--concurrency", type=at_least(int, 1), default=4, help="queries in flight")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
        queries = read_queries(args.queries, args.source)
    except (ConfigError, ValueError, OSError) as err:
        raise refusal(err) from None
    spent = Tab()
    try:
        summary = asyncio.run(label(cfg, queries, args.out, args.source, args.judge_tier, args.rate,
                                    args.concurrency, spent))
    except ValueError as err:  # --out holds something other than labelled records
        raise refusal(err, "--out: ") from None
    except (KeyboardInterrupt, SystemExit) as stop:  # SIGINT, or SIGTERM (cli.main)
        print(f"interrupted: this run's provider calls cost ${spent.usd:.4f}; the queries that were in flight are "
              f"paid for and not written (re-run to resume)", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else stop.code
    for failure in summary["failed"]:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"{summary['labelled']} labelled, {summary['already_done']} already in {args.out}, "
          f"{len(summary['failed'])} failed (re-run to retry them); this run's provider calls cost ${summary['cost_usd']:.4f}")
    return 1 if summary["failed"] else 0
