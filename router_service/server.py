"""The router's gRPC front door: validation, strategy dispatch, spans."""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import grpc
from opentelemetry import trace

from tierwise import serving
from tierwise.telemetry import context_from_grpc, setup_tracing
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc as pb_grpc

from .classifier_client import ClassifierClient
from .config import RouterConfig
from .strategies import Decision, RouteInput, Strategies, registered

log = logging.getLogger("tierwise.router")
SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"].full_name
MAX_QUERY_BYTES = 256 * 1024


class Rejected(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, cfg: RouterConfig, strategies: Strategies):
        self.cfg = cfg
        self.strategies = strategies
        self.tracer = trace.get_tracer("tierwise.router")

    async def Route(self, request: pb.RouteRequest, context) -> pb.RouteResponse:
        async with self._rpc("Route", context) as span:
            started = time.perf_counter()
            self._check_text(request.query, "query")
            decision = await self._decide(request.query, request.strategy, request.head, context, span)
            return self._route_response(decision, request.query, started)

    async def _decide(self, query: str, strategy_name: str, head: str, context, span) -> Decision:
        name = strategy_name or self.cfg.strategy
        try:
            strategy = self.strategies.get(name)
        except KeyError:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"strategy: unknown strategy {name!r}; available: {', '.join(registered())}") from None
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            decision = await strategy.decide(RouteInput(query=query, head=head, deadline=deadline))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise Rejected(err.code(), err.details()) from None
            raise
        span.set_attribute("tierwise.strategy", decision.strategy)
        span.set_attribute("tierwise.tier", decision.tier)
        span.set_attribute("tierwise.degraded", decision.degraded)
        if decision.probabilities:
            span.set_attribute("tierwise.probabilities", list(decision.probabilities))
            span.set_attribute("tierwise.thresholds", list(decision.thresholds))
            span.set_attribute("tierwise.head_version", decision.head_version)
        return decision

    def _route_response(self, decision: Decision, query: str, started: float) -> pb.RouteResponse:
        tier = self.cfg.tiers[decision.tier]
        return pb.RouteResponse(
            tier=decision.tier, model=self.cfg.model_for(decision.tier), strategy=decision.strategy,
            probabilities=decision.probabilities, degraded=decision.degraded, reason=decision.reason,
            estimated_cost_usd=tier.cost(estimate_tokens(query), self.cfg.expected_output_tokens),
            head_version=decision.head_version, thresholds=decision.thresholds,
            decision_ms=(time.perf_counter() - started) * 1e3)

    def _check_text(self, text: str, field: str) -> None:
        if not text.strip():
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: must not be empty or whitespace only")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_QUERY_BYTES:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: exceeds {MAX_QUERY_BYTES} bytes")

    @asynccontextmanager
    async def _rpc(self, method: str, context):
        with self.tracer.start_as_current_span(
            f"{SERVICE}/{method}", context=context_from_grpc(context), kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method},
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Rejected as err:
                span.set_attribute("rpc.grpc.status_code", err.code.value[0])
                await context.abort(err.code, str(err))
            except Exception:
                log.exception("unexpected error in %s", method)
                span.set_status(trace.Status(trace.StatusCode.ERROR, "internal error"))
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the router log")


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


async def serve(cfg: RouterConfig, listen: str, classifier_address: str, version: str = "0.1.0") -> int:
    provider = setup_tracing("tierwise-router", version)
    classifier = ClassifierClient(classifier_address, cfg.classifier.timeout_ms)
    strategies = Strategies(deps={"config": cfg, "classifier": classifier})
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RouterServiceServicer_to_server(RouterServicer(cfg, strategies), server)

    async def load() -> str:
        strategies.get(cfg.strategy)
        return f"strategy={cfg.strategy} classifier={classifier_address}"

    async def close() -> None:
        await classifier.close()
        if provider is not None:
            provider.shutdown()

    return await serving.run("tierwise-router", listen, [SERVICE], server, load, close)
