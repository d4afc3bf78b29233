"""`tierwise train`: fit the tier head the classifier serves."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from classifier_service.heads import TierHead, check_name
from tierwise.data import DataError, shared_files

from ..calibration import ALWAYS_TIER_3
from ..paths import HEADS_DIR
from ..train import POOLED, train
from .common import add_data, at_least, heads_in, quality_target


def register(sub) -> None:
    p = sub.add_parser("train", help="fit the tier head the classifier serves")
    add_data(p)
    p.add_argument("--out", type=Path, default=HEADS_DIR)
    p.add_argument("--name", type=head_name, default="default", help="the head's name (lowercase letters, digits, "
                   "'.', '_', '-'); it is written to OUT/NAME")
    p.add_argument("--target-quality", type=quality_target, default=0.95)
    p.add_argument("--c", type=at_least(float, 0, strict=True),
                   help="inverse L2 regularisation strength (default: chosen by cross-validation)")
    p.add_argument("--prior-heads", type=Path, default=HEADS_DIR,
                   help="heads a head for one lineup may build on, where they predict its records better "
                        "(default: the shipped heads; docs/decisions/0019)")
    p.add_argument("--no-prior", action="store_true", help="fit on the given records alone")
    p.set_defaults(run=run)


def head_name(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def prior_heads(directory: Path) -> list[TierHead]:
    """The heads under `directory`; none where there are none. A broken head file, or no such directory (a
    mistyped path would quietly train without priors), is bad input."""
    if not directory.is_dir():
        raise DataError(f"--prior-heads: {directory} is not a directory (--no-prior fits on the records alone)")
    return list(heads_in(directory, "--prior-heads")) if any(directory.glob("*/head.json")) else []


def run(args: argparse.Namespace) -> int:
    data = args.data or shared_files()
    if not data:
        print("tierwise train: no --data given and ../shared/data/routing is absent", file=sys.stderr)
        return 2
    priors = [] if args.no_prior else prior_heads(args.prior_heads)
    if any(args.out.glob("*/head.json")):  # a head of this name elsewhere there would make two of one name
        heads_in(args.out, "--out", installing=True)
    directory = args.out / args.name
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)  # an --out it cannot write fails now, not after fitting
    try:
        head = train([Path(p) for p in data], directory, args.name, args.target_quality, args.c, priors=priors)
    except BaseException:
        if made and not any(directory.iterdir()):
            directory.rmdir()  # a failed run leaves no empty head directory for promote or the classifier to trip on
        raise
    print(f"wrote {args.out / args.name / 'head.json'} version={head.version} tradeoff={head.tradeoff:g}")
    for key in sorted(k for k in head.card if k.startswith("held_out")):
        print(f"  {key}: {head.card[key]}")
    if head.card["lineup"].startswith(POOLED):
        print("tierwise train: the records name several tier lineups, so this is one head for any lineup, "
              "calibrated leave-one-lineup-out and built on no prior head; to train one lineup's head, give only "
              "its records", file=sys.stderr)
    if head.tradeoff == ALWAYS_TIER_3:
        print(f"tierwise train: on {head.card['n_dev']} development records no tradeoff met the {args.target_quality:g} "
              "target with confidence, so this head sends every query to tier 3. Label more queries: on the shared "
              "data, savings at the calibrated point grew until 800-1600 (docs/decisions/0013)", file=sys.stderr)
    return 0
