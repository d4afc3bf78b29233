"""Cascade: start cheap (at the tier another strategy picks), gate each answer, escalate on failure.

Route returns the starting tier; Complete runs the gate loop (see dispatch.py). `X+cascade` starts at
strategy X's tier; plain `cascade` starts where the configured `cascade.start` strategy says.
"""
from __future__ import annotations

from dataclasses import replace

from ..gates import gate
from .base import Decision, RouteInput, Strategy, register


@register("cascade")
class CascadeStrategy(Strategy):
    name = "cascade"
    composable = True

    def __init__(self, strategies, start: str | None = None):
        cfg = strategies.deps["config"].cascade
        self.start_name = start or cfg.start
        self.start = strategies.get(self.start_name)
        self.pays_to_decide = self.start.pays_to_decide  # Route returns the start's decision
        self.gate = gate(cfg.gate, strategies.deps)
        self.max_tier = cfg.max_tier
        self.start_tradeoff = cfg.start_tradeoff
        self.label = f"{start}+cascade" if start else self.name

    async def decide(self, request: RouteInput) -> Decision:
        # A caller's quality target outranks the configured start, which was calibrated for the default target.
        start = self.start_tradeoff if request.quality_target is None else None
        first = await self.start.decide(replace(request, tradeoff=start))
        held = f", held at tier {self.max_tier} by cascade.max_tier" if first.tier > self.max_tier else ""
        return replace(first, tier=min(first.tier, self.max_tier), strategy=self.label,
                       reason=f"start at tier {first.tier} ({self.start_name}: {first.reason}){held}; "
                              f"escalate while the {self.gate.name} gate rejects, up to tier {self.max_tier}")
