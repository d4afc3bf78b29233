"""The seed's surface rules: length, reasoning keywords, code, and how many questions are asked."""
from __future__ import annotations

import re

from .base import Decision, RouteInput, Strategy, register

REASONING = re.compile(
    r"\b(prove|proof|derive|theorem|step[- ]by[- ]step|analy[sz]e|optimi[sz]e|architecture|design a|"
    r"trade-?offs?|complexity|algorithm|rigorous|formal|compare and contrast|debug)\b", re.I)
CODE = re.compile(r"```|\bdef \w+\(|\bclass \w+|\bfunction\b|#include|\bSELECT\b.+\bFROM\b|=>|;\s*$", re.I | re.M)


def heuristic_score(query: str) -> tuple[int, list[str]]:
    """Points toward a stronger tier, with the rules that fired."""
    words = len(query.split())
    fired: list[str] = []
    if words > 400:
        fired.append(f"long ({words} words)")
    if words > 150:
        fired.append("over 150 words")
    if CODE.search(query):
        fired.append("code")
    keywords = {m.group(0).lower() for m in REASONING.finditer(query)}
    fired.extend(f"keyword '{k}'" for k in sorted(keywords)[:2])
    if query.count("?") >= 2:
        fired.append(f"{query.count('?')} questions")
    return len(fired), fired


@register("heuristic")
class HeuristicStrategy(Strategy):
    name = "heuristic"

    def __init__(self, strategies=None):
        pass

    async def decide(self, request: RouteInput) -> Decision:
        return self.decide_now(request.query)

    def decide_now(self, query: str) -> Decision:
        score, fired = heuristic_score(query)
        tier = 1 if score == 0 else 2 if score <= 2 else 3
        return Decision(tier=tier, strategy=self.name,
                        reason=f"score {score}: " + (", ".join(fired) if fired else "short plain question"))
