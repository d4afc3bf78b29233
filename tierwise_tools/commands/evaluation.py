"""`tierwise eval`: replay strategies offline on benchmark records."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from router_service.config import ConfigError
from tierwise.data import DataError, check_measurable

from .. import evaluate
from ..paths import HEADS_DIR
from ..replays import LISTED, cascade_options, check, replay
from .common import add_data, add_live_gate, data_paths, heads_in, quality_target, read_records, refusal, spent


def register(sub) -> None:
    p = sub.add_parser("eval", help="replay strategies offline on benchmark records")
    add_data(p)
    p.add_argument("--strategy", default="embedding", help="heuristic, embedding (default), cascade, embedding+cascade, "
                   "a baseline, or as-routed (the live router's decisions, on records its shadow labelled)")
    p.add_argument("--target-quality", type=quality_target, default=0.95)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--report", type=Path, help="write Markdown + PNG curves for every strategy and baseline here")
    p.add_argument("--split", choices=("all", "held-out", "dev"), default="all",
                   help="held-out: only the fifth of each file (by id hash) that training never sees")
    p.add_argument("--head", default="",
                   help="classifier head (default: the head trained on the records' tier lineup, else the default head)")
    p.add_argument("--heads-dir", type=Path, default=HEADS_DIR)
    p.add_argument("--gate", default="", help="quality gate the cascades run (default: the router's, cascade.gate)")
    p.add_argument("--config", type=Path, help="router config: the cascades run as it says (cascade.start, "
                   "cascade.gate), and a gate that asks a model (verify) calls its providers, live and paid")
    add_live_gate(p)
    p.add_argument("--verdicts", type=Path, help="keep the verifier's verdicts in this JSONL file and reuse them: "
                   "an interrupted run resumes, and calibrate then eval pay once")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    by_file = {p: read_records([p], args.split) for p in data_paths(args.data, "eval")}  # each file read once
    records = [r for part in by_file.values() for r in part]
    check_measurable(records, f"{' '.join(map(str, by_file))} ({args.split})")
    if any(args.heads_dir.glob("*/head.json")):  # none is fine for strategies without a head
        heads_in(args.heads_dir, "--heads-dir")
    try:
        check(args.strategy)
        options = cascade_options(args.config, args.gate, args.concurrency, args.verdicts,
                                  target_quality=args.target_quality, heads_dir=args.heads_dir, head=args.head)
        result = replay(args.strategy, records, options).result(args.target_quality)
    except KeyError as err:
        raise DataError(err.args[0]) from None
    except ConfigError as err:
        raise refusal(err, "--config: ") from None
    if args.report:
        per_file = {}
        for p, part in by_file.items():
            check_measurable(part, f"{p} ({args.split})")
            live = any(r.routed_tier is not None for r in part)
            per_file[str(p)] = {name: _row(name, part, options, args.target_quality)
                                for name in LISTED if live or name != evaluate.AS_ROUTED}
        print(f"wrote {evaluate.report(per_file, args.report)}", file=sys.stderr)
    if options.live_gate is not None:
        spent(options.live_gate)
    if args.json:
        if result["curve"] is not None:
            result["curve"].pop("points")
        print(json.dumps(result))
    else:
        show(result)
    return 0


def _row(name: str, records, options, target: float) -> dict:
    """A strategy's result for the report; one that cannot be scored on these records (as-routed, where tier 3
    answered none of the routed ones) says why in its row instead of failing the whole report."""
    try:
        return replay(name, records, options).result(target)
    except DataError as err:
        return evaluate.Replay.nothing(name, len(records), str(err)).result(target)


def show(result: dict) -> None:
    if result["operating_point"] is None:
        print(f"{result['strategy']}: none of the {result['not_replayable']} records is replayable ({result['why']})")
        return
    op, curve = result["operating_point"], result["curve"]
    print(f"{result['strategy']} on {result['n']} records ({result['not_replayable']} not replayable)")
    for key in ("accuracy", "cost_savings", "quality_preserved", "answer_quality", "quality_vs_frontier"):
        print(f"  {key:22} {op[key]:.4f}")
    if "quality_vs_frontier_lower_bound" in result:
        print(f"  {'  95% lower bound':22} {result['quality_vs_frontier_lower_bound']:.4f}")
    print(f"  {'tier_mix':22} {' / '.join(f'{t:.3f}' for t in op['tier_mix'])}")
    for q, v in curve["savings_at_quality"].items():
        print(f"  savings@{q}Q (curve)   {'none' if v is None else f'{v:.4f}'}")
    print(f"  {'aiq':22} {curve['aiq']:.4f}")
