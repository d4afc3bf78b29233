"""One labelled record: every tier's answer to a request, tiers 1 and 2 scored by a judge against tier 3.

Shared by `tierwise label` (queries from a file) and the shadow's label mode (sampled live traffic), so
both write the same routing-data format (`../shared/data/README.md`) that `tierwise train` and
`tierwise eval` read.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Awaitable, Callable, Mapping

from tierwise.tiers import TIERS

from .config import RouterConfig
from .dispatch import Messages
from .providers import Completion, TierChain
from .replies import parse_verdict, prompt

JUDGE = (
    "You grade an answer against a reference answer to the same user message. Score how correct and "
    "complete the answer is compared with the reference answer, from 0 (wrong or useless) to 1 (as good). "
    'Reply with JSON only, exactly like {"score": 0.8}.'
)


class Tab:
    """What the provider calls made for one record cost so far, paid whether or not the record is finished."""

    def __init__(self) -> None:
        self.usd = 0.0

    def add(self, usd: float) -> float:
        self.usd += usd
        return usd


def record_id(source: str, query: str) -> str:
    return f"{source}/{hashlib.sha256(query.encode()).hexdigest()[:16]}"


class Labeler:
    """`before_call` runs before every provider call (the label tool's rate limit)."""

    def __init__(self, cfg: RouterConfig, chains: Mapping[int, TierChain], judge_tier: int, timeout_s: float,
                 before_call: Callable[[], Awaitable[None]] | None = None):
        self.cfg = cfg
        self.chains = chains
        self.judge_tier = judge_tier
        self.timeout_s = timeout_s
        self.before_call = before_call

    async def ask(self, tier: int, messages: Messages, tab: Tab, **options) -> Completion:
        """Tier `tier`'s answer, its cost added to `tab`."""
        if self.before_call is not None:
            await self.before_call()
        answer = await self.chains[tier].complete(messages, deadline=time.monotonic() + self.timeout_s, **options)
        tab.add(self.cfg.tiers[tier].answer_cost(answer))
        return answer

    async def record(self, query: str, *, record_id: str, source: str, task: str, messages: Messages | None = None,
                     known: dict[int, Completion] | None = None, tab: Tab | None = None, **options) -> dict:
        """`messages` defaults to the query as one user message; `known` holds answers already paid for,
        which are reused rather than asked again, and gets each answer paid for here, so that a retry of a record
        that failed part way pays only for what is missing. `tab` adds up what this record's calls cost as they
        return, so that a record that fails part way is still paid for. ValueError when tier 3 gave no text to
        grade against (refused, filtered, or cut before any)."""
        messages = messages or [{"role": "user", "content": query}]
        known = known if known is not None else {}
        tab = tab if tab is not None else Tab()

        async def answer(tier: int) -> Completion:
            if tier not in known:
                known[tier] = await self.ask(tier, messages, tab, **options)
            return known[tier]

        # Every tier's call runs to its end before a failure is raised: one that fails fast (an open breaker) must
        # not leave the others to be billed after the tab was charged.
        answers = await asyncio.gather(*(answer(t) for t in TIERS), return_exceptions=True)
        if failed := next((a for a in answers if isinstance(a, BaseException)), None):
            raise failed
        reference = answers[-1].content
        if not reference.strip():
            raise ValueError(f"tier 3's answer has no text (finish_reason {answers[-1].finish_reason!r}): nothing "
                             "to grade the other tiers against")
        verdicts = [await self.grade(query, a.content, reference, tab) if a.content.strip() else (0.0, 0.0)
                    for a in answers[:-1]]
        scores = [score for score, _ in verdicts] + [1.0]
        # The lineup is the tiers' first models, even when a fallback answered: a head trained on these records
        # learns what each tier's chain delivers, and the router finds it by that lineup (docs/decisions/0015).
        return {"id": record_id, "source": source, "task": task, "query": query,
                "lineup": list(self.cfg.lineup()),
                "outcomes": [{"tier": t, "model": a.model, "score": s,
                              "cost_usd": self.cfg.tiers[t].answer_cost(a),
                              "cost_estimated": a.usage_estimated, "response": a.content}
                             for t, a, s in zip(TIERS, answers, scores)],
                "judge_cost_usd": sum(cost for _, cost in verdicts)}

    async def grade(self, query: str, answer: str, reference: str, tab: Tab) -> tuple[float, float]:
        """(score in [0, 1], what the judge's calls cost). A reply that is no verdict is asked once more before
        it fails the record: the answers graded are paid for, and dearer than a judge's call."""
        cost = 0.0
        for attempt in (1, 2):
            verdict = await self.ask(self.judge_tier,
                                     prompt(JUDGE, user_message=query, reference_answer=reference, answer=answer),
                                     tab, temperature=0.0)
            cost += self.cfg.tiers[self.judge_tier].answer_cost(verdict)
            try:
                return float(parse_verdict(verdict.content, "score", (int, float), lambda v: 0 <= v <= 1)), cost
            except ValueError:
                if attempt == 2:
                    raise
