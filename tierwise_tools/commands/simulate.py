"""`tierwise simulate`: how long until a deployment pays, at what quality, for how much labelling."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from classifier_service.heads import Uncalibrated
from router_service.config import ConfigError, load as load_config
from tierwise.data import DataError, check_measurable, load

from ..embeddings import embed_records, offline_encoder
from ..paths import EMBEDDINGS_DIR, HEADS_DIR, ROOT
from ..simulate import report, shown, simulate, summary
from .common import at_least, heads_in, quality_target, refusal, seed


def register(sub) -> None:
    p = sub.add_parser("simulate", help="replay labelled traffic in order through shadow labelling, retraining and "
                       "promotion; savings and quality per window")
    p.add_argument("--data", type=Path, required=True, help="labelled routing records, in the order they arrive")
    p.add_argument("--shadow-rate", type=at_least(float, 0), required=True, help="share of queries labelled (0..1)")
    p.add_argument("--retrain-every", type=at_least(int, 1),
                   help="retrain after every N labels (default: at 50, 100, 200, 400, ... labels); either way also "
                        "when the latest labels show the serving head misses the target")
    p.add_argument("--window", type=at_least(int, 1), default=500, help="queries per reported window")
    p.add_argument("--target-quality", type=quality_target, default=0.95)
    p.add_argument("--heads-dir", type=Path, default=HEADS_DIR, help="the shipped heads the deployment starts from")
    p.add_argument("--config", type=Path, default=ROOT / "tierwise.example.yaml",
                   help="router config: the judge tier (shadow.judge_tier) and its price")
    p.add_argument("--label-budget", type=at_least(float, 0), default=0.0, metavar="USD",
                   help="stop labelling once it has cost this much over the replay (0 = no limit), as the router's "
                        "shadow.monthly_budget_usd does within a month")
    p.add_argument("--seed", type=seed, default=0, help="which queries the shadow draws")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--report", type=Path, help="write a Markdown report and a PNG of savings and quality over time")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.shadow_rate > 1:
        raise DataError("--shadow-rate: must be between 0 and 1")
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        raise refusal(err, "--config: ") from None
    registry = heads_in(args.heads_dir, "--heads-dir")
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)  # an unusable --report fails now, not after the replay
    records = load([args.data])
    check_measurable(records, str(args.data))
    x = embed_records(offline_encoder(), records, EMBEDDINGS_DIR)
    try:
        sim = simulate(records, x, registry, cfg, args.shadow_rate, args.target_quality, args.retrain_every, args.seed,
                       args.label_budget)
    except Uncalibrated as err:  # the starting head has no tradeoff that keeps the target
        raise DataError(f"--target-quality: {err}") from None
    if sim.renamed:
        models = sim.records[0].models
        print(f"tierwise simulate: {sim.renamed} of {len(records)} records name other tier models than the rest; "
              f"replayed as one deployment of {' / '.join(models) if all(models) else 'unnamed models'}",
              file=sys.stderr)
    result = sim.result(args.window)
    if args.report:
        print(f"wrote {report(result, args.window, args.report)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    for w in result["windows"]:
        print(f"{w['n']:6d} queries, {w['labels']:5d} labels: gross savings {shown(w['cost_savings'], '7.1%')}, "
              f"net {shown(w['net_savings'], '7.1%')}, quality vs frontier {shown(w['quality_vs_frontier'], '.3f')}")
    drift = sum(p["trigger"] == "drift" for p in result["promotions"])
    print(f"total: {summary(result['total'])}; "
          f"{sum(p['promoted'] for p in result['promotions'])} of {len(result['promotions'])} candidates promoted"
          + (f" ({drift} retrained on drift)" if drift else ""))
    return 0
