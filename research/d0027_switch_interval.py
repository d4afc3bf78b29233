"""Decision 0027, second question: with smaller encoder runs, is the classifier's 1 ms GIL switch interval
(decision 0021) still the best?

A worker back from onnxruntime needs the GIL to hand its run over and start the next; under load the event loop
or the other worker may hold it for up to the switch interval. Capped runs (0027) mean more runs, so more such
waits. Each round starts the service once per interval (in rotating order, `research.service_ab`): `python -m
classifier_service` itself, its one call to `sys.setswitchinterval` given the interval under test. Each
start is measured by:
- 32 callers sending unique mixed-length queries for `--seconds` (the bench's load run, `bench.grpc_load`);
- one caller sending `--calls` unique short questions one at a time (p50).

    .venv/bin/python -m research.d0027_switch_interval [--rounds 6] [--intervals 1,0.5,0.2]
"""
from __future__ import annotations

import argparse

import numpy as np

from bench import queries

from .service_ab import load_and_one_caller, rotate


def switch_interval(ms: str) -> str:
    """Code run before the service's __main__: its `sys.setswitchinterval(...)` sets `ms` milliseconds instead."""
    return f"_set = sys.setswitchinterval\nsys.setswitchinterval = lambda _: _set({float(ms) / 1e3})\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--intervals", default="1,0.5,0.2", help="switch intervals to compare, in ms")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    intervals = args.intervals.split(",")
    sets = queries.build(queries.FULL, 32 * 1024)
    mixed, short = sets.load_mixed, queries.short_questions(args.calls * args.rounds * len(intervals) + 100)
    figures = rotate({ms: (switch_interval(ms), []) for ms in intervals}, args.rounds,
                     load_and_one_caller(mixed, short, args.calls, args.seconds))
    rates = {ms: figures[ms]["mixed"] for ms in intervals}
    p50s = {ms: figures[ms]["p50"] for ms in intervals}
    base = intervals[0]
    print(f"| switch interval | 32-caller mixed q/s (median; each round) | vs {base} ms, rounds higher | "
          "one caller short p50 ms (median) |\n|---|---|---|---|")
    for ms in intervals:
        diff = np.array(rates[ms]) - np.array(rates[base])
        print(f"| {ms} ms | {np.median(rates[ms]):.0f} ({', '.join(f'{v:.0f}' for v in rates[ms])}) | "
              f"{np.median(diff):+.0f} q/s, {(diff > 0).sum()} of {len(diff)} | {np.median(p50s[ms]):.2f} |")


if __name__ == "__main__":
    main()
