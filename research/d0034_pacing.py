"""Decision 0034: how late each pacer starts its calls, with nothing else running in the process.

Both pacers of `bench.pacing` keep a 200-a-second schedule for 1,000 calls that return at once, taking turns
over `--rounds` rounds; the report gives each pacer's send lag (start minus due time) over all its calls.

    .venv/bin/python -m research.d0034_pacing [--rounds 4] [--rate 200]
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from bench.pacing import on_asyncio_timers, on_schedule
from bench.stats import percentile

PACERS = {"thread (bench.pacing.on_schedule)": on_schedule, "asyncio timers": on_asyncio_timers}


async def _nothing(i: int, due: float) -> None:
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    lags: dict[str, list[float]] = {name: [] for name in PACERS}
    for r in range(args.rounds):
        for name in (list(PACERS) if r % 2 else list(reversed(PACERS))):
            lags[name] += asyncio.run(PACERS[name](args.calls, args.rate, _nothing))
    print(f"{args.rounds} rounds of {args.calls} calls at {args.rate:g}/s each; send lag in ms")
    print("| pacer | p50 | p90 | p99 | max |\n|---|---|---|---|---|")
    for name, values in lags.items():
        print(f"| {name} | " + " | ".join(f"{percentile(values, q):.3f}" for q in (50, 90, 99))
              + f" | {max(values):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
