"""What an idempotency key adds to a Complete in the router's own work: Once.run with and without a key, in-process,
around work that answers at once (no provider), so the figure is the store's cost alone (hashing the request, the
task the work runs in, keeping the answer). Alternating rounds, medians.

    .venv/bin/python -m research.s28_once_overhead
"""
from __future__ import annotations

import asyncio
import statistics
import time

from opentelemetry import trace

from router_service.idempotency import Once
from tierwise.v1 import router_pb2 as pb

REQUEST = pb.CompleteRequest(messages=[pb.Message(role="user", content="What is the capital of France? " * 20)])
ANSWER = pb.CompleteResponse(content="Paris. " * 50)
CALLS, ROUNDS = 5000, 7


async def work(span) -> pb.CompleteResponse:
    return ANSWER


async def main() -> None:
    once = Once(64, 600, 10, trace.get_tracer("overhead"))
    per_call: dict[str, list[float]] = {"no key": [], "key": []}
    for r in range(ROUNDS):
        for kind in per_call:
            started = time.perf_counter()
            for i in range(CALLS):
                await once.run("k", f"{r}-{i}" if kind == "key" else "", REQUEST, None, trace.INVALID_SPAN, work)
            per_call[kind].append((time.perf_counter() - started) / CALLS * 1e6)
    for kind, values in per_call.items():
        print(f"{kind}: median {statistics.median(values):.1f} us a call; rounds {[round(v, 1) for v in values]}")


if __name__ == "__main__":
    asyncio.run(main())
