"""Complete a request at the decided tier: fallback chains, escalation, the cascade's gate, cost.

A tier whose chain is exhausted escalates to the next tier; so does a cascade answer its gate
rejects (an answer that calls the caller's tools is not gated). Every tier tried is paid for.
Only when the top tier is exhausted does the call fail, naming every attempt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping, Sequence

from tierwise.tiers import FRONTIER

from .config import RouterConfig
from .events import final, single
from .gates import QualityGate
from .messages import query_of
from .providers import Attempt, Completion, DeadlineExceeded, Events
from .providers import OnAttempt as ChainOnAttempt
from .providers import DEFAULT_SAMPLING, Outcome, ProviderError, Sampling, StreamInterrupted, TierChain, bound
from .retry import REQUEST_FAULT_STATUSES

Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class TierAttempt:
    tier: int
    attempt: Attempt


class Meter:
    """What one call's providers are paid, charged (to the caller's API key) as each payment is known: every answer
    and gate verdict when it comes, so that a call that then times out or is cancelled still pays for them; and a
    stream cut short, for the text it delivered, at the price of the tier and provider that sent it."""

    def __init__(self, cfg: RouterConfig, charge: Callable[[float], None]):
        self.cfg = cfg
        self.charge = charge
        self.streaming: tuple[int, str] | None = None  # (tier, provider) whose text is going out
        self.total = 0.0  # charged so far
        self.tier = 0  # the last tier paid

    def paid(self, usd: float, tier: int) -> None:
        if usd:
            self.charge(usd)
            self.total += usd
            self.tier = tier

    def answered(self, usd: float, tier: int) -> None:
        """A whole answer from `tier`, paid for: a stream that sent it is no longer one cut short."""
        self.streaming = None
        self.paid(usd, tier)

    def cut(self, input_tokens: int, output_tokens: int) -> None:
        """The stream going out stopped before its answer was summed up; `output_tokens` of it were delivered."""
        if self.streaming is not None:
            tier, provider = self.streaming
            self.paid(self.cfg.tiers[tier].cost(input_tokens, output_tokens, provider), tier)


@dataclass
class Result:
    completion: Completion
    tier: int
    escalations: int
    cost_usd: float
    attempts: list[TierAttempt] = field(default_factory=list)
    gate_rejections: list[tuple[int, str]] = field(default_factory=list)


class Unavailable(Exception):
    """Every tier from the starting one up was exhausted."""

    def __init__(self, attempts: list[TierAttempt], not_configured: bool):
        self.attempts = attempts
        self.not_configured = not_configured
        # Every provider asked answered that the request itself was at fault (400, 413, 422). Those skipped (an
        # open breaker, no vision, ...) were not asked: they say nothing of the request.
        asked = [a for a in attempts if a.attempt.outcome is Outcome.ERROR]
        self.refused = bool(asked) and all(a.attempt.status_code in REQUEST_FAULT_STATUSES for a in asked)
        super().__init__(self._said(words=True))
        self.traced = self._said(words=False)  # for spans: without the providers' words, which can quote the prompt
        # Every provider asked said when it could answer again (429 or 503 with Retry-After): the soonest of those,
        # when a retry is worth it; None when one of them failed otherwise.
        waits = [a.attempt.retry_after for a in asked]
        self.retry_after = min(waits) if asked and None not in waits else None

    def _said(self, words: bool) -> str:
        tried = "; ".join(f"tier {a.tier} {a.attempt.describe(words)}" for a in self.attempts)
        return f"no provider could answer ({len(self.attempts)} attempts): {tried}"


class DeadlinePassed(Exception):
    def __init__(self, attempts: list[TierAttempt]):
        self.attempts = attempts
        super().__init__(f"deadline passed after {len(attempts)} provider attempts")


# Called when the dispatcher moves up a tier: (from_tier, to_tier, why).
OnEscalate = Callable[[int, int, str], None]
# (tier, attempt, purpose): "answer", or "verify" for a verify gate's call.
OnAttempt = Callable[[int, Attempt, str], None]
# How a tier's chain is asked for its answer: (chain, the attempt hook bound to its tier, told the name of the
# provider whose text starts to go out) -> its events.
Ask = Callable[[TierChain, ChainOnAttempt | None, Callable[[str], None]], Events]


class Dispatcher:
    def __init__(self, cfg: RouterConfig, chains: Mapping[int, TierChain]):
        self.cfg = cfg
        self.chains = chains

    async def complete(self, messages: Messages, start_tier: int, *, gate: QualityGate | None = None,
                       max_tier: int = FRONTIER, ceiling: int = FRONTIER, max_tokens: int | None = None,
                       temperature: float | None = None, sampling: Sampling = DEFAULT_SAMPLING,
                       deadline: float | None = None, on_attempt: OnAttempt | None = None,
                       on_escalate: OnEscalate | None = None, prefer: str = "", meter: Meter | None = None) -> Result:
        """The answer from `start_tier`, escalating when a chain is exhausted or the gate rejects, up to `max_tier`
        (a cascade's) and never above `ceiling` (an API key's `max_tier`); the provider called `prefer` asked first.
        `meter` is charged for each answer and verdict as it comes."""
        def ask(chain: TierChain, hook: ChainOnAttempt | None, streaming: Callable[[str], None]) -> Events:
            return single(chain.complete(messages, max_tokens=max_tokens, temperature=temperature, sampling=sampling,
                                         deadline=deadline, on_attempt=hook, prefer=prefer))
        return await final(self._escalate(ask, messages, start_tier, gate=gate, max_tier=max_tier, ceiling=ceiling,
                                          deadline=deadline, on_attempt=on_attempt, on_escalate=on_escalate,
                                          meter=meter))

    def stream(self, messages: Messages, start_tier: int, *, ceiling: int = FRONTIER, max_tokens: int | None = None,
               temperature: float | None = None, sampling: Sampling = DEFAULT_SAMPLING, deadline: float | None = None,
               on_attempt: OnAttempt | None = None, on_escalate: OnEscalate | None = None,
               prefer: str = "", meter: Meter | None = None) -> AsyncIterator[str | Result]:
        """Text deltas, then the `Result`. A chain fails over (and a tier escalates, up to `ceiling`) only before its
        first delta; a break after that raises `StreamInterrupted` from providers. `meter` learns which tier and
        provider stream, and is charged for the answer once it is whole."""
        def ask(chain: TierChain, hook: ChainOnAttempt | None, streaming: Callable[[str], None]) -> Events:
            return chain.stream(messages, max_tokens=max_tokens, temperature=temperature, sampling=sampling,
                                deadline=deadline, on_attempt=hook, prefer=prefer, on_streaming=streaming)
        return self._escalate(ask, messages, start_tier, gate=None, max_tier=FRONTIER, ceiling=ceiling,
                              deadline=deadline, on_attempt=on_attempt, on_escalate=on_escalate, meter=meter)

    async def _escalate(self, ask: Ask, messages: Messages, start_tier: int, *, gate: QualityGate | None,
                        max_tier: int, ceiling: int, deadline: float | None, on_attempt: OnAttempt | None,
                        on_escalate: OnEscalate | None, meter: Meter | None) -> AsyncIterator[str | Result]:
        """Each tier's answer from `start_tier` up to `ceiling` (and `max_tier`, a cascade's, unless it started
        above it) until one is returned (its gate, if any, passing it): the deltas of the tiers asked, then the
        `Result`. A verifier above `ceiling`, the API key's, is not asked."""
        gated_up_to = min(max_tier, ceiling)
        last = max(start_tier, gated_up_to)
        meter = meter or Meter(self.cfg, lambda usd: None)
        progress = _Progress(last, meter)
        for tier in range(start_tier, last + 1):
            def streaming(provider: str, tier: int = tier) -> None:
                meter.streaming = (tier, provider)
            events = ask(self.chains[tier], bound(on_attempt, tier, "answer"), streaming)
            try:
                async for event in events:
                    if isinstance(event, Completion):
                        completion = event
                    else:
                        yield event
            except StreamInterrupted:
                raise  # part of an answer went out: no other tier may finish it
            except DeadlineExceeded as err:
                progress.failed(tier, err)
                raise DeadlinePassed(progress.attempts) from None
            except ProviderError as err:
                progress.failed(tier, err)
                progress.escalate(tier, f"tier {tier} chain exhausted", on_escalate)
                continue
            finally:
                await events.aclose()
            progress.answered(tier, completion, self.cfg)
            # A gate reads answers; calls to the caller's tools are steps towards one, and the answer the model gives
            # once it has their results is gated in its own request.
            if gate is not None and tier < gated_up_to and not completion.tool_calls:
                verdict = await gate.judge(query_of(messages), completion.content, tier=tier,
                                           finish_reason=completion.finish_reason, deadline=deadline,
                                           on_attempt=on_attempt, ceiling=ceiling)
                meter.paid(verdict.cost_usd, tier)
                if not verdict.accept:
                    progress.gate_rejections.append((tier, verdict.reason))
                    progress.escalate(tier, f"{gate.name} gate: {verdict.reason}", on_escalate)
                    continue
            yield progress.done()
            return
        if progress.last is None:
            raise progress.unavailable()
        yield progress.done()  # a gate-rejected answer beats no answer when every higher tier failed


