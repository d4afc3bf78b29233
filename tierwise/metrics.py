"""Routing metrics as defined in ../shared/data/README.md.

A router's outcome on a set of records is its final tier per record and what it paid per record (a
cascade pays every tier it tried; a one-shot router pays the final tier only).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .data import Record, arrays, repeats
from .tiers import TIERS

QUALITY_TARGETS = (0.9, 0.95, 0.99)


def quality_target(value: float) -> float:
    """`value` as a quality vs frontier target, to 6 digits (a float32 field's 0.95 reads 0.949999988); ValueError
    saying why unless it is in (0, 1]."""
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"must be above 0 and at most 1 (a share of tier 3's quality), not {value:g}")
    return max(round(float(value), 6), 1e-6)  # a target too small for 6 digits is the smallest they hold


def routing_metrics(records: list[Record], tiers: np.ndarray, paid: np.ndarray | None = None) -> dict:
    """accuracy, quality_preserved, cost_savings, answer_quality, quality_vs_frontier, tier_mix."""
    tiers = np.asarray(tiers, dtype=int)
    ok, cost = arrays(records)
    oracle = np.array([r.oracle_tier for r in records])
    rows = np.arange(len(records))
    spent = cost[rows, tiers - 1] if paid is None else np.asarray(paid, dtype=float)
    frontier_quality = ok[:, 2].mean()
    answer_quality = ok[rows, tiers - 1].mean()
    return {
        "accuracy": float((tiers == oracle).mean()),
        "quality_preserved": float((tiers >= oracle).mean()),
        "cost_savings": float(1 - spent.sum() / cost[:, 2].sum()),
        "answer_quality": float(answer_quality),
        "quality_vs_frontier": float(answer_quality / frontier_quality) if frontier_quality else float("nan"),
        "tier_mix": [float((tiers == t).mean()) for t in TIERS],
    }


def poisson_weights(n: int, sample: float, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) bootstrap weights of expected sample size `sample`; Poisson weights let every
    resample be computed at once as a matrix product."""
    return np.random.default_rng(seed).poisson(sample / n, size=(resamples, n)).astype(np.float64)


def grouped_weights(rows: int, groups: np.ndarray | None, resamples: int, seed: int = 0,
                    window: int = 0) -> np.ndarray:
    """(resamples, rows) bootstrap weights in which the rows of one group (data.repeats: one id's records) are one
    observation, drawn together; each group counts once towards the sample's size, which a `window` of that many
    new queries widens (1 / (1/n + 1/window): the gap between the labels' estimate and the window's own quality)."""
    n = rows if groups is None else int(groups.max()) + 1
    sample = 1.0 / (1.0 / n + 1.0 / window) if window else n
    weights = poisson_weights(n, sample, resamples, seed)
    return weights if groups is None else weights[:, groups]


def resampled_quality_vs_frontier(weights: np.ndarray, chosen_ok: np.ndarray, frontier_solved: np.ndarray) -> np.ndarray:
    """Quality vs frontier in each resample; `frontier_solved` is `weights @ (tier 3 acceptable)`, computed once
    per set of weights. A resample in which tier 3 solved nothing says nothing about the ratio: it counts as
    0, a miss."""
    return np.where(frontier_solved > 0, (weights @ chosen_ok) / np.maximum(frontier_solved, 1e-12), 0.0)


def quality_bounds(records: list[Record], tiers: np.ndarray, resamples: int = 1000,
                   level: float = 0.95) -> tuple[float, float]:
    """One-sided `level` bootstrap bounds (lower, upper) of quality vs frontier when `records` are routed to `tiers`:
    how low, and how high, the quality of the traffic they sample may really be. Records sharing an id are one
    observation (data.repeats): the same labels given twice are no more evidence than once."""
    ok = arrays(records)[0].astype(np.float64)
    tiers = np.asarray(tiers, dtype=int)
    weights = grouped_weights(len(records), repeats(records), resamples)
    quality = resampled_quality_vs_frontier(weights, ok[np.arange(len(records)), tiers - 1], weights @ ok[:, 2])
    low, high = np.quantile(quality, [1 - level, level])
    return float(low), float(high)


def savings_at_quality(points: Iterable[tuple[float, float]], target: float) -> float | None:
    """Largest cost savings among (quality_vs_frontier, cost_savings) points meeting `target`; None if none does."""
    meeting = [savings for quality, savings in points if quality >= target - 1e-12]
    return max(meeting) if meeting else None


def aiq(points: Iterable[tuple[float, float]]) -> float:
    """RouterBench's AIQ: area under the non-decreasing upper convex hull of quality over cost, divided by
    the cost range covered. Points are (cost, quality) with cost as a fraction of always-frontier."""
    pts = sorted(set(points))
    if len(pts) == 1:
        return pts[0][1]
    hull: list[tuple[float, float]] = []
    for p in pts:  # upper hull, left to right (monotone chain)
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    xs = np.array([h[0] for h in hull])
    ys = np.maximum.accumulate(np.array([h[1] for h in hull]))
    width = xs[-1] - xs[0]
    return float(np.trapezoid(ys, xs) / width) if width > 0 else float(ys.max())


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
