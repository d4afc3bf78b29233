"""`tierwise costs`: the monthly cost table at the configured prices (always tier 1, always tier 3, and
each routing mix given), the seed's way of showing what routing saves."""
from __future__ import annotations

import json
import math
from pathlib import Path

from router_service.config import RouterConfig
from tierwise.tiers import N_TIERS, TIERS

from .evaluate import AS_ROUTED


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
    return len(parts) == N_TIERS and all(_share(p) for p in parts) and abs(sum(parts) - total) <= 1e-6 * total


def _share(part) -> bool:
    return type(part) in (int, float) and math.isfinite(part) and part >= 0


# (label, final tier mix, what is paid for: each tier's share of queries paying it, or a share of always tier 3)
Priced = tuple[str, tuple[float, float, float], "tuple[float, ...] | float"]


def from_eval(path: Path) -> Priced:
    """(label, final tier mix, what is paid for): the share of queries that paid each tier, priced at the configured
    prices (beyond the final tier for a cascade); the share of always tier 3's cost it paid at the records' own
    prices where eval knows only that (the router's recorded decisions); else the final tier mix."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"--from-eval {path}: not JSON ({type(err).__name__})") from None
    if not (isinstance(result, dict) and isinstance(result.get("strategy"), str) and "operating_point" in result):
        raise ValueError(f"--from-eval {path}: not what `tierwise eval --json` prints (a strategy and an "
                         "operating_point)")
    op = result["operating_point"]
    if op is None:
        raise ValueError(f"--from-eval {path}: eval could not replay {result['strategy']} on its records, so there "
                         "is no tier mix to cost")
    if not (isinstance(op, dict) and isinstance(op.get("tier_mix"), list) and _shares(op["tier_mix"], 1.0)):
        raise ValueError(f"--from-eval {path}: operating_point.tier_mix must be three shares adding up to 1")
    label = f"{result['strategy']} (eval: {Path(path).name})"
    if (paid := op.get("paid_mix")) is not None:  # a cascade pays every tier it tried: its final mix would understate
        if not (isinstance(paid, list) and len(paid) == N_TIERS and all(_share(p) and p <= 1 for p in paid)):
            raise ValueError(f"--from-eval {path}: operating_point.paid_mix must be three shares from 0 to 1")
        return label, tuple(op["tier_mix"]), tuple(paid)
    if result["strategy"] == AS_ROUTED or result["strategy"].endswith("cascade"):
        # What each query paid is known, not which tiers (the router's records, or an eval from before paid_mix):
        # the share of always tier 3 it paid, at the records' own prices.
        saved = op.get("cost_savings")
        if not (type(saved) in (int, float) and math.isfinite(saved) and saved <= 1):
            raise ValueError(f"--from-eval {path}: operating_point.cost_savings must be a number no more than 1")
        return f"{label}, at the records' own prices", tuple(op["tier_mix"]), 1 - saved
    return label, tuple(op["tier_mix"]), tuple(op["tier_mix"])


def table(cfg: RouterConfig, queries_per_month: int, rows: list[Priced], input_tokens: int,
          output_tokens: int) -> str:
    frontier = per_query(cfg, (0, 0, 1), input_tokens, output_tokens)
    lines = [f"Monthly cost for {queries_per_month:,} queries ({input_tokens} input + {output_tokens} output "
             "tokens each, configured prices)", "",
             "| routing | tier mix (1/2/3) | per query | per month | saved vs always tier 3 |", "|---|---|---|---|---|"]
    for label, mix, paid in [("always tier 1", (1, 0, 0), (1, 0, 0)), ("always tier 3", (0, 0, 1), (0, 0, 1)), *rows]:
        cost = per_query(cfg, paid, input_tokens, output_tokens) if isinstance(paid, tuple) else frontier * paid
        saved = f"{1 - cost / frontier:.1%}" if frontier else "undefined (tier 3 costs nothing at these sizes)"
        lines.append(f"| {label} | {' / '.join(f'{m:.0%}' for m in mix)} | ${cost:.6f} | "
                     f"${cost * queries_per_month:,.2f} | {saved} |")
    return "\n".join(lines) + "\n"
