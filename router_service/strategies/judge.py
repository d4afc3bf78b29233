"""LLM-as-judge: a cheap model rates how strong a model the query needs, answering in JSON."""
from __future__ import annotations

import time
from dataclasses import replace

from tierwise.tiers import CHEAPEST, FRONTIER, TIERS

from ..providers import ProviderError, bound
from ..replies import parse_verdict, prompt
from .base import Decision, RouteInput, Strategy, register

PROMPT = (
    "You route user queries to language models of three strengths. Rate how strong a model the user message "
    "needs.\n"
    "tier 1: simple facts, small talk, short rewrites, easy arithmetic.\n"
    "tier 2: multi-step reasoning, ordinary code, explanations that need care.\n"
    "tier 3: hard math or proofs, complex code or system design, expert knowledge, long careful analysis.\n"
    'Answer with JSON only, exactly like {"tier": 2}.'
)


def parse_tier(content: str) -> int:
    """The tier from the judge's reply; ValueError unless the reply is `{"tier": t}` alone, t one of TIERS."""
    return parse_verdict(content, "tier", int, lambda t: t in TIERS)


@register("judge")
class JudgeStrategy(Strategy):
    name = "judge"
    pays_to_decide = True  # its model's call, whether or not the reply holds a verdict

    def __init__(self, strategies):
        cfg = strategies.deps["config"].judge
        self.tier = cfg.tier
        self.prices = strategies.deps["config"].tiers[cfg.tier]
        self.chain = strategies.deps["chains"][cfg.tier]
        self.timeout_s = cfg.timeout_ms / 1000
        self.bias = cfg.bias
        self.fallback = strategies.get(cfg.fallback)

    async def decide(self, request: RouteInput) -> Decision:
        deadline = time.monotonic() + self.timeout_s
        if request.deadline is not None:
            deadline = min(deadline, request.deadline)
        cost = 0.0
        if self.tier > request.max_tier:  # a key that must never pay for this tier does not pay for its verdict
            why = f"judge not asked: its tier {self.tier} is above the API key's max_tier {request.max_tier}"
            return (await self.fallback.decide(request)).degrade(self.name, why)
        try:
            reply = await self.chain.complete(
                prompt(PROMPT, user_message=request.query), max_tokens=16, temperature=0.0, deadline=deadline,
                on_attempt=bound(request.on_attempt, self.tier, "judge"))
            cost = self.prices.answer_cost(reply)  # billed whether or not the reply holds a verdict
            verdict = parse_tier(reply.content)
        except (ProviderError, ValueError) as err:
            why = f"judge failed ({type(err).__name__})"
            fallen = (await self.fallback.decide(request)).degrade(self.name, why)
            return replace(fallen, cost_usd=fallen.cost_usd + cost, cost_tier=self.tier) if cost else fallen
        tier = min(FRONTIER, max(CHEAPEST, verdict + self.bias))
        bias = f" {'+' if self.bias > 0 else '-'} bias {abs(self.bias)}" if self.bias else ""
        return Decision(tier=tier, strategy=self.name, reason=f"{reply.model} rated tier {verdict}{bias}",
                        cost_usd=cost, cost_tier=self.tier)
