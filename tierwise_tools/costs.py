"""`tierwise costs`: the monthly cost table at the configured prices (always tier 1, always tier 3, and
each routing mix given), the seed's way of showing what routing saves."""
from __future__ import annotations

import json
import math
from pathlib import Path

from router_service.config import RouterConfig
from tierwise.tiers import N_TIERS, TIERS


def per_query(cfg: RouterConfig, mix: tuple[float, float, float], input_tokens: int, output_tokens: int) -> float:
    return sum(share * cfg.tiers[tier].cost(input_tokens, output_tokens) for tier, share in zip(TIERS, mix))


def parse_mix(text: str) -> tuple[float, float, float]:
    """'60/25/15' -> (0.6, 0.25, 0.15); the three shares must add up to 100."""
    try:
        parts = [float(p) for p in text.split("/")]
    except ValueError:
        raise ValueError(f"--mix: {text!r} is not three numbers like 60/25/15") from None
    if not _shares(parts, 100):
        raise ValueError(f"--mix: {text!r} must be three non-negative shares adding up to 100")
    return tuple(p / 100 for p in parts)


def _shares(parts, total: float) -> bool:
    """Whether `parts` are one finite, non-negative share per tier adding up to `total`."""
    return (len(parts) == N_TIERS and all(type(p) in (int, float) and math.isfinite(p) and p >= 0 for p in parts)
            and abs(sum(parts) - total) <= 1e-6 * total)


def from_eval(path: Path) -> tuple[str, tuple[float, float, float], float | None]:
    """(label, tier mix, cost fraction of always-tier-3 if the strategy pays for several tiers)."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"--from-eval {path}: not JSON ({type(err).__name__})") from None
    op = result["operating_point"]
    if op is None:
        raise ValueError(f"--from-eval {path}: eval could not replay {result['strategy']} on its records, so there "
                         "is no tier mix to cost")
    if not _shares(op["tier_mix"], 1.0):
        raise ValueError(f"--from-eval {path}: operating_point.tier_mix must be three shares adding up to 1")
    # A cascade pays for every tier it tried: its tier mix alone would understate the bill.
    fraction = 1 - op["cost_savings"] if result["strategy"].endswith("cascade") else None
    return f"{result['strategy']} (eval: {Path(path).name})", tuple(op["tier_mix"]), fraction


def table(cfg: RouterConfig, queries_per_month: int, rows: list[tuple[str, tuple[float, float, float], float | None]],
          input_tokens: int, output_tokens: int) -> str:
    frontier = per_query(cfg, (0, 0, 1), input_tokens, output_tokens)
    lines = [f"Monthly cost for {queries_per_month:,} queries ({input_tokens} input + {output_tokens} output "
             "tokens each, configured prices)", "",
             "| routing | tier mix (1/2/3) | per query | per month | saved vs always tier 3 |", "|---|---|---|---|---|"]
    for label, mix, fraction in [("always tier 1", (1, 0, 0), None), ("always tier 3", (0, 0, 1), None), *rows]:
        cost = frontier * fraction if fraction is not None else per_query(cfg, mix, input_tokens, output_tokens)
        lines.append(f"| {label} | {' / '.join(f'{m:.0%}' for m in mix)} | ${cost:.6f} | "
                     f"${cost * queries_per_month:,.2f} | {1 - cost / frontier:.1%} |")
    return "\n".join(lines) + "\n"
