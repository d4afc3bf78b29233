"""Quality gates: is the cheaper tier's answer good enough to return, or should the cascade escalate?"""
from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from tierwise.tiers import FRONTIER

from .providers import ProviderError, bound
from .replies import parse_verdict, prompt, true_probability


@dataclass(frozen=True)
class Verdict:
    accept: bool
    reason: str
    cost_usd: float = 0.0  # what reaching the verdict cost: a verifier model's call
    asked_model: bool = False  # a model was called for it (whether it answered or not)
    error: str = ""  # why the model asked could not rule, when it could not
    # P(acceptable) as the verifier weighed it, compared with the gate's bar; None when the verdict is final
    # whatever the bar (a text check, a failed call, no verdict).
    score: float | None = None


class QualityGate(ABC):
    name: ClassVar[str]
    # The verdict depends on the texts alone, so `tierwise eval` can replay the gate on recorded answers.
    replayable: ClassVar[bool] = True

    @classmethod
    def build(cls, deps: Mapping[str, Any] | None) -> "QualityGate":
        """The gate, given the router's shared dependencies (its config and provider chains)."""
        return cls()

    @abstractmethod
    def check(self, query: str, answer: str, finish_reason: str = "stop") -> Verdict:
        """The verdict from the texts alone."""

    async def judge(self, query: str, answer: str, *, tier: int, finish_reason: str = "stop",
                    deadline: float | None = None, on_attempt: Callable[..., None] | None = None,
                    ceiling: int = FRONTIER) -> Verdict:
        """The verdict on tier `tier`'s answer, as the router's cascade asks for it. A gate that calls a model
        reports each provider attempt to `on_attempt(tier, attempt, "verify")`, for spans and metrics, and asks
        none above `ceiling` (the API key's max_tier)."""
        return self.check(query, answer, finish_reason)


REFUSAL = re.compile(r"\b(i (cannot|can't|am unable to|'m unable to)|as an ai\b|i'm not able to|i do not know|"
                     r"i don't know|not sure|i apologi[sz]e)", re.I)


class SurfaceGate(QualityGate):
    """Reject answers that fail on their face: empty, cut off at max_tokens, refusing or hedging. It cannot
    tell a right answer from a wrong one; it catches the failures a provider returns as success."""

    name = "surface"

    def check(self, query: str, answer: str, finish_reason: str = "stop") -> Verdict:
        text = answer.strip()
        if not text:
            return Verdict(False, "empty answer")
        if finish_reason == "length":
            return Verdict(False, "answer cut off at max_tokens")
        if REFUSAL.search(text[:400]):
            return Verdict(False, "refusal or uncertainty")
        return Verdict(True, "passed surface checks")


class HeuristicGate(SurfaceGate):
    """The seed's gate: the surface checks, plus rejecting answers far too short for a long question. That
    rule rejects short correct answers: on routerbench's dev part, the answers it rejects are acceptable
    more often than those it passes (decision 0012). Kept for comparison; `surface` is the default."""

    name = "heuristic"

    def check(self, query: str, answer: str, finish_reason: str = "stop") -> Verdict:
        verdict = super().check(query, answer, finish_reason)
        words = len(answer.split())
        if verdict.accept and len(query.split()) > 60 and words < 10:
            return Verdict(False, f"{words}-word answer to a {len(query.split())}-word question")
        return verdict


VERIFY = (
    "You check answers before they reach a user. Read the user message and the proposed answer, and decide "
    "whether the proposed answer correctly and completely does what the user message asks. "
    'Reply with JSON only, exactly like {"acceptable": true} or {"acceptable": false}.'
)


