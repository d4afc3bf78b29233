"""Complete a request at the decided tier: fallback chains, escalation, the cascade's gate, cost.

A tier whose chain is exhausted escalates to the next tier; so does a cascade answer its gate
rejects. Every tier tried is paid for. Only when the top tier is exhausted does the call fail,
naming every attempt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping, Sequence

from tierwise.tiers import FRONTIER

from .config import RouterConfig
from .gates import QualityGate
from .providers import (Attempt, ChainExhausted, Completion, DeadlineExceeded, Outcome, ProviderError,
                        ProviderNotConfigured, TierChain)

Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class TierAttempt:
    tier: int
    attempt: Attempt


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
        tried = "; ".join(f"tier {a.tier} {a.attempt.describe()}" for a in attempts)
        super().__init__(f"no provider could answer ({len(attempts)} attempts): {tried}")


class DeadlinePassed(Exception):
    def __init__(self, attempts: list[TierAttempt]):
        self.attempts = attempts
        super().__init__(f"deadline passed after {len(attempts)} provider attempts")


# Called when the dispatcher moves up a tier: (from_tier, to_tier, why).
OnEscalate = Callable[[int, int, str], None]
# (tier, attempt, purpose): "answer", or "verify" for a verify gate's call.
OnAttempt = Callable[[int, Attempt, str], None]


class Dispatcher:
    def __init__(self, cfg: RouterConfig, chains: Mapping[int, TierChain]):
        self.cfg = cfg
        self.chains = chains

    async def complete(self, messages: Messages, start_tier: int, *, gate: QualityGate | None = None,
                       max_tier: int = FRONTIER, max_tokens: int | None = None, temperature: float | None = None,
                       deadline: float | None = None, on_attempt: OnAttempt | None = None,
                       on_escalate: OnEscalate | None = None) -> Result:
        result = _Progress()
        query = last_user_text(messages)
        for tier in range(start_tier, FRONTIER + 1):
            try:
                completion = await self.chains[tier].complete(
                    messages, max_tokens=max_tokens, temperature=temperature, deadline=deadline,
                    on_attempt=_bind(on_attempt, tier))
            except ProviderError as err:
                result.failed(tier, err)
                if isinstance(err, DeadlineExceeded):
                    raise DeadlinePassed(result.attempts) from None
                result.escalate(tier, f"tier {tier} chain exhausted", on_escalate)
                continue
            result.answered(tier, completion, self.cfg)
            if gate is not None and tier < max_tier:
                verdict = await gate.judge(query, completion.content, tier=tier, finish_reason=completion.finish_reason,
                                           deadline=deadline, on_attempt=on_attempt)
                result.cost += verdict.cost_usd
                if not verdict.accept:
                    result.gate_rejections.append((tier, verdict.reason))
                    result.escalate(tier, f"{gate.name} gate: {verdict.reason}", on_escalate)
                    continue
            return result.done()
        if result.last is not None:
            return result.done()  # a gate-rejected answer beats no answer when every higher tier failed
        raise result.unavailable()

    async def stream(self, messages: Messages, start_tier: int, *, max_tokens: int | None = None,
                     temperature: float | None = None, deadline: float | None = None,
                     on_attempt: OnAttempt | None = None,
                     on_escalate: OnEscalate | None = None) -> AsyncIterator[str | Result]:
        """Text deltas, then the `Result`. A chain fails over (and a tier escalates) only before its
        first delta; a break after that raises `StreamInterrupted` from providers.py."""
        result = _Progress()
        for tier in range(start_tier, FRONTIER + 1):
            events = self.chains[tier].stream(messages, max_tokens=max_tokens, temperature=temperature,
                                              deadline=deadline, on_attempt=_bind(on_attempt, tier))
            try:
                async for event in events:
                    if isinstance(event, Completion):
                        result.answered(tier, event, self.cfg)
                        yield result.done()
                        return
                    yield event
            except (ChainExhausted, ProviderNotConfigured) as err:
                result.failed(tier, err)
                result.escalate(tier, f"tier {tier} chain exhausted", on_escalate)
            except DeadlineExceeded as err:
                result.failed(tier, err)
                raise DeadlinePassed(result.attempts) from None
            finally:
                await events.aclose()
        raise result.unavailable()


class _Progress:
    """What a dispatch has done so far: attempts, money spent, escalations."""

    def __init__(self):
        self.attempts: list[TierAttempt] = []
        self.cost = 0.0
        self.escalations = 0
        self.gate_rejections: list[tuple[int, str]] = []
        self.last: tuple[int, Completion] | None = None

    def failed(self, tier: int, err: ProviderError) -> None:
        self.attempts.extend(TierAttempt(tier, a) for a in err.attempts)

    def answered(self, tier: int, completion: Completion, cfg: RouterConfig) -> None:
        self.attempts.extend(TierAttempt(tier, a) for a in completion.attempts)
        self.cost += cfg.tiers[tier].cost(completion.input_tokens, completion.output_tokens)
        self.last = (tier, completion)

    def escalate(self, tier: int, why: str, on_escalate: OnEscalate | None) -> None:
        if tier < FRONTIER:
            self.escalations += 1
            if on_escalate is not None:
                on_escalate(tier, tier + 1, why)

    def done(self) -> Result:
        tier, completion = self.last
        return Result(completion, tier, self.escalations, self.cost, self.attempts, self.gate_rejections)

    def unavailable(self) -> Unavailable:
        not_configured = bool(self.attempts) and all(a.attempt.outcome is Outcome.NOT_CONFIGURED for a in self.attempts)
        return Unavailable(self.attempts, not_configured)


def _bind(on_attempt: OnAttempt | None, tier: int):
    """`on_attempt` as a provider chain calls it, with the attempt alone, for an answer at `tier`."""
    return None if on_attempt is None else (lambda attempt: on_attempt(tier, attempt, "answer"))


def last_user_text(messages: Messages) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message.get("content", "")
    return ""
