"""Decision 0040: what keeping idempotency keys in a shared directory adds to a keyed Complete in the router's own
work. Once.run with a key, in-process, around work that answers at once (no provider), without and with
`idempotency.shared_dir` (a directory on the local disk here; a network volume adds its own round trips). Each
keyed call claims its key there, and leaves its answer there when the work ends. Alternating rounds, medians.

    .venv/bin/python -m research.d0040_shared_once_overhead [--dir DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from opentelemetry import trace

from router_service.idempotency import Once
from router_service.shared_answers import SharedAnswers

from .s28_once_overhead import REQUEST, work

CALLS, ROUNDS = 2000, 7


async def main(directory: Path) -> None:
    tracer = trace.get_tracer("overhead")
    stores = {"memory only": Once(64, 600, 10, tracer),
              "shared directory": Once(64, 600, 10, tracer, shared=SharedAnswers.at(str(directory), 600))}
    per_call: dict[str, list[float]] = {kind: [] for kind in stores}
    for r in range(ROUNDS):
        for kind, once in stores.items():
            started = time.perf_counter()
            for i in range(CALLS):
                await once.run("k", f"{kind}-{r}-{i}", REQUEST, None, trace.INVALID_SPAN, work)
            await once.close()  # the answers left for other replicas, within the round's time
            per_call[kind].append((time.perf_counter() - started) / CALLS * 1e6)
    for kind, values in per_call.items():
        print(f"{kind}: median {statistics.median(values):.1f} us a keyed call; rounds {[round(v, 1) for v in values]}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="the shared directory (default: a temporary one on the local disk)")
    args = ap.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="tierwise-once-"))
    try:
        asyncio.run(main(directory))
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
