"""The router's work whatever the transport: admission, validation, decision, dispatch, summary, metrics.

gRPC (server.py) and the OpenAI-compatible HTTP API (http/) both call it with a request, the caller's deadline
and the call's server span; its refusals are `Rejected` with a gRPC status that each transport maps to its own.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from typing import AsyncIterator, Awaitable

import grpc
from opentelemetry import trace

from tierwise.metrics import quality_target
from tierwise.serving import NO_RETRY, InFlight, Rejected, ThrottledLog, check_text, retry_after, shown
from tierwise.tiers import FRONTIER
from tierwise.v1 import router_pb2 as pb

from . import access_log
from .affinity import Affinity, Earlier, raised_to
from .answer_cache import AnswerCache, served
from .auth import (charge_current_key, check_current_spend, current_key_id, current_max_tier,
                   current_quality_target, refund_current_key)
from .config import RouterConfig
from .conversation import NoTierFits, decide_on_conversation, held
from .dispatch import DeadlinePassed, Dispatcher, Meter, Result, Unavailable
from .events import final
from .idempotency import Once
from .shared_answers import SharedAnswers
from .messages import checked_messages
from .providers import Attempt, Outcome, Sampling, StreamInterrupted, TokenLogprob
from .sampling import answer_options
from .shadow import Shadow
from .strategies import Decision, RouteInput, Strategies, Strategy, registered
from .telemetry import RouterMetrics, attempt_span
from .providers.chain import prompt_tokens
from .tokens import estimate_tokens

log = logging.getLogger("tierwise.router")


class RouterCore:
    def __init__(self, cfg: RouterConfig, strategies: Strategies, dispatcher: Dispatcher, metrics: RouterMetrics,
                 shadow: Shadow, shared: SharedAnswers | None = None):
        self.cfg = cfg
        self.strategies = strategies
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.shadow = shadow
        self.tracer = trace.get_tracer("tierwise.router")
        self.admission = InFlight(cfg.limits.max_in_flight, "calls", log)
        self.degraded_log = ThrottledLog(log)
        self.cache = AnswerCache(cfg.cache)
        self.affinity = Affinity(cfg.affinity)
        self.once = Once(cfg.idempotency.max_mb, cfg.idempotency.ttl_s, cfg.idempotency.retry_window_s, self.tracer,
                         shared=shared)

    @contextmanager
    def _admitted(self):
        """A place among the calls in flight, or RESOURCE_EXHAUSTED with the call given back to its key's rate."""
        with ExitStack() as stack:
            try:
                stack.enter_context(self.admission.admit())
            except Rejected:
                refund_current_key()
                raise
            yield

    async def route(self, request: pb.RouteRequest, deadline: float | None, span) -> pb.RouteResponse:
        """The decision alone (Route)."""
        entry = _begun(span)
        with self._admitted():
            started = time.perf_counter()
            check_text(request.query, "query", self.cfg.limits.max_message_bytes)
            decision, _ = await self._decide(request.query, request, deadline, span)
            decision = held(decision, current_max_tier())
            self._count("Route", decision)
            route = self._route_response(decision, estimate_tokens(request.query), started)
            entry.decided(route)
            self.metrics.latency.record(route.decision_ms, {"method": "Route"})
            return route

    async def answer(self, method: str, request: pb.CompleteRequest, deadline: float | None, span, *,
                     stream: bool) -> AsyncIterator[pb.CompleteStreamResponse]:
        """The decision, the answer's text (as it comes, when streamed) and the summary: CompleteStream's events,
        whose summary is Complete's response. `method` labels the metrics."""
        entry = _begun(span)
        check_current_spend()  # a call whose key's spend the front door left to this point: it may now pay
        with self._admitted():
            started = time.perf_counter()
            messages, query = checked_messages(request, self.cfg.limits)
            asked = answer_options(request)
            key = self.cache.key(request, current_key_id(), current_max_tier(), current_quality_target())
            if (kept := self._kept(key, method, span, started)) is not None:
                entry.decided(kept.decision)
                entry.answered(kept)
                yield pb.CompleteStreamResponse(decision=kept.decision)
                if stream and kept.content:
                    yield pb.CompleteStreamResponse(delta=kept.content)
                yield pb.CompleteStreamResponse(summary=kept)
                return
            decision, strategy = await self._decide(query, request, deadline, span)
            conversation = self.affinity.key(messages, current_key_id())
            decision, earlier = self._affine(decision, conversation, messages, strategy.pinned)
            ceiling = current_max_tier()
            decision = self._on_conversation(decision, messages, request.max_tokens, asked["sampling"], ceiling, span,
                                             strategy.pinned)
            # The estimate prices the request as a provider is sent it: every message and the tools offered.
            prompt = prompt_tokens(messages, asked["sampling"])
            route = self._route_response(decision, prompt, started)
            entry.decided(route)
            yield pb.CompleteStreamResponse(decision=route)
            meter = Meter(self.cfg, charge_current_key)  # the key pays each answer as it comes
            options = {"deadline": deadline, "ceiling": ceiling, **asked, "on_attempt": self._on_attempt,
                       "on_escalate": self._on_escalate, "prefer": earlier.provider if earlier else "",
                       "meter": meter}
            streamed: list[str] = []  # what the caller got of an answer that may never be summed up
            summed = False
            try:
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
                            streamed.append(event)
                            yield pb.CompleteStreamResponse(delta=event)
                summary = self._finish(method, span, decision, route, result, started, messages, asked)
                summed = True
                entry.answered(summary)
                self.affinity.answered(conversation, result.tier, result.completion.provider)
                if all(tier != result.tier for tier, _ in result.gate_rejections):
                    self.cache.put(key, summary)  # not an answer the gate rejected, returned for want of a better
                yield pb.CompleteStreamResponse(summary=summary)
            finally:
                if not summed:  # cancelled, cut by its provider, or failed: what was paid for, in the cost too
                    delivered = estimate_tokens("".join(streamed)) if streamed else 0  # what went out, estimated
                    if streamed:
                        meter.cut(prompt, delivered)
                    if meter.total:
                        self.metrics.cost.add(meter.total, {"tier": meter.tier})
                    entry.unsummed(meter.total, meter.streaming, delivered)

    async def complete(self, method: str, request: pb.CompleteRequest, deadline: float | None, span,
                       key: str = "") -> tuple[pb.CompleteResponse, bool]:
        """The answer, not streamed, and whether an earlier call with the same idempotency `key` got it first."""
        async def work(carried) -> pb.CompleteResponse:
            return (await final(self.answer(method, request, deadline, carried, stream=False))).summary

        answer, replayed = await self.once.run(current_key_id(), key, request, deadline, span, work)
        if replayed:
            _begun(span).replayed(answer)
            span.set_attribute("tierwise.idempotent_replayed", True)
            span.set_attribute("tierwise.final_tier", answer.tier)
        return answer, replayed

    def count_tokens(self, request: pb.CompleteRequest) -> int:
        """About how many tokens the request's prompt holds (every message with its images and tool calls, and the
        tools offered), or INVALID_ARGUMENT as `answer` would refuse it. The estimate the context-window check makes:
        no model is chosen yet to count with its own tokenizer. The strategy and quality target are checked as a
        call's are, not the head: only the classifier knows its heads."""
        self._strategy(request.strategy or self.cfg.strategy)
        _asked_target(request)
        messages, _ = checked_messages(request, self.cfg.limits)
        return prompt_tokens(messages, answer_options(request)["sampling"])

    def _affine(self, decision: Decision, conversation: bytes | None, messages: list[dict[str, str]],
                pinned: bool) -> tuple[Decision, Earlier | None]:
        """`decision` raised to the tier where the conversation `messages` continue was last answered (unless the
        caller `pinned` its tier), and that earlier turn; (`decision`, None) when affinity knows no such turn."""
        earlier = self.affinity.earlier(conversation, messages)
        if earlier is None:
            return decision, None
        raised = decision if pinned else raised_to(earlier, decision)
        self.metrics.affinity.add(1, {"result": "raised" if raised is not decision else "held"})
        return raised, earlier

    def _kept(self, key: bytes | None, method: str, span, started: float) -> pb.CompleteResponse | None:
        """The answer the cache holds for `key`, as a hit serves it (counted and traced as one), or None."""
        if key is None:
            return None
        kept = self.cache.get(key)
        self.metrics.answer_cache.add(1, {"result": "miss" if kept is None else "hit"})
        span.set_attribute("tierwise.cache_hit", kept is not None)
        if kept is None:
            return None
        hit = served(kept)
        span.set_attribute("tierwise.final_tier", hit.tier)
        span.set_attribute("tierwise.cost_usd", 0.0)
        span.set_attribute("gen_ai.response.model", hit.model)
        self.metrics.requests.add(1, {"method": method, "tier": hit.tier, "strategy": hit.strategy})
        self.metrics.latency.record((time.perf_counter() - started) * 1e3, {"method": method})
        return hit

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
            if err.refused:  # no point retrying: every provider said the request itself is wrong
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"every provider asked refused the request as invalid; {err}") from None
            code = grpc.StatusCode.FAILED_PRECONDITION if err.not_configured else grpc.StatusCode.UNAVAILABLE
            # Every provider was asked already: a client retrying it at once would bill them all again for the
            # same refusal, unless every one of them said when to come back.
            when = NO_RETRY if err.retry_after is None else retry_after(err.retry_after)
            raise Rejected(code, str(err), trailing=when, traced=err.traced) from None
        except DeadlinePassed as err:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, str(err)) from None
        except StreamInterrupted as err:
            raise Rejected(grpc.StatusCode.ABORTED,
                           f"stream interrupted after {err.tokens_sent} chunks from provider {err.provider!r}; the "
                           "partial answer is incomplete and will not be continued: retry the request") from None

    def _finish(self, method: str, span, decision: Decision, route: pb.RouteResponse, result: Result,
                started: float, messages: list[dict[str, str]], asked: dict) -> pb.CompleteResponse:
        c = result.completion
        sampled = self.shadow.maybe_start(messages, decision.strategy, result, asked)
        span.set_attribute("tierwise.shadow_sampled", sampled)
        span.set_attribute("gen_ai.request.model", c.model)
        span.set_attribute("gen_ai.response.model", c.model)
        span.set_attribute("gen_ai.usage.input_tokens", c.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", c.output_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [c.finish_reason])
        span.set_attribute("tierwise.tool_calls", len(c.tool_calls))  # how many, never their arguments
        span.set_attribute("tierwise.final_tier", result.tier)
        span.set_attribute("tierwise.escalations", result.escalations)
        cost = result.cost_usd + decision.cost_usd  # the answer's and the decision's (a judge's call)
        span.set_attribute("tierwise.cost_usd", cost)
        if self.cfg.record_content:
            span.set_attribute("tierwise.answer", c.content)
        summary = pb.CompleteResponse(
            content=c.content, tier=result.tier, model=c.model, provider=c.provider,
            usage=pb.Usage(input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                           cached_input_tokens=c.cached_input_tokens), cost_usd=cost,
            strategy=decision.strategy, degraded=decision.degraded, escalations=result.escalations,
            attempts=[pb.Attempt(tier=a.tier, provider=a.attempt.provider, model=a.attempt.model,
                                 outcome=str(a.attempt.outcome), error=a.attempt.public_error,
                                 latency_ms=a.attempt.latency_ms) for a in result.attempts]
                     + [pb.Attempt(tier=tier, outcome="gate_rejected", error=why) for tier, why in result.gate_rejections],
            decision=route, finish_reason=c.finish_reason,
            tool_calls=[pb.ToolCall(id=t.id, name=t.name, arguments=t.arguments) for t in c.tool_calls],
            logprobs=[_token(t) for t in c.logprobs])
        self._count(method, decision, result)  # once the answer is built: one that fails is counted where it fails
        self.metrics.latency.record((time.perf_counter() - started) * 1e3, {"method": method})
        return summary

    def _count(self, method: str, decision: Decision, result: Result | None = None) -> None:
        tier = result.tier if result else decision.tier
        self.metrics.requests.add(1, {"method": method, "tier": tier, "strategy": decision.strategy})
        if decision.degraded:
            self.metrics.degraded.add(1, {"strategy": decision.strategy})
        if result is not None:
            self.metrics.answered(result, self.cfg.tiers[FRONTIER])

    def _on_conversation(self, decision: Decision, messages: list[dict[str, str]], max_tokens: int,
                         sampling: Sampling, ceiling: int, span, pinned: bool) -> Decision:
        """The strategy's decision, moved by the whole conversation (its floor, unless the tier is `pinned`) and what
        the providers can take, no higher than `ceiling`."""
        try:
            moved = decide_on_conversation(decision, messages, self.dispatcher.chains, max_tokens or None, sampling,
                                           ceiling, pinned)
        except NoTierFits as err:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        if moved is not decision:
            span.set_attribute("tierwise.tier", moved.tier)
        return moved

    def _strategy(self, name: str) -> Strategy:
        try:
            return self.strategies.get(name)
        except KeyError:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"strategy: unknown strategy {shown(name)}; available: {', '.join(registered())} "
                           "(compose as <start>+cascade)") from None

    async def _decide(self, query: str, request: pb.RouteRequest | pb.CompleteRequest, deadline: float | None,
                      span) -> tuple[Decision, Strategy]:
        """The decision on `query` by the strategy, head and quality target `request` names."""
        strategy = self._strategy(request.strategy or self.cfg.strategy)
        if self.cfg.record_content:
            span.set_attribute("tierwise.query", query)
        try:
            decision = await strategy.decide(RouteInput(query=query, head=request.head, deadline=deadline,
                                                        quality_target=_quality_target(request, span),
                                                        on_attempt=self._on_attempt, max_tier=current_max_tier()))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise Rejected(err.code(), err.details()) from None
            raise
        if decision.cost_usd:  # a judge's call: paid whether or not an answer follows
            charge_current_key(decision.cost_usd)
            self.metrics.cost.add(decision.cost_usd, {"tier": decision.cost_tier})
            access_log.current().charged(decision.cost_usd)
            span.set_attribute("tierwise.decision_cost_usd", decision.cost_usd)
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

    def _route_response(self, decision: Decision, prompt_tokens: int, started: float) -> pb.RouteResponse:
        tier = self.cfg.tiers[decision.tier]
        return pb.RouteResponse(
            tier=decision.tier, model=self.cfg.model_for(decision.tier), strategy=decision.strategy,
            probabilities=decision.probabilities, degraded=decision.degraded, reason=decision.reason,
            estimated_cost_usd=tier.cost(prompt_tokens, self.cfg.expected_output_tokens),
            head_version=decision.head_version, thresholds=decision.thresholds,
            decision_ms=(time.perf_counter() - started) * 1e3)


