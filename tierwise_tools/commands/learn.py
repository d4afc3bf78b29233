"""`tierwise learn`: train a head on the shadow's live labels, check it on labels it never saw, promote it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..learn import NOTHING_TO_DO, REFUSED, learn
from ..paths import HEADS_DIR
from .common import quality_target
from .promotion import show
from .train import head_name, prior_heads


def register(sub) -> None:
    p = sub.add_parser("learn", help="train a head on the shadow's live labels, check it on labels it never saw, "
                                     "and promote it into the classifier's heads (one run, for a CronJob)")
    p.add_argument("--labels", nargs="+", required=True,
                   help="the shadow's label files: paths or globs; {host} stands for every replica's name, so "
                        "shadow.labels's value names all their files")
    p.add_argument("--heads-dir", type=Path, default=HEADS_DIR, help="the directory the classifier serves")
    p.add_argument("--name", type=head_name,
                   help="the head's name (default: the head serving the lineup there, else learned-<lineup hash>)")
    p.add_argument("--target-quality", type=quality_target, default=0.95)
    p.add_argument("--prior-heads", type=Path, default=HEADS_DIR,
                   help="heads a head may build on, as for `tierwise train` (default: the shipped heads)")
    p.add_argument("--no-prior", action="store_true", help="fit on the labels alone")
    p.add_argument("--dry-run", action="store_true", help="train and check; install nothing")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--scheduled", action="store_true",
                   help="exit 0 when the serving head is kept (3) or labels are still too few (4), as a scheduler "
                        "that alerts on failed runs needs; bad input still fails")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    priors = [] if args.no_prior else prior_heads(args.prior_heads)
    report = learn(args.labels, args.heads_dir, args.target_quality, priors, args.name, args.dry_run)
    for warning in report.warnings:
        print(f"tierwise learn: {warning}", file=sys.stderr)
    code = 0 if args.scheduled and report.exit_code in (REFUSED, NOTHING_TO_DO) else report.exit_code
    if args.json:
        print(json.dumps(report.to_json()))
        return code
    for o in report.outcomes:
        print(f"lineup {' / '.join(o.lineup)}: {o.labels} labels ({o.held_out} held out to check on), head {o.head}")
        if o.check is not None:
            show(o.check, "held-out")
        else:
            print(f"{o.status}: {o.why}", file=sys.stderr if o.status == "bad input" else sys.stdout)
    if not report.outcomes:
        print("tierwise learn: nothing to do", file=sys.stderr)
    return code
