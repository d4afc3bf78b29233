"""The tier lineup every layer shares: 1 cheap, 2 mid, 3 frontier. Defined once; everything else derives from it."""
from __future__ import annotations

TIERS = (1, 2, 3)
N_TIERS = len(TIERS)
CHEAPEST = TIERS[0]
FRONTIER = TIERS[-1]


def tier_list() -> str:
    """The tiers as prose, for error messages: "1, 2 or 3"."""
    return f"{', '.join(map(str, TIERS[:-1]))} or {FRONTIER}"
