"""Choose a head's tradeoff for a quality target at the least cost, with a confidence bound.

Quality vs frontier is a ratio estimated from a finite sample; a tradeoff picked on the point estimate
misses the target on new traffic about half the time. We keep only tradeoffs whose *lower* bootstrap
bound meets the target, then take the cheapest of those. The bound is for a window of `window` new
queries, not for the long-run mean: quality measured over a few hundred queries varies with the
sample too, so the bootstrap draws samples of the size whose variance is the calibration set's plus
the window's (1/m = 1/n + 1/window).

A head's tradeoffs are tested as a fixed sequence (Learn-then-Test), from always tier 3 towards the
cheapest, and the search ends at the first tradeoff whose bound misses the target: the chance that the
chosen tradeoff misses the target is then at most 1 - confidence however many tradeoffs are tried, where
taking the cheapest of hundreds that each pass on their own is not covered by any level. At the
target's own risk (the target holds in 90% of label samples) this ships more than a 95% bound per
tradeoff and misses no more often (decision 0022).
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from classifier_service.heads import decide
from tierwise.data import Record, arrays, check_measurable, repeats
from tierwise.metrics import grouped_weights, resampled_quality_vs_frontier
from tierwise.tiers import FRONTIER

# 0 routes to the likeliest tier; past ~1/min(cost gap) every query goes to tier 1. A negative tradeoff pays
# for the dearer tier unless a cheaper one is likelier by a margin: between 0 and about -1/(tier 3's cost gap)
# lie the operating points between "likeliest tier" and "always tier 3" (decision 0019: without them a lineup
# whose tiers 2 and 3 are close had nothing between a point that missed the bound and no savings at all).
# A large negative tradeoff sends every query to tier 3, the fallback when nothing else is safe.
ALWAYS_TIER_3 = -1e3
TRADEOFFS = np.concatenate([-np.geomspace(1e-3, 3.0, 60)[::-1], [0.0], np.geomspace(1e-3, 1e2, 201)])


WINDOW = 500
CONFIDENCE = 0.90  # of a head's tradeoff, tested as a fixed sequence (decision 0022)


def calibrate(records: list[Record], probabilities: np.ndarray, relative_cost, target: float,
              confidence: float = CONFIDENCE, window: int = WINDOW, resamples: int = 300,
              seed: int = 0) -> tuple[float, dict]:
    """(tradeoff, facts) for `target` quality vs frontier on `window` new queries at `confidence`;
    falls back to always tier 3. Calibrated without the support check: the check is a safety net on top,
    not quality headroom for the tradeoff to spend (decision 0008)."""
    check_measurable(records, "calibration records")
    return calibrate_arrays(*arrays(records), probabilities, relative_cost, target, confidence, window, resamples, seed,
                            repeats(records))


def calibrate_arrays(ok: np.ndarray, cost: np.ndarray, probabilities: np.ndarray, relative_cost, target: float,
                     confidence: float = CONFIDENCE, window: int = WINDOW, resamples: int = 300,
                     seed: int = 0, groups: np.ndarray | None = None) -> tuple[float, dict]:
    """`calibrate` on the records' acceptable-answer (n, 3) and cost (n, 3) matrices (decision 0022 scores
    calibrations on cached matrices through this very code)."""
    # A tradeoff that sends every query to tier 3 anyway saves nothing: it is the fallback, and is said to be.
    candidates = ((float(t), tiers) for t in TRADEOFFS
                  for tiers in [decide(probabilities, relative_cost, t)] if (tiers != FRONTIER).any())
    tradeoff, facts = meeting(ok, cost, candidates, target, ALWAYS_TIER_3, confidence, window, resamples, seed,
                              sequential=True, groups=groups)
    return tradeoff, facts if tradeoff != ALWAYS_TIER_3 else {"fallback": "no tradeoff met the bound: always tier 3"}


def cheapest_meeting(records: list[Record], candidates: Iterable[tuple], target: float,
                     fallback: Any, confidence: float = 0.95, window: int = WINDOW, resamples: int = 300,
                     seed: int = 0) -> tuple[Any, dict]:
    """(setting, facts) of the cheapest candidate whose lower bootstrap bound of quality vs frontier meets
    `target`; (`fallback`, why) when none does. A candidate is (setting, final tier per record), paying that
    tier's cost, or (setting, final tier, paid per record) for a cascade, which pays every tier it tried."""
    check_measurable(records, "calibration records")
    return meeting(*arrays(records), candidates, target, fallback, confidence, window, resamples, seed,
                   groups=repeats(records))


def meeting(ok: np.ndarray, cost: np.ndarray, candidates: Iterable[tuple], target: float, fallback: Any,
            confidence: float = 0.95, window: int = WINDOW, resamples: int = 300, seed: int = 0,
            sequential: bool = False, groups: np.ndarray | None = None) -> tuple[Any, dict]:
    """`cheapest_meeting` on the acceptable-answer and cost matrices. `sequential`: the candidates come from
    the most conservative to the cheapest, and the first whose bound misses the target ends the search. `groups`
    (see `repeats`): rows resampled together, each group counting once towards the sample's size."""
    rows = np.arange(len(ok))
    weights = grouped_weights(len(ok), groups, resamples, seed, window)
    frontier = weights @ ok[:, 2]
    best, best_cost, best_facts = fallback, float("inf"), {}
    for setting, tiers, *paid in candidates:
        chosen_cost = paid[0].sum() if paid else cost[rows, tiers - 1].sum()
        if chosen_cost >= best_cost and not sequential:
            continue
        quality = resampled_quality_vs_frontier(weights, ok[rows, tiers - 1], frontier)
        lower = float(np.quantile(quality, 1 - confidence))
        if lower < target and sequential:
            break
        if lower >= target and chosen_cost < best_cost:
            best, best_cost = setting, chosen_cost
            best_facts = {"quality_vs_frontier_lower_bound": lower,
                          "quality_vs_frontier": float(ok[rows, tiers - 1].mean() / ok[:, 2].mean()),
                          "cost_savings": float(1 - chosen_cost / cost[:, 2].sum())}
    return best, best_facts or {"fallback": "no candidate met the bound"}
