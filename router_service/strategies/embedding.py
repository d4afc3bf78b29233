"""Ask the classifier service; its head's calibrated tradeoff decides. Degrades to the heuristic."""
from __future__ import annotations

import time

import grpc

from tierwise.tiers import FRONTIER

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
        named = request.head or self.head
        found = "" if named or self.lineup_head is None else self.lineup_head.name
        try:
            try:
                reply = await self._classify(request, named or found)
            except grpc.aio.AioRpcError as err:
                if not (found and _unknown_head(err)):
                    raise
                # The lineup's head left the classifier (a reload removed it) before the router looked again.
                self.lineup_head.name = ""
                reply = await self._classify(request, "")
        except grpc.aio.AioRpcError as err:
            if (_unknown_head(err) and request.head) or _refused(err, "quality_target"):
                raise  # the caller's own head or target: theirs to fix
            # A head the config names and the classifier does not serve is the deployment's to fix: every caller
            # refused for it would retry in vain.
            why = (f"the classifier serves no head {named!r} (classifier.head)" if _unknown_head(err)
                   else f"classifier {err.code().name.lower()}")
            return (await self.fallback.decide(request)).degrade(self.name, why)
        p = tuple(reply.probabilities)
        reason = ("P(acceptable) by tier " + "/".join(f"{v:.2f}" for v in p) + f" less {reply.tradeoff:.3g} x relative cost "
                  + "/".join(f"{c:.3g}" for c in reply.relative_cost))
        if request.quality_target is not None:
            kept = round(reply.quality_target, 6)
            reason += (f", the tradeoff calibrated for quality {kept:g} of the frontier"
                       + ("" if kept == request.quality_target else f" (asked {request.quality_target:g})"))
        if reply.outside_support:
            reason = (f"query unlike the head's training queries (support margin {reply.support_margin:.2f}), "
                      f"so tier {FRONTIER}; {reason}")
        return Decision(tier=reply.tier, strategy=self.name, probabilities=p, head_version=reply.head_version,
                        thresholds=(reply.tradeoff,), reason=reason)

    async def _classify(self, request: RouteInput, head: str):
        # A tenth of the caller's time (2 ms at least) is kept for falling back, or a classifier slower than the
        # caller's deadline fails the call that classifier.timeout_ms says should degrade.
        left = None if request.deadline is None else max(0.9 * (request.deadline - time.monotonic()) - 0.002, 0.001)
        return await self.classifier.classify(request.query, head, left, request.tradeoff, request.quality_target)


def _unknown_head(err: grpc.aio.AioRpcError) -> bool:
    return _refused(err, "head")


def _refused(err: grpc.aio.AioRpcError, field: str) -> bool:
    """Whether the classifier refused the request's `field`: the caller's to hear, not a reason to degrade."""
    return err.code() == grpc.StatusCode.INVALID_ARGUMENT and (err.details() or "").startswith(field + ":")
