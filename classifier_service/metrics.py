"""The classifier's metrics: OpenTelemetry instruments, served to Prometheus on --metrics-listen and exported over
OTLP (tierwise.telemetry.setup_metrics); without either they are no-ops.

A call costs one counter, one histogram and a tier count per distinct tier decided; an encoder run one histogram
record. The queue, the texts in flight and the cache's hits and misses are read only when metrics are collected.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import numpy as np
from opentelemetry import metrics

LATENCY_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000)
BATCH_TEXTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ClassifierMetrics:
    """`queued`: texts waiting for an encoder worker; `in_flight`: texts admitted and not answered; `cache`: the
    decision cache's (hits, misses) so far."""

    def __init__(self, queued: Callable[[], int], in_flight: Callable[[], int], cache: Callable[[], tuple[int, int]]):
        meter = metrics.get_meter("tierwise.classifier")
        self.requests = meter.create_counter("tierwise.classifier.requests",
                                             description="calls by method and gRPC code")
        self.latency = meter.create_histogram("tierwise.classifier.duration", unit="ms", description="call latency",
                                              explicit_bucket_boundaries_advisory=LATENCY_MS)
        self.batch_size = meter.create_histogram(
            "tierwise.classifier.batch_size", description="texts a worker took from the queue for one encoder run",
            explicit_bucket_boundaries_advisory=BATCH_TEXTS)
        self.decisions = meter.create_counter("tierwise.classifier.decisions",
                                              description="tiers decided, by head and tier: each head's tier mix")
        self._queued, self._in_flight, self._cache = queued, in_flight, cache
        meter.create_observable_gauge("tierwise.classifier.queue_depth", callbacks=[self._observe_queue],
                                      description="texts waiting for an encoder worker")
        meter.create_observable_gauge("tierwise.classifier.in_flight", callbacks=[self._observe_in_flight],
                                      description="texts admitted and not yet answered (queued or encoding)")
        meter.create_observable_counter("tierwise.classifier.cache.lookups", callbacks=[self._observe_cache],
                                        description="decision cache lookups by result: hit or miss")

    def call(self, method: str, context) -> "_Call":
        """`async with` around a call: counts it by its final gRPC code and records its latency."""
        return _Call(self, method, context)

    def decided(self, head: str, tiers: np.ndarray) -> None:
        if len(tiers) == 1:
            self.decisions.add(1, {"head": head, "tier": int(tiers[0])})
            return
        for tier, count in zip(*np.unique(tiers, return_counts=True)):
            self.decisions.add(int(count), {"head": head, "tier": int(tier)})

    def _observe_queue(self, options):
        return [metrics.Observation(self._queued())]

    def _observe_in_flight(self, options):
        return [metrics.Observation(self._in_flight())]

    def _observe_cache(self, options):
        hits, misses = self._cache()
        return [metrics.Observation(hits, {"result": "hit"}), metrics.Observation(misses, {"result": "miss"})]


class _Call:
    __slots__ = ("metrics", "method", "context", "started")

    def __init__(self, owner: ClassifierMetrics, method: str, context):
        self.metrics, self.method, self.context = owner, method, context

    async def __aenter__(self) -> None:
        self.started = time.perf_counter()

    async def __aexit__(self, kind, error, trace) -> None:
        # An aborted call (a refusal, or INTERNAL) has its code on the context by now.
        code = self.context.code()
        name = code.name if code is not None else "CANCELLED" if kind is asyncio.CancelledError else "OK"
        self.metrics.requests.add(1, {"method": self.method, "code": name})
        self.metrics.latency.record((time.perf_counter() - self.started) * 1e3, {"method": self.method})
