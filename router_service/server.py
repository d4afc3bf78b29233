"""The router's gRPC front door: validation, strategy dispatch, spans."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import AsyncIterator, Awaitable

import grpc
from opentelemetry import trace

from tierwise import serving
from tierwise.serving import InFlight, Rejected, ThrottledLog, check_size, check_text, rpc_span, shown
from tierwise.telemetry import setup_metrics, setup_tracing
from tierwise.tiers import FRONTIER
from tierwise.tls import ClientTLS, ServerTLS
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc as pb_grpc

from .auth import current_key_id, front_door, watch
from .chains import build_chains, close_chains
from .classifier_client import ClassifierClient
from .config import RouterConfig
from .conversation import NoTierFits, decide_on_conversation
from .dispatch import DeadlinePassed, Dispatcher, Result, Unavailable
from .events import final
from .head_choice import LineupHead
from .providers import Attempt, Outcome, StreamInterrupted
from .shadow import Shadow
from .strategies import Decision, RouteInput, Strategies, Strategy, registered
from .telemetry import RouterMetrics, attempt_span
from .tokens import estimate_tokens

log = logging.getLogger("tierwise.router")
SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"].full_name
ROLES = ("system", "user", "assistant", "tool")


class RouterServicer(pb_grpc.RouterServiceServicer):
    def __init__(self, cfg: RouterConfig, strategies: Strategies, dispatcher: Dispatcher, metrics: RouterMetrics,
                 shadow: Shadow):
        self.cfg = cfg
        self.strategies = strategies
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.shadow = shadow
        self.tracer = trace.get_tracer("tierwise.router")
        self.admission = InFlight(cfg.limits.max_in_flight, "calls", log)
        self.degraded_log = ThrottledLog(log)

    async def Route(self, request: pb.RouteRequest, context) -> pb.RouteResponse:
        async with rpc_span(self.tracer, SERVICE, "Route", context, log) as span:
            _tag_key(span)
            with self.admission.admit():
                started = time.perf_counter()
                check_text(request.query, "query", self.cfg.limits.max_message_bytes)
                decision, _ = await self._decide(request.query, request.strategy, request.head, context, span)
                self._count("Route", decision)
                return self._route_response(decision, request.query, started)

    async def Complete(self, request: pb.CompleteRequest, context) -> pb.CompleteResponse:
        async with rpc_span(self.tracer, SERVICE, "Complete", context, log) as span:
            with self.admission.admit():
                return (await final(self._answer("Complete", request, context, span, stream=False))).summary

    async def CompleteStream(self, request: pb.CompleteRequest, context):
        async with rpc_span(self.tracer, SERVICE, "CompleteStream", context, log) as span:
            with self.admission.admit():
                async for event in self._answer("CompleteStream", request, context, span, stream=True):
                    yield event

    # -- shared steps -------------------------------------------------------------------------------

    async def _answer(self, method: str, request: pb.CompleteRequest, context, span, *,
                      stream: bool) -> AsyncIterator[pb.CompleteStreamResponse]:
        """The decision, the answer's text (as it comes, when streamed) and the summary: CompleteStream's events,
        whose summary is Complete's response."""
        _tag_key(span)
        started = time.perf_counter()
        messages, query = self._messages(request)
        decision, strategy = await self._decide(query, request.strategy, request.head, context, span)
        decision = self._on_conversation(decision, messages, request, span)
        route = self._route_response(decision, query, started)
        yield pb.CompleteStreamResponse(decision=route)
        options = {"deadline": _deadline(context), **self._call_options(request)}
        with self._dispatch_errors():
            if stream and strategy.gate is None:
                events = self.dispatcher.stream(messages, decision.tier, **options)
            else:
                # Complete's path; a stream's too when a gate must read the whole answer before any goes out.
                events = _whole(self.dispatcher.complete(messages, decision.tier, gate=strategy.gate,
                                                         max_tier=strategy.max_tier, **options))
            async for event in events:
                if isinstance(event, Result):
                    result = event
                else:
                    yield pb.CompleteStreamResponse(delta=event)
        summary = self._finish(method, span, decision, route, result, started, messages, request)
        yield pb.CompleteStreamResponse(summary=summary)

    def _messages(self, request: pb.CompleteRequest) -> tuple[list[dict[str, str]], str]:
        """The conversation as the providers take it, and its last user message (the query): every message and
        the whole conversation within the limits, or INVALID_ARGUMENT naming the message or `messages`."""
        limits = self.cfg.limits
        if not request.messages:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "messages: must hold at least one message")
        if len(request.messages) > limits.max_messages:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"messages: {len(request.messages)} messages exceed the limit of {limits.max_messages}")
        messages, total = [], 0
        for i, m in enumerate(request.messages):
            role, content = m.role, m.content
            if role not in ROLES:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"messages[{i}].role: {shown(role)} is not one of {', '.join(ROLES)}")
            total += check_size(content, f"messages[{i}].content", limits.max_message_bytes)
            messages.append({"role": role, "content": content})
        if total > limits.max_total_bytes:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"messages: {total} bytes in all exceed the limit of {limits.max_total_bytes} bytes")
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "messages: need at least one user message")
        check_text(messages[users[-1]]["content"], f"messages[{users[-1]}].content", limits.max_message_bytes)
        if request.max_tokens < 0:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens: must be 0 (provider default) or more")
        if request.HasField("temperature") and not 0 <= request.temperature <= 2:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "temperature: must be between 0 and 2")
        return messages, messages[users[-1]]["content"]

    def _call_options(self, request: pb.CompleteRequest) -> dict:
        return {**_answer_options(request), "on_attempt": self._on_attempt, "on_escalate": self._on_escalate}

    def _on_attempt(self, tier: int, attempt: Attempt, purpose: str) -> None:
        attempt_span(self.tracer, tier, attempt, purpose)
        if attempt.outcome is not Outcome.OK:
            self.metrics.fallbacks.add(1, {"provider": attempt.provider, "outcome": str(attempt.outcome)})

    def _on_escalate(self, from_tier: int, to_tier: int, why: str) -> None:
        self.tracer.start_span("tierwise.escalate", attributes={
            "tierwise.from_tier": from_tier, "tierwise.to_tier": to_tier, "tierwise.reason": why}).end()
        self.metrics.escalations.add(1, {"from_tier": from_tier, "to_tier": to_tier})

    @contextmanager
    def _dispatch_errors(self):
        try:
            yield
        except Unavailable as err:
            code = grpc.StatusCode.FAILED_PRECONDITION if err.not_configured else grpc.StatusCode.UNAVAILABLE
            raise Rejected(code, str(err)) from None
        except DeadlinePassed as err:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, str(err)) from None
        except StreamInterrupted as err:
            raise Rejected(grpc.StatusCode.ABORTED,
                           f"stream interrupted after {err.tokens_sent} chunks from provider {err.provider!r}; the "
                           "partial answer is incomplete and will not be continued: retry the request") from None

    def _finish(self, method: str, span, decision: Decision, route: pb.RouteResponse, result: Result,
                started: float, messages: list[dict[str, str]], request: pb.CompleteRequest) -> pb.CompleteResponse:
        c = result.completion
        span.set_attribute("tierwise.shadow_sampled", self.shadow.maybe_start(
            messages, decision.strategy, result, _answer_options(request)))
        span.set_attribute("gen_ai.request.model", c.model)
        span.set_attribute("gen_ai.response.model", c.model)
        span.set_attribute("gen_ai.usage.input_tokens", c.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", c.output_tokens)
        span.set_attribute("tierwise.final_tier", result.tier)
        span.set_attribute("tierwise.escalations", result.escalations)
        span.set_attribute("tierwise.cost_usd", result.cost_usd)
        if self.cfg.record_content:
            span.set_attribute("tierwise.answer", c.content)
        self._count(method, decision, result)
        self.metrics.latency.record((time.perf_counter() - started) * 1e3, {"method": method})
        return pb.CompleteResponse(
            content=c.content, tier=result.tier, model=c.model, provider=c.provider,
            usage=pb.Usage(input_tokens=c.input_tokens, output_tokens=c.output_tokens), cost_usd=result.cost_usd,
            strategy=decision.strategy, degraded=decision.degraded, escalations=result.escalations,
            attempts=[pb.Attempt(tier=a.tier, provider=a.attempt.provider, model=a.attempt.model,
                                 outcome=str(a.attempt.outcome), error=a.attempt.error,
                                 latency_ms=a.attempt.latency_ms) for a in result.attempts]
                     + [pb.Attempt(tier=tier, outcome="gate_rejected", error=why) for tier, why in result.gate_rejections],
            decision=route)

    def _count(self, method: str, decision: Decision, result: Result | None = None) -> None:
        tier = result.tier if result else decision.tier
        self.metrics.requests.add(1, {"method": method, "tier": tier, "strategy": decision.strategy})
        if decision.degraded:
            self.metrics.degraded.add(1, {"strategy": decision.strategy})
        if result is not None:
            self.metrics.answered(result, self.cfg.tiers[FRONTIER])

    def _on_conversation(self, decision: Decision, messages: list[dict[str, str]], request: pb.CompleteRequest,
                         span) -> Decision:
        """The strategy's decision, moved by the whole conversation and the providers' context windows."""
        try:
            moved = decide_on_conversation(decision, messages, self.dispatcher.chains, request.max_tokens or None)
        except NoTierFits as err:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        if moved is not decision:
            span.set_attribute("tierwise.tier", moved.tier)
        return moved

    async def _decide(self, query: str, strategy_name: str, head: str, context, span) -> tuple[Decision, Strategy]:
        name = strategy_name or self.cfg.strategy
        try:
            strategy = self.strategies.get(name)
        except KeyError:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"strategy: unknown strategy {shown(name)}; available: {', '.join(registered())} "
                           "(compose as <start>+cascade)") from None
        if self.cfg.record_content:
            span.set_attribute("tierwise.query", query)
        try:
            decision = await strategy.decide(RouteInput(query=query, head=head, deadline=_deadline(context)))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise Rejected(err.code(), err.details()) from None
            raise
        span.set_attribute("tierwise.strategy", decision.strategy)
        span.set_attribute("tierwise.tier", decision.tier)
        span.set_attribute("tierwise.degraded", decision.degraded)
        if decision.degraded:
            self.degraded_log.note("degraded decisions: a fallback strategy decided",
                                   strategy=decision.strategy, reason=decision.reason)
        if decision.probabilities:
            span.set_attribute("tierwise.probabilities", list(decision.probabilities))
            span.set_attribute("tierwise.thresholds", list(decision.thresholds))
            span.set_attribute("tierwise.head_version", decision.head_version)
        return decision, strategy

    def _route_response(self, decision: Decision, query: str, started: float) -> pb.RouteResponse:
        tier = self.cfg.tiers[decision.tier]
        return pb.RouteResponse(
            tier=decision.tier, model=self.cfg.model_for(decision.tier), strategy=decision.strategy,
            probabilities=decision.probabilities, degraded=decision.degraded, reason=decision.reason,
            estimated_cost_usd=tier.cost(estimate_tokens(query), self.cfg.expected_output_tokens),
            head_version=decision.head_version, thresholds=decision.thresholds,
            decision_ms=(time.perf_counter() - started) * 1e3)


