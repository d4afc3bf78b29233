"""`tierwise costs`: the monthly cost table at the configured prices."""
from __future__ import annotations

import argparse
from pathlib import Path

from router_service.config import ConfigError, load

from .. import costs
from ..paths import ROOT
from .common import at_least, refusal


def register(sub) -> None:
    p = sub.add_parser("costs", help="monthly cost table at the configured prices")
    p.add_argument("--queries-per-month", type=at_least(int, 0), required=True)
    p.add_argument("--mix", help="a tier mix in percent, e.g. 60/25/15")
    p.add_argument("--from-eval", nargs="+", type=Path, help="JSON written by `tierwise eval --json`")
    p.add_argument("--config", default=str(ROOT / "tierwise.example.yaml"))
    p.add_argument("--input-tokens", type=at_least(int, 0), default=400)
    p.add_argument("--output-tokens", type=at_least(int, 0), help="default: the config's expected_output_tokens")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
        mix = costs.parse_mix(args.mix) if args.mix else None
        rows = [(f"mix {args.mix}", mix, mix)] if mix else []
        rows += [_from_eval(p) for p in args.from_eval or ()]
    except (ConfigError, ValueError, OSError) as err:
        raise refusal(err) from None
    output = cfg.expected_output_tokens if args.output_tokens is None else args.output_tokens  # 0 is an answer
    print(costs.table(cfg, args.queries_per_month, rows, args.input_tokens, output), end="")
    return 0


def _from_eval(path: Path):
    try:
        return costs.from_eval(path)
    except (KeyError, TypeError, AttributeError) as err:  # JSON, but not the shape eval writes
        raise ValueError(f"--from-eval {path}: not what `tierwise eval --json` writes ({type(err).__name__}: "
                         f"{err})") from None