class _Progress:
    """What a dispatch has done so far: attempts, money spent, escalations."""

    def __init__(self, ceiling: int, meter: Meter):
        self.ceiling = ceiling
        self.meter = meter
        self.attempts: list[TierAttempt] = []
        self.escalations = 0
        self.gate_rejections: list[tuple[int, str]] = []
        self.last: tuple[int, Completion] | None = None

    def failed(self, tier: int, err: ProviderError) -> None:
        self.attempts.extend(TierAttempt(tier, a) for a in err.attempts)

    def answered(self, tier: int, completion: Completion, cfg: RouterConfig) -> None:
        self.attempts.extend(TierAttempt(tier, a) for a in completion.attempts)
        self.meter.answered(cfg.tiers[tier].answer_cost(completion), tier)
        self.last = (tier, completion)

    def escalate(self, tier: int, why: str, on_escalate: OnEscalate | None) -> None:
        if tier < self.ceiling:
            self.escalations += 1
            if on_escalate is not None:
                on_escalate(tier, tier + 1, why)

    def done(self) -> Result:
        tier, completion = self.last
        # The meter is the call's own: what it charged is what every tier tried and every verdict cost.
        return Result(completion, tier, self.escalations, self.meter.total, self.attempts, self.gate_rejections)

    def unavailable(self) -> Unavailable:
        not_configured = bool(self.attempts) and all(a.attempt.outcome is Outcome.NOT_CONFIGURED for a in self.attempts)
        return Unavailable(self.attempts, not_configured)

