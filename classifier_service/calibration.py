"""Choose a head's thresholds for a quality target at the least cost, with a confidence bound.

Quality vs frontier is a ratio estimated from a finite sample; thresholds picked on the point estimate
miss the target on new traffic about half the time. We keep only thresholds whose *lower* bootstrap
confidence bound meets the target, then take the cheapest of those.
"""
from __future__ import annotations

import numpy as np

from tierwise.data import Record, arrays

from .heads import decide

GRID = np.round(np.linspace(0.0, 1.0, 41), 3)


def calibrate(records: list[Record], probabilities: np.ndarray, target: float, confidence: float = 0.95,
              resamples: int = 300, seed: int = 0) -> tuple[tuple[float, float], dict]:
    """(thresholds, facts) for `target` quality vs frontier at `confidence`; falls back to always tier 3."""
    ok, cost = arrays(records)
    rows = np.arange(len(records))
    # Poisson(1) weights: a bootstrap that vectorises over all resamples at once.
    weights = np.random.default_rng(seed).poisson(1.0, size=(resamples, len(records))).astype(np.float64)
    frontier = weights @ ok[:, 2]
    best, best_cost, best_facts = (0.0, 0.0), float("inf"), {}
    for escalate_2 in GRID:
        for escalate_3 in GRID:
            tiers = decide(probabilities, (escalate_2, escalate_3))
            chosen_cost = cost[rows, tiers - 1].sum()
            if chosen_cost >= best_cost:
                continue
            quality = (weights @ ok[rows, tiers - 1]) / np.maximum(frontier, 1e-12)
            lower = float(np.quantile(quality, 1 - confidence))
            if lower >= target:
                best, best_cost = (float(escalate_2), float(escalate_3)), chosen_cost
                best_facts = {"quality_vs_frontier_lower_bound": lower,
                              "quality_vs_frontier": float(ok[rows, tiers - 1].mean() / ok[:, 2].mean()),
                              "cost_savings": float(1 - chosen_cost / cost[:, 2].sum())}
    return best, best_facts or {"fallback": "no thresholds met the bound: always tier 3"}
