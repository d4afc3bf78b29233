"""`tierwise calibrate`: a head's tradeoff, or with --config a cascade's verifier bar, for a quality target."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from classifier_service.heads import TierHead
from router_service.config import ConfigError
from tierwise.atomic import changing
from tierwise.data import DataError, Record, check_measurable, load, shared_files

from .. import evaluate
from ..calibration import TRADEOFFS, calibrate, cheapest_meeting
from ..embeddings import embed_records, offline_encoder
from ..fitting import MIN_DEV_RECORDS
from ..paths import EMBEDDINGS_DIR, HEADS_DIR
from ..promote import install, lineup_records
from ..replays import cascade_options, replay, unreplayable_start
from ..train import card_name, fitted_files
from .common import add_data, add_live_gate, data_paths, heads_in, part_of, quality_target, refusal, spent


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="choose a head's tradeoff (or, with --config, a verifier's bar) for a "
                       "quality target, with a confidence bound")
    add_data(p)
    p.add_argument("--target-quality", type=quality_target, default=0.95)
    p.add_argument("--head", default="default")
    p.add_argument("--heads-dir", type=Path, default=HEADS_DIR)
    p.add_argument("--include-held-out", action="store_true",
                   help="also use the held-out fifth (by default it is never calibrated on)")
    p.add_argument("--config", type=Path, help="router config whose verify gate's bar (cascade.verifier_bar) to "
                   "calibrate instead of a head: its verifier judges the records' answers, live and paid")
    add_live_gate(p)
    p.add_argument("--verdicts", type=Path, help="as eval --verdicts")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    files = [(path, load([path])) for path in data_paths(args.data, "calibrate")]  # read once: never_fitted too
    records = [r for _, read in files for r in part_of(read, "all" if args.include_held_out else "dev")]
    return calibrate_cascade(args, files, records) if args.config else calibrate_head(args, files, records)


def never_fitted(heads, files: list[tuple[Path, list[Record]]], records: list[Record]) -> tuple[list[Record], int]:
    """The `records` (read from `files`) that none of `heads` was fitted on, and how many one was. A card names the
    files its head was fitted on; their development part, wherever those records are found again (the shared
    files, or a slice of them), is left out. A tradeoff chosen on a head's own training records promises a quality
    it does not keep on new ones (0.956 in-sample, 0.935 held out, for the default head)."""
    read: dict[str, list[Record]] = defaultdict(list)  # files of one name in two directories count as one
    for path, part in files:
        read[card_name(path)] += part
    shared = {card_name(path): path for path in shared_files()}
    fitted = {r.id for name in set().union(*(fitted_files(head.card) for head in heads))
              if name in read or name in shared
              for r in part_of(read[name] if name in read else load([shared[name]]), "dev")}
    kept = [r for r in records if r.id not in fitted]
    return kept, len(records) - len(kept)


def calibrate_head(args: argparse.Namespace, files: list[tuple[Path, list[Record]]], records: list[Record]) -> int:
    # Held from reading the head to installing it, as promote, learn and rollback hold it: a promotion at the same
    # time waits (or this does), so neither installs over a head it never read and loses the other's change.
    with changing(args.heads_dir):
        return _calibrate_head(args, files, records)


def _calibrate_head(args: argparse.Namespace, files: list[tuple[Path, list[Record]]], records: list[Record]) -> int:
    head = heads_in(args.heads_dir, "--heads-dir", installing=True).get(args.head)
    if head is None:
        print(f"tierwise calibrate: head: unknown head {args.head!r}", file=sys.stderr)
        return 2
    records, left_out = never_fitted([head], files, lineup_records(head, records, f"head {head.name}'s"))
    if left_out:
        print(f"tierwise calibrate: left out {left_out} records head {head.name} was fitted on", file=sys.stderr)
    if (queries := len({r.query for r in records})) < MIN_DEV_RECORDS:
        fitted = (f"; the other {left_out} are records it was fitted on: give it labels it never saw, or add "
                  "--include-held-out for the held-out fifth" if left_out else "")
        raise DataError(f"--data: {queries} different queries among the head's lineup's records it was never fitted "
                        f"on; at least {MIN_DEV_RECORDS} are needed to calibrate (label more with `tierwise label`)"
                        f"{fitted}")
    encoder = offline_encoder()
    probs = head.probabilities(embed_records(encoder, records, EMBEDDINGS_DIR))
    tradeoff, facts = calibrate(records, probs, head.relative_cost, args.target_quality)
    key = f"{args.target_quality:g}"
    calibration = {**head.calibration, key: tradeoff}
    card = {**head.card, f"calibration_{key}": f"{tradeoff:g} on {len(records)} records, {time.strftime('%Y-%m-%d')}: "
            + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items())}
    updated = dataclasses.replace(
        head, calibration=calibration, card=card,
        tradeoff=tradeoff if args.target_quality == head.target_quality else head.tradeoff,
    ).versioned(time.strftime("%Y-%m-%d"))
    with tempfile.TemporaryDirectory() as scratch:  # installed as promote installs: atomically, the old kept
        updated.publish(Path(scratch))
        # Read back as written, its numbers rounded as the serving head's were: the tradeoff it had is not installed
        # again, which would lose the head a rollback restores.
        unchanged = TierHead.load(Path(scratch) / "head.json").same_answers(head)
        if not unchanged:
            install(Path(scratch), args.heads_dir / head.name)
    outcome = f"the tradeoff it had: {head.version} unchanged" if unchanged else f"version {updated.version}"
    print(f"{head.name}: quality {key} -> tradeoff {tradeoff:g} ({facts}); {outcome}")
    return 0


def calibrate_cascade(args: argparse.Namespace, files: list[tuple[Path, list[Record]]], records: list[Record]) -> int:
    """The cheapest verifier bar, and for an embedding start the tradeoff it starts at, with which the config's
    cascade meets the target under the same confidence bound as a head's tradeoff (docs/decisions/0017)."""
    check_measurable(records, "calibration records")
    try:
        options = cascade_options(args.config, "", args.concurrency, args.verdicts,
                                  target_quality=args.target_quality, heads_dir=args.heads_dir)
    except ConfigError as err:
        raise refusal(err, "--config: ") from None
    cascade, live = options.cascade, options.live_gate
    if live is None:
        print(f"tierwise calibrate: --config: cascade.gate {cascade.gate!r} has no bar to calibrate; the verify "
              "gate has one", file=sys.stderr)
        return 2
    if cascade.start not in evaluate.CASCADE_STARTS:
        print(f"tierwise calibrate: --config: {unreplayable_start(cascade.start)}", file=sys.stderr)
        return 2
    if cascade.start == "embedding":  # its start tradeoff is chosen on the heads' decisions: none on their own records
        heads = heads_in(args.heads_dir, "--heads-dir")
        records, left_out = never_fitted(list(heads), files, records)
        if left_out:
            print(f"tierwise calibrate: left out {left_out} records a head there was fitted on", file=sys.stderr)
        check_measurable(records, "calibration records the heads were never fitted on (your own labels, or "
                                  "--include-held-out for the held-out fifth)")
    answers = evaluate.gated(records, live.gate_name, live)
    spent(live)
    if isinstance(answers, str):
        print(f"tierwise calibrate: --data: nothing to replay: {answers}", file=sys.stderr)
        return 2
    # The start decides as the router's would: with its configured head.
    start = replay(cascade.start, answers.records, dataclasses.replace(options, head=options.router.classifier.head))
    starts = (list(zip(map(float, TRADEOFFS), (o.tiers for o in start.sweep))) if cascade.start == "embedding"
              else [(None, start.operating_point.tiers)])
    candidates = [((tradeoff, bar), o.tiers, o.paid) for tradeoff, first in starts
                  for bar in evaluate.bars(answers.scores) for o in [answers.run(first, bar)]]
    (tradeoff, bar), facts = cheapest_meeting(answers.records, candidates, args.target_quality, (None, None))
    print(f"verifier on {len(answers.records)} records: {answers.detail['verifier']}")
    if bar is None or bar > 1:
        print(f"cascade from {cascade.start}: {'no setting meets' if bar is None else 'only escalating every answer meets'} "
              f"{args.target_quality:g} quality vs frontier with 95% confidence; the verifier buys nothing here ({facts})")
        return 1
    settings = f"cascade.verifier_bar: {bar:.6g}" + ("" if tradeoff is None else f", cascade.start_tradeoff: {tradeoff:.6g}")
    print(f"cascade from {cascade.start}: {settings} meet {args.target_quality:g} "
          f"({', '.join(f'{k}={v:.4f}' for k, v in facts.items())}); set them in {args.config}")
    return 0