async def _whole(result: Awaitable[Result]) -> AsyncIterator[str | Result]:
    """An answer that was not streamed, as events: all of its text in one delta (none for an answer of tool calls
    alone), then the Result."""
    done = await result
    if done.completion.content:
        yield done.completion.content
    yield done


def _token(t: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(token=t.token, logprob=t.logprob, bytes=t.raw, top_logprobs=[_token(a) for a in t.top])


def _begun(span) -> access_log.Entry:
    """This call's access log entry, with its trace; its span tagged with the key's id."""
    if key_id := current_key_id():
        span.set_attribute("tierwise.key_id", key_id)
    entry = access_log.current()
    entry.traced(span)
    return entry


def _asked_target(request: pb.RouteRequest | pb.CompleteRequest) -> float | None:
    """The quality target the request sets, if any; INVALID_ARGUMENT unless it is in (0, 1]."""
    if not request.HasField("quality_target"):
        return None
    try:
        return quality_target(request.quality_target)
    except ValueError as err:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"quality_target: {err}") from None


def _quality_target(request: pb.RouteRequest | pb.CompleteRequest, span) -> float | None:
    """The quality target the request sets, else its key's, if any; INVALID_ARGUMENT unless it is in (0, 1]."""
    if (target := _asked_target(request)) is None and (target := current_quality_target()) is None:
        return None
    span.set_attribute("tierwise.quality_target", target)
    access_log.current().asked(target)
    return target
