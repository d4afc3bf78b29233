"""Decision 0027, second question: with smaller encoder runs, is the classifier's 1 ms GIL switch interval
(decision 0021) still the best?

A worker back from onnxruntime needs the GIL to hand its run over and start the next; under load the event loop
or the other worker may hold it for up to the switch interval. Capped runs (0027) mean more runs, so more such
waits. Each round starts the service once per interval (in rotating order), with the service's own `serve` and
only `sys.setswitchinterval` changed, and measures:
- 32 callers sending unique mixed-length queries for `--seconds` (the bench's load run, `bench.grpc_load`);
- one caller sending `--calls` unique short questions one at a time (p50 and p90).

    .venv/bin/python -m research.d0027_switch_interval [--rounds 6] [--intervals 1,0.5,0.2]
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import grpc_load, queries
from tierwise_tools.paths import ROOT

SERVER = """
import asyncio, os, sys
for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")
from classifier_service.config import parse
from classifier_service.server import serve
from tierwise.telemetry import configure_logging
sys.setswitchinterval(float(sys.argv[1]) / 1000)
configure_logging()
sys.exit(asyncio.run(serve(parse(sys.argv[2:]))))
"""


def started(ms: str, log: Path) -> tuple[subprocess.Popen, str]:
    """The service at switch interval `ms`, its output to `log`: (process, address) once it reports SERVING."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, ms, "--listen", "127.0.0.1:0"], cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        if "ready on" in text:
            return proc, re.search(r"listening on (\S+)", text).group(1)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the service did not start:\n{log.read_text()}")


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
    rates: dict[str, list[float]] = {ms: [] for ms in intervals}
    p50s: dict[str, list[float]] = {ms: [] for ms in intervals}
    used = 0
    for r in range(args.rounds):
        for ms in intervals[r % len(intervals):] + intervals[:r % len(intervals)]:
            with tempfile.TemporaryDirectory() as tmp:
                proc, address = started(ms, Path(tmp) / "service.log")
                try:
                    grpc_load.concurrent(address, mixed[:200], 32, 2.0)  # warm
                    rates[ms].append(grpc_load.concurrent(address, mixed[200:], 32, args.seconds)["qps"])
                    single = grpc_load.sequential(address, short[used:used + args.calls], warmup=short[-20:])
                    used += args.calls
                    p50s[ms].append(single["p50_ms"])
                finally:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout=30)
            print(f"round {r + 1}, {ms} ms: {rates[ms][-1]:.0f} q/s, single p50 {p50s[ms][-1]:.2f} ms",
                  file=sys.stderr, flush=True)
    base = intervals[0]
    print(f"| switch interval | 32-caller mixed q/s (median; each round) | vs {base} ms, rounds higher | "
          "one caller short p50 ms (median) |\n|---|---|---|---|")
    for ms in intervals:
        diff = np.array(rates[ms]) - np.array(rates[base])
        print(f"| {ms} ms | {np.median(rates[ms]):.0f} ({', '.join(f'{v:.0f}' for v in rates[ms])}) | "
              f"{np.median(diff):+.0f} q/s, {(diff > 0).sum()} of {len(diff)} | {np.median(p50s[ms]):.2f} |")


if __name__ == "__main__":
    main()
