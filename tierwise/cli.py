"""The `tierwise` command: offline tools over the same code the services run."""
from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tierwise")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="fit the tier head the classifier serves")
    tr.add_argument("--data", nargs="+", help="routing records (default: ../shared/data/routing/*.dev.jsonl)")
    tr.add_argument("--out", type=Path, default=ROOT / "models" / "heads")
    tr.add_argument("--name", default="default")
    tr.add_argument("--target-quality", type=float, default=0.95)
    tr.add_argument("--c", type=float, default=1.0, help="inverse L2 regularisation strength")
    tr.set_defaults(run=_train)
    args = ap.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