class VerifierGate(SurfaceGate):
    """The surface checks, then a model reads the query and the answer and says whether it is acceptable.

    The answer passes when P(acceptable) reaches the bar (`cascade.verifier_bar`). P is read from the log
    probabilities of the verdict's token (p(true) / (p(true) + p(false))), so the bar trades quality for cost
    like a threshold; a provider that sends none gives P = 1 or 0, the verdict itself (docs/decisions/0017).
    The verifier reads the answer and writes a few tokens; its call is paid for with the answer. By default
    tier 1's model verifies: at a stronger tier's prices, reading every answer costs more than it saves
    (docs/decisions/0016). A verifier that fails, times out or answers out of format rejects, so the
    cascade escalates: quality first. It needs a live model: `tierwise eval` replays it only through a
    router config's providers (`--config`, tierwise_tools/live_gate.py).
    """

    name = "verify"
    replayable = False

    def __init__(self, chains: Mapping[int, Any], tiers: Mapping[int, Any], verifier_tier: int, timeout_s: float,
                 bar: float = 0.5, top_logprobs: int = 5):
        self.chains = chains
        self.tiers = tiers
        self.verifier_tier = verifier_tier
        self.timeout_s = timeout_s
        self.bar = bar
        self.top_logprobs = top_logprobs

    @classmethod
    def build(cls, deps: Mapping[str, Any] | None) -> "VerifierGate":
        if not deps or "chains" not in deps:
            raise ValueError("the verify gate asks a model: it needs the router's provider chains")
        cfg = deps["config"]
        c = cfg.cascade
        return cls(deps["chains"], cfg.tiers, c.verifier_tier, c.verifier_timeout_ms / 1000, c.verifier_bar,
                   c.verifier_logprobs)

    async def judge(self, query: str, answer: str, *, tier: int, finish_reason: str = "stop",
                    deadline: float | None = None, on_attempt: Callable[..., None] | None = None,
                    ceiling: int = FRONTIER) -> Verdict:
        surface = self.check(query, answer, finish_reason)
        if not surface.accept:
            return surface  # no need to pay a verifier for an empty, cut-off or refusing answer
        by = verifier_tier_for(self.verifier_tier, tier)
        if by > ceiling:  # unverified, as when the verifier fails: the answer of a tier the key may pay for follows
            return Verdict(False, f"tier {by} verifier not asked: above the API key's max_tier {ceiling}")
        budget = time.monotonic() + self.timeout_s
        try:
            reply = await self.chains[by].complete(
                prompt(VERIFY, user_message=query, proposed_answer=answer),
                max_tokens=16, temperature=0.0, deadline=budget if deadline is None else min(budget, deadline),
                on_attempt=bound(on_attempt, by, "verify"),
                top_logprobs=self.top_logprobs or None)
        except ProviderError as err:
            return Verdict(False, f"tier {by} verifier failed ({type(err).__name__})", asked_model=True,
                           error=str(err)[:300])
        cost = self.tiers[by].answer_cost(reply)
        try:
            acceptable = parse_verdict(reply.content, "acceptable", bool)
        except ValueError:
            return Verdict(False, f"verifier {reply.model} gave no verdict", cost, asked_model=True,
                           error=f"no verdict in {reply.content[:80]!r}")
        weighed = true_probability(reply.content, reply.tokens, "acceptable")
        score = float(acceptable) if weighed is None else weighed
        accept = score >= self.bar
        return Verdict(accept, f"verifier {reply.model} rated it acceptable with p={score:.2f}, "
                               f"{'at or above' if accept else 'below'} the bar {self.bar:g}", cost,
                       asked_model=True, score=score)


def verifier_tier_for(setting: int, tier: int) -> int:
    """The tier whose model verifies tier `tier`'s answer under `cascade.verifier_tier: setting`."""
    return setting or min(tier + 1, FRONTIER)


GATES: dict[str, type[QualityGate]] = {g.name: g for g in (SurfaceGate, HeuristicGate, VerifierGate)}


def gate(name: str, deps: Mapping[str, Any] | None = None) -> QualityGate:
    """The gate named `name`; `deps` (the router's config and chains) for gates that call a model."""
    if name not in GATES:
        raise KeyError(f"unknown gate {name!r}; available: {sorted(GATES)}")
    return GATES[name].build(deps)
