"""Decision 0039, session 30: what 64 MB of kept answers with log probabilities take in memory, kept as messages
(as the store did) and as serialized bytes (as it does now), and what parsing one back on a replay costs. Each form
runs in a fresh process, so one's memory does not hide the other's.

    .venv/bin/python -m research.d0039_kept_answer_memory
"""
from __future__ import annotations

import gc
import subprocess
import sys
import time

from tierwise.v1 import router_pb2 as pb

TOKENS, TOP = 1000, 5
BOUND_MB = 64


def answer() -> pb.CompleteResponse:
    reply = pb.CompleteResponse(content="word " * TOKENS, tier=1, model="m", provider="p")
    for t in range(TOKENS):
        token = reply.logprobs.add(token=f" w{t}", logprob=-0.1, bytes=f" w{t}".encode())
        for k in range(TOP):
            token.top_logprobs.add(token=f" w{k}", logprob=-1.0 * k, bytes=f" w{k}".encode())
    return reply


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def one(form: str) -> None:
    size = answer().ByteSize()
    count = int(BOUND_MB * 1e6 // size)
    gc.collect()
    before = rss_mb()
    kept = [answer() if form == "message" else answer().SerializeToString() for _ in range(count)]
    gc.collect()
    grew = rss_mb() - before
    serialized = kept[0] if form == "bytes" else kept[0].SerializeToString()
    start = time.perf_counter()
    for _ in range(50):
        pb.CompleteResponse.FromString(serialized)
    parse_ms = (time.perf_counter() - start) / 50 * 1e3
    print(f"{form:8} {count} answers of {size / 1e3:.0f} kB = {count * size / 1e6:.1f} MB serialized: "
          f"RSS +{grew:.0f} MB; parsing one {parse_ms:.2f} ms")


def main() -> None:
    if len(sys.argv) > 1:
        one(sys.argv[1])
        return
    for form in ("message", "bytes"):
        subprocess.run([sys.executable, "-m", "research.d0039_kept_answer_memory", form], check=True)


if __name__ == "__main__":
    main()
