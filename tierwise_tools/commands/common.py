"""What several `tierwise` commands share: argument types, the records they read, a live gate's spending."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from classifier_service.heads import HeadRegistry
from tierwise.data import DataError, Record, load, shared_files, split
from tierwise.metrics import quality_target as checked_target

from ..live_gate import LiveGate


def at_least(kind: type, low: float, strict: bool = False):
    """An argparse type: a number of `kind` that is >= `low` (> `low` when `strict`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{' whole' if kind is int else ''} number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {value:g}")
        return value
    return parse


def seed(text: str) -> int:
    """An argparse type: a random seed numpy takes, 0 to 2**32 - 1."""
    value = at_least(int, 0)(text)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be below 2**32, got {value}")
    return value


def quality_target(text: str) -> float:
    """--target-quality: a share of always-tier-3 quality, in (0, 1], by the rule the services keep."""
    value = at_least(float, 0, strict=True)(text)
    try:
        return checked_target(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_data(p: argparse.ArgumentParser, what: str = "routing records") -> None:
    p.add_argument("--data", nargs="+", help=f"{what} (default: ../shared/data/routing/*.dev.jsonl)")


def data_paths(data: list[str] | None, command: str) -> list[Path]:
    data = data or shared_files()
    if not data:
        raise SystemExit(f"tierwise {command}: no --data given and ../shared/data/routing is absent")
    return [Path(p) for p in data]


def read_records(paths: list[Path], part: str) -> list[Record]:
    """`part` of the records: all, dev, or held-out (the fifth by id hash that training never sees)."""
    return part_of(load(paths), part)


def part_of(records: list[Record], part: str) -> list[Record]:
    """`part` of `records`: all, dev, or held-out."""
    return records if part == "all" else split(records)[part == "held-out"]


def heads_in(directory: Path, flag: str, installing: bool = False) -> HeadRegistry:
    """The heads under `directory` (`installing`: see HeadRegistry.from_dir). A head file that cannot be loaded is
    bad input naming `flag`, not a traceback; none at all is FileNotFoundError, which the CLI reports."""
    try:
        return HeadRegistry.from_dir(directory, installing=installing)
    except ValueError as err:
        raise DataError(f"{flag}: {err}") from None


def refusal(err: Exception, flag: str = "") -> DataError:
    """`err` as bad input for the CLI's entry point to report (exit 2), each of its lines (a config file's
    problems, one a line) named as `flag`'s."""
    return DataError("\n".join(f"{flag}{line}" for line in str(err).splitlines()))


def add_live_gate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=at_least(int, 1), default=4, help="verifier calls in flight with --config")


def spent(live: LiveGate) -> None:
    """What a live gate's verifier calls cost, and the answers it could not rule on, on stderr."""
    print(f"{live.gate_name} gate: {live.calls} verifier calls, ${live.spent_usd:.6f}, to judge every recorded "
          "tier 1 and 2 answer; each cascade's cost counts the calls on its own path", file=sys.stderr)
    if live.kept:
        print(f"{live.gate_name} gate: {len(live.kept)} verdicts kept in {live.store} reused", file=sys.stderr)
    if live.unreadable:
        print(f"{live.gate_name} gate: skipped {live.unreadable} line(s) of {live.store} that are not verdicts",
              file=sys.stderr)
    if live.errors:
        print(f"{live.gate_name} gate: the verifier could not rule on {len(live.errors)} answers, counted as "
              f"rejected (first: {live.errors[0]})", file=sys.stderr)
