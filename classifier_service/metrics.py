"""The classifier's metrics: OpenTelemetry instruments, served to Prometheus on --metrics-listen and exported over
OTLP (tierwise.telemetry.setup_metrics); without either they cost next to nothing.

Calls, decided tiers, the queue, the texts in flight and the cache's lookups are counted in plain dicts and ints on
the event loop thread (where every call runs) and read by observable instruments only when metrics are collected:
a call pays no instrument lock for them. A call records one latency; an encoder run its batch size.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
from opentelemetry import metrics

from tierwise.telemetry import CallCounts

LATENCY_MS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000)
BATCH_TEXTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ClassifierMetrics:
    """`queued`: texts waiting for an encoder worker; `in_flight`: texts admitted and not answered; `cache`: the
    decision cache's (hits, misses) so far."""

    def __init__(self, queued: Callable[[], int], in_flight: Callable[[], int], cache: Callable[[], tuple[int, int]]):
        meter = metrics.get_meter("tierwise.classifier")
        self.latency = meter.create_histogram("tierwise.classifier.duration", unit="ms", description="call latency",
                                              explicit_bucket_boundaries_advisory=LATENCY_MS)
        self.batch_size = meter.create_histogram(
            "tierwise.classifier.batch_size",
            description="texts a worker took from the queue at once (run as one or more length buckets)",
            explicit_bucket_boundaries_advisory=BATCH_TEXTS)
        self._tiers: dict[tuple[str, int], int] = {}  # (head, tier) -> texts
        self._queued, self._in_flight, self._cache = queued, in_flight, cache
        self.calls = CallCounts(meter, "tierwise.classifier.requests", "calls by method and gRPC code")
        meter.create_observable_counter("tierwise.classifier.decisions", callbacks=[self._observe_tiers],
                                        description="tiers decided, by head and tier: each head's tier mix")
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
            key = (head, int(tiers[0]))
            self._tiers[key] = self._tiers.get(key, 0) + 1
            return
        for tier, count in enumerate(np.bincount(tiers).tolist()):
            if count:
                self._tiers[(head, tier)] = self._tiers.get((head, tier), 0) + count

    # Collection runs on another thread (the HTTP server's, the OTLP exporter's): dict.copy is one step under the
    # GIL, so it never sees a dict changing size.
    def _observe_tiers(self, options):
        return [metrics.Observation(n, {"head": head, "tier": tier}) for (head, tier), n in self._tiers.copy().items()]

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
        self.metrics.calls.ended(self.method, self.context, kind)
        self.metrics.latency.record((time.perf_counter() - self.started) * 1e3, {"method": self.method})
