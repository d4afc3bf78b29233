"""Ask the classifier service; its head's calibrated tradeoff decides. Degrades to the heuristic."""
from __future__ import annotations

import time

import grpc

from .base import Decision, RouteInput, Strategy, register


@register("embedding")
class EmbeddingStrategy(Strategy):
    name = "embedding"

    def __init__(self, strategies):
        self.classifier = strategies.deps["classifier"]
        self.fallback = strategies.get("heuristic")
        self.head = strategies.deps["config"].classifier.head
        self.lineup_head = strategies.deps.get("lineup_head")  # finds the lineup's head when `head` is ""

    async def decide(self, request: RouteInput) -> Decision:
        left = None if request.deadline is None else max(request.deadline - time.monotonic(), 0.001)
        try:
            head = request.head or self.head or (self.lineup_head.name if self.lineup_head else "")
            reply = await self.classifier.classify(request.query, head, left)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("head:"):
                raise
            why = f"classifier {err.code().name.lower()}"
            return (await self.fallback.decide(request)).degrade(self.name, why)
        p = tuple(reply.probabilities)
        reason = ("P(acceptable) by tier " + "/".join(f"{v:.2f}" for v in p) + f" less {reply.tradeoff:.3g} x relative cost "
                  + "/".join(f"{c:.3g}" for c in reply.relative_cost))
        if reply.outside_support:
            reason = (f"query unlike the head's training queries (support margin {reply.support_margin:.2f}), "
                      f"so tier 3; {reason}")
        return Decision(tier=reply.tier, strategy=self.name, probabilities=p, head_version=reply.head_version,
                        thresholds=(reply.tradeoff,), reason=reason)
