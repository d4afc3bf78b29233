"""Strategies that always name one tier: `cheapest` (tier 1), the start of a classic cascade (`cheapest+cascade`)
where the gate alone decides when to pay more; and `tier1`, `tier2`, `tier3`, for callers (or the HTTP API's model
names) that ask for a tier outright. Failover still climbs when every provider of the tier fails."""
from __future__ import annotations

from tierwise.tiers import CHEAPEST, TIERS

from .base import Decision, RouteInput, Strategy, register


class FixedTier(Strategy):
    tier: int
    reason: str
    pinned = True

    def __init__(self, strategies=None):
        pass

    async def decide(self, request: RouteInput) -> Decision:
        return Decision(tier=self.tier, strategy=self.name, reason=self.reason)


def _fixed(name: str, tier: int, reason: str) -> type[FixedTier]:
    return register(name)(type(f"Tier{tier}Strategy", (FixedTier,), {"name": name, "tier": tier, "reason": reason}))


_fixed("cheapest", CHEAPEST, "always the cheapest tier first")
for _tier in TIERS:
    _fixed(f"tier{_tier}", _tier, f"always tier {_tier}")
