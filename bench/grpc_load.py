"""gRPC measurements against a running classifier: sequential single-query latency and concurrent throughput."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

import grpc

from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc as pb_grpc

from .stats import latency_summary

TIMEOUT_S = 30.0


def sequential(target: str, texts: list[str], warmup: Sequence[str] = (), pause_s: float = 0.0) -> dict:
    """One Classify call at a time over one channel, each `pause_s` after the last reply; per-call wall time as
    the client sees it."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)  # keep connection set-up out of the timings
        stub = pb_grpc.ClassifierServiceStub(channel)
        for text in warmup:
            stub.Classify(pb.ClassifyRequest(text=text), timeout=TIMEOUT_S)
        latencies, hits = [], 0
        started = time.perf_counter()
        for text in texts:
            if pause_s:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            reply = stub.Classify(pb.ClassifyRequest(text=text), timeout=TIMEOUT_S)
            latencies.append(time.perf_counter() - t0)
            hits += reply.cache_hit
        elapsed = time.perf_counter() - started
    return {**latency_summary(latencies), "cache_hits": hits, "qps": len(texts) / elapsed}


def cache_hits(target: str, text: str, repeats: int) -> dict:
    """The same text over and over: the first call fills the cache and is not counted."""
    return sequential(target, [text] * repeats, warmup=[text])


def concurrent(target: str, texts: list[str], clients: int, max_seconds: float) -> dict:
    return asyncio.run(_concurrent(target, texts, clients, max_seconds))


async def _concurrent(target: str, texts: list[str], clients: int, max_seconds: float) -> dict:
    # A channel per client, each on its own connection (local subchannel pool), like separate callers.
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(clients)]
    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))
        work: Iterator[str] = iter(texts)
        latencies: list[float] = []
        counts = {"cache_hits": 0, "errors": 0}
        deadline = time.perf_counter() + max_seconds

        async def client(channel: grpc.aio.Channel) -> None:
            stub = pb_grpc.ClassifierServiceStub(channel)
            while time.perf_counter() < deadline and (text := next(work, None)) is not None:
                t0 = time.perf_counter()
                try:
                    reply = await stub.Classify(pb.ClassifyRequest(text=text), timeout=TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                counts["cache_hits"] += reply.cache_hit

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in channels))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    if not latencies:
        raise RuntimeError(f"all {counts['errors']} concurrent calls failed")
    sent = len(latencies) + counts["errors"]
    return {
        "clients": clients, "completed": len(latencies), **counts, "sent": sent, "seconds": elapsed,
        "qps": len(latencies) / elapsed, "hit_time_cap": sent < len(texts),
        "latency_under_load": latency_summary(latencies),
    }

