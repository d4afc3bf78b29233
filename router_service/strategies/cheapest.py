"""Always tier 1: the start of a classic cascade (`cheapest+cascade`), where the gate alone decides when to pay more."""
from __future__ import annotations

from tierwise.tiers import CHEAPEST

from .base import Decision, RouteInput, Strategy, register


@register("cheapest")
class CheapestStrategy(Strategy):
    name = "cheapest"

    def __init__(self, strategies=None):
        pass

    async def decide(self, request: RouteInput) -> Decision:
        return Decision(tier=CHEAPEST, strategy=self.name, reason="always the cheapest tier first")