def _answer_options(request: pb.CompleteRequest) -> dict:
    """The request's generation options, as every provider call for it is made."""
    return {"max_tokens": request.max_tokens or None,
            "temperature": request.temperature if request.HasField("temperature") else None}


async def _whole(result: Awaitable[Result]) -> AsyncIterator[str | Result]:
    """An answer that was not streamed, as events: all of its text in one delta, then the Result."""
    done = await result
    yield done.completion.content
    yield done


def _tag_key(span) -> None:
    if current_key_id():
        span.set_attribute("tierwise.key_id", current_key_id())


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def serve(cfg: RouterConfig, listen: str, classifier_address: str, metrics_listen: str = "",
                version: str = "0.1.0", *, tls: ServerTLS | None = None, classifier_tls: ClientTLS | None = None,
                health_listen: str = "") -> int:
    provider = setup_tracing("tierwise-router", version)
    try:
        meter_provider = setup_metrics("tierwise-router", version, metrics_listen)
        metrics = RouterMetrics()
        guard = front_door(cfg.auth, SERVICE, metrics)
        classifier = ClassifierClient(classifier_address, cfg.classifier.timeout_ms, classifier_tls)
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError; KeysFileError a ValueError
        print(f"tierwise-router: {err}", flush=True)
        return 2
    chains = build_chains(cfg, metrics)
    lineup = None if cfg.classifier.head else LineupHead(
        classifier, cfg.lineup(), cfg.classifier.head_refresh_s)
    strategies = Strategies(deps={"config": cfg, "classifier": classifier, "chains": chains, "lineup_head": lineup})
    # gRPC's own 4 MiB cap on a request stays unless the conversation limit needs more.
    largest = max(4 << 20, cfg.limits.max_total_bytes + (1 << 20))
    server = grpc.aio.server(options=serving.server_options(("grpc.max_receive_message_length", largest)),
                             interceptors=[guard] if guard else None)
    shadow = Shadow(cfg, chains, metrics)
    serving.add_servicer(pb_grpc.add_RouterServiceServicer_to_server,
                         RouterServicer(cfg, strategies, Dispatcher(cfg, chains), metrics, shadow), server)

    tasks: list[asyncio.Task] = []

    async def load() -> str:
        strategies.get(cfg.strategy)
        if guard is not None:
            tasks.append(asyncio.create_task(watch(guard.keys, cfg.auth.reload_s)))
        if lineup is not None:
            await lineup.refresh()
            tasks.append(asyncio.create_task(lineup.run()))
        head = cfg.classifier.head or (f"{lineup.name} (this lineup's)" if lineup.name else "the classifier's default")
        return f"strategy={cfg.strategy} classifier={classifier_address} head={head}"

    async def close() -> None:
        for task in tasks:
            task.cancel()
        await shadow.drain()
        await classifier.close()
        await close_chains(chains)
        for p in (provider, meter_provider):
            if p is not None:
                p.shutdown()

    return await serving.run("tierwise-router", listen, [SERVICE], server, load, close, tls=tls,
                             health_listen=health_listen)
