"""`tierwise promote`: check a trained head on records it never saw; install it if it holds the target.
`tierwise rollback`: serve again the head a promotion replaced."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from classifier_service.heads import check_name
from tierwise.data import DataError

from ..paths import EMBEDDINGS_DIR, ENCODER_DIR, HEADS_DIR
from ..promote import promote, roll_back
from .common import add_data, data_paths, quality_target, read_records


def register(sub) -> None:
    p = sub.add_parser("promote", help="check a trained head on records it never saw; install it if it holds the target")
    p.add_argument("--candidate", type=Path, required=True, help="directory with the candidate's head.json (`train --out`)")
    add_data(p, "labelled routing records, e.g. from shadow.labels")
    p.add_argument("--split", choices=("all", "held-out"), default="held-out",
                   help="held-out (default): the fifth `train` never fits on, for a candidate trained on the same files")
    p.add_argument("--target-quality", type=quality_target, default=0.95)
    p.add_argument("--heads-dir", type=Path, default=HEADS_DIR, help="the directory the classifier serves")
    p.add_argument("--dry-run", action="store_true", help="check only; install nothing")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(run=run)
    r = sub.add_parser("rollback", help="serve again the head a promotion replaced (swaps head.json and "
                                        "head.json.previous; run again to undo)")
    r.add_argument("--name", required=True, help="the head's name: its directory under --heads-dir")
    r.add_argument("--heads-dir", type=Path, default=HEADS_DIR, help="the directory the classifier serves")
    r.set_defaults(run=run_rollback)


def run(args: argparse.Namespace) -> int:
    records = read_records(data_paths(args.data, "promote"), args.split)
    try:
        result = promote(args.candidate, records, args.heads_dir, args.target_quality, ENCODER_DIR, EMBEDDINGS_DIR,
                         args.dry_run)
    except KeyError as err:  # the candidate has no tradeoff for this target
        raise DataError(err.args[0]) from None
    if args.json:
        print(json.dumps(result))
    else:
        show(result, args.split)
    return 0 if result["passed"] else 3


def run_rollback(args: argparse.Namespace) -> int:
    head_dir = args.heads_dir / args.name
    if not _is_head_name(args.name) or not (head_dir / "head.json").exists():
        raise DataError(f"--name: no head {args.name!r} in {args.heads_dir}")
    restored, set_aside = roll_back(head_dir)
    print(f"{args.name}: serving {restored.version} again (was {set_aside.version}, now kept as head.json.previous; "
          "`tierwise rollback` again undoes this); a classifier serving this directory swaps it in within its "
          "--heads-reload-seconds")
    return 0


def show(result: dict, split: str) -> None:
    for role in ("candidate", "serving"):
        m = result[role]
        if m is not None:
            print(f"{role:9} {m['version']}: quality vs frontier {m['quality_vs_frontier']:.4f} "
                  f"(95% bounds {m['quality_vs_frontier_lower_bound']:.4f}-{m['quality_vs_frontier_upper_bound']:.4f}), savings {m['cost_savings']:.1%}, "
                  f"tier mix {' / '.join(f'{t:.3f}' for t in m['tier_mix'])}")
    outcome = ("promoted" if result["promoted"] else "refused" if not result["passed"] else
               "already serving" if result["unchanged"] else "would promote (dry run)")
    print(f"{outcome} on {result['n']} records ({split}): {result['why']}"
          + (f"; installed to {result['installed_to']}" if result["promoted"] else ""))
    serving, candidate = result["serving"], result["candidate"]
    if result["passed"] and (serving is None or serving["head"] != candidate["head"]):
        found_by = (f"routers naming no head use it when their tiers' first models are "
                    f"{' / '.join(candidate['models'])}; others " if candidate["models"] else "routers use it ")
        print(f"a new head: {found_by}once their config says classifier.head: {candidate['head']}")


def _is_head_name(text: str) -> bool:
    """Whether `text` can name a head (a directory of its own under the heads dir: no "..", no path)."""
    try:
        check_name(text)
    except ValueError:
        return False
    return True
