"""What the shipped heads already know, as a prior for a head trained on few labels of a new lineup.

Each prior head's per-tier logit (x . w + b) is a feature beside the embedding: a new lineup's model learns how
much of each prior tier model to trust and only a correction in the embedding, which is scaled down so that
regularisation keeps it small unless the labels pay for it. Both parts are linear in the embedding, so the
result folds back into one ordinary head (coef, intercept): the classifier serves it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier_service.heads import Support, TierHead


@dataclass(frozen=True)
class Prior:
    weights: np.ndarray  # (k, d): every prior head's per-tier weights, stacked
    biases: np.ndarray  # (k,)
    names: tuple[str, ...]  # the heads they came from

    @classmethod
    def from_heads(cls, heads: list[TierHead]) -> "Prior | None":
        if not heads:
            return None
        return cls(np.vstack([h.coef for h in heads]).astype(np.float64),
                   np.concatenate([h.intercept for h in heads]).astype(np.float64), tuple(h.name for h in heads))

    def features(self, x: np.ndarray, scale: float) -> np.ndarray:
        """The prior logits, then the embedding scaled by `scale` (the correction's share of the penalty)."""
        return np.hstack([x @ self.weights.T + self.biases, scale * x])

    def fold(self, coef: np.ndarray, intercept: float, scale: float) -> tuple[np.ndarray, float]:
        """A model fitted on `features` as one linear model of the embedding: (weights (d,), bias)."""
        k = len(self.biases)
        return coef[:k] @ self.weights + scale * coef[k:], intercept + float(coef[:k] @ self.biases)


def usable(heads: list[TierHead], dimension: int, lineup: tuple[str, ...]) -> list[TierHead]:
    """The heads that can serve as a prior for a head of `lineup`: same embedding size, and none trained on records
    of this very lineup, alone or pooled with others. Such a head has likely seen the records it would be a prior
    for, so its logits would leak their outcomes into the out-of-fold predictions that choose and calibrate the new
    head: `make train` built the shipped lineups' heads on the pooled default that way, and they kept 0.91-0.94 of
    the frontier's quality on held-out records against a target of 0.95."""
    return [h for h in heads if h.dimension == dimension
            and (not lineup or (h.models != lineup and lineup not in h.trained_on))]


def joined_support(own: Support, heads: list[TierHead]) -> Support:
    """`own` and the supports of `heads`: a query near the user's traffic or near what a prior head was trained on
    is one the head's probabilities speak for."""
    parts = [own, *(h.support for h in heads if h.support is not None)]
    return Support(np.vstack([p.centroids for p in parts]), np.concatenate([p.bars for p in parts]))
