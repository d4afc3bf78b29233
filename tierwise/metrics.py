"""Routing metrics as defined in ../shared/data/README.md, for routers that pick one tier per query."""
from __future__ import annotations

import numpy as np

from .data import Record, arrays


def routing_metrics(records: list[Record], tiers: np.ndarray) -> dict[str, float]:
    """accuracy, quality_preserved, cost_savings, answer_quality, quality_vs_frontier, tier_mix."""
    tiers = np.asarray(tiers, dtype=int)
    ok, cost = arrays(records)
    oracle = np.array([r.oracle_tier for r in records])
    rows = np.arange(len(records))
    frontier_quality = ok[:, 2].mean()
    answer_quality = ok[rows, tiers - 1].mean()
    return {
        "accuracy": float((tiers == oracle).mean()),
        "quality_preserved": float((tiers >= oracle).mean()),
        "cost_savings": float(1 - cost[rows, tiers - 1].sum() / cost[:, 2].sum()),
        "answer_quality": float(answer_quality),
        "quality_vs_frontier": float(answer_quality / frontier_quality) if frontier_quality else float("nan"),
        "tier_mix": [float((tiers == t).mean()) for t in (1, 2, 3)],
    }
