"""Router metrics (OpenTelemetry; exported over OTLP and, optionally, to Prometheus: tierwise.telemetry.setup_metrics)
and span helpers."""
from __future__ import annotations

import time
from typing import Mapping

from opentelemetry import metrics, trace

from tierwise.telemetry import CallCounts

from .breaker import BreakerState, CircuitBreaker
from .config import TierConfig
from .dispatch import Result
from .providers import Attempt

BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# Route decisions take milliseconds (the slow-route alert reads 50), answers from a frontier model up to minutes:
# the SDK's default buckets end at 10 s, where every long answer's latency would be clipped.
LATENCY_MS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10_000, 20_000, 30_000,
              60_000, 120_000)


class RouterMetrics:
    def __init__(self):
        meter = metrics.get_meter("tierwise.router")
        self.requests = meter.create_counter("tierwise.router.requests", description="requests by tier, strategy, method")
        self.calls = CallCounts(meter, "tierwise.router.calls", "calls by method and final gRPC code, answered or "
                                "refused (the front door's refusals too); HTTP calls under their own method names")
        self.escalations = meter.create_counter("tierwise.router.escalations", description="moves to a higher tier")
        self.fallbacks = meter.create_counter("tierwise.router.fallbacks",
                                              description="provider attempts that failed over or were skipped")
        self.degraded = meter.create_counter("tierwise.router.degraded", description="decisions made by a fallback strategy")
        self.cost = meter.create_counter("tierwise.router.cost", unit="USD", description="provider cost")
        self.frontier_cost = meter.create_counter(
            "tierwise.router.frontier_cost", unit="USD",
            description="what the answered requests would have cost at tier 3's price: the always-frontier baseline")
        self.latency = meter.create_histogram("tierwise.router.duration", unit="ms", description="request latency",
                                              explicit_bucket_boundaries_advisory=LATENCY_MS)
        self.shadow = meter.create_counter("tierwise.router.shadow", description="shadow comparisons by outcome")
        self.answer_cache = meter.create_counter("tierwise.router.answer_cache",
                                                 description="answer cache lookups by result: hit, miss")
        self.affinity = meter.create_counter("tierwise.router.affinity", description="turns continuing a conversation "
                                             "affinity knew, by result: raised (to the earlier tier), held")
        self.auth = meter.create_counter("tierwise.router.auth", description="calls by API key id and outcome: ok, "
                                         "unauthenticated, rate_limited, spend_limited")
        self.key_cost = meter.create_counter("tierwise.router.key.cost", unit="USD", description="provider cost by API key id")
        self.health_checks = meter.create_counter("tierwise.router.health_checks",
                                                  description="provider health checks by provider and result")
        self.breaker_transitions = meter.create_counter("tierwise.router.breaker.transitions",
                                                        description="circuit breaker state changes")
        self._breakers: dict[tuple[int, str], CircuitBreaker] = {}  # by tier and provider: a name may serve two tiers
        meter.create_observable_gauge("tierwise.router.breaker.state", callbacks=[self._observe_breakers],
                                      description="0 closed, 1 half-open, 2 open")

    def answered(self, result: Result, frontier: TierConfig) -> None:
        """An answer's cost, and what its tokens would have cost at the `frontier` tier's price."""
        c = result.completion
        self.cost.add(result.cost_usd, {"tier": result.tier})
        self.frontier_cost.add(frontier.cost(c.input_tokens, c.output_tokens, cached_tokens=c.cached_input_tokens))

    def track_breakers(self, breakers: Mapping[tuple[int, str], CircuitBreaker]) -> None:
        self._breakers.update(breakers)

    def breaker_changed(self, provider: str, old: BreakerState, new: BreakerState) -> None:
        self.breaker_transitions.add(1, {"provider": provider, "to": str(new)})

    def _observe_breakers(self, options):
        # Each breaker's state as it reads now: an open one whose cooldown passed is half-open, though no call has
        # asked it since (a quiet provider, or a fallback), and must not read open for ever to an alert.
        return [metrics.Observation(BREAKER_VALUE[breaker.reading()], {"provider": name, "tier": tier})
                for (tier, name), breaker in self._breakers.items()]


def attempt_span(tracer: trace.Tracer, tier: int, attempt: Attempt, purpose: str = "answer") -> None:
    """A child span for one finished provider attempt, placed at the time it ran; `purpose` says whether it
    answered the request or verified an answer (the cascade's verify gate)."""
    end = time.time_ns()
    start = end - int(attempt.latency_ms * 1e6)
    span = tracer.start_span(f"chat {attempt.model}", kind=trace.SpanKind.CLIENT, start_time=start, attributes={
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": attempt.model,
        "tierwise.provider": attempt.provider, "tierwise.tier": tier, "tierwise.outcome": str(attempt.outcome),
        "tierwise.purpose": purpose,
    })
    if attempt.status_code is not None:
        span.set_attribute("http.response.status_code", attempt.status_code)
    if attempt.error:
        span.set_attribute("error.type", attempt.error.split(":")[0][:64])
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end(end_time=end)
