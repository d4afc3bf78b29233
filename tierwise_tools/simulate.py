"""`tierwise simulate`: replay a labelled file in order as live traffic, with the shadow labelling a share of it and
the head retrained and promoted from those labels as `tierwise learn` would, and say what the deployment saves.

Each query is routed by the serving head (at first the shipped head for the file's lineup, else the default, as a
router naming no head gets). A shadowed query reveals its recorded outcomes as a label, paid for as the router's
shadow pays: the recorded cost of every tier but the one that served it (the shadow reuses the answer the user
got, decision 0014; that one is in the deployment's own spend) plus two judge calls (tier 1's and tier 2's answer
against tier 3's) at the configured judge tier's price. Retraining points: the schedule (`retraining_points`), and
every DRIFT_CHECK_EVERY labels at which the latest labels since the serving head began serving show that it misses
the target (`drifted`). At each, the labels so far train a candidate (`fit_head`, with the shipped heads as
priors) on their dev part; promote's paired rule on their held-out fifth, which no head ever trains on, decides
whether it replaces the serving head.
"""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from classifier_service.heads import HeadRegistry, TierHead
from router_service.config import RouterConfig
from router_service.tokens import estimate_tokens
from tierwise.atomic import write_atomic
from tierwise.data import Record, arrays
from tierwise.metrics import quality_bounds, routing_metrics
from tierwise.tiers import N_TIERS

from .fitting import MIN_DEV_RECORDS, fit_head, lineup
from .promote import measure, verdict

DRIFT_CHECK_EVERY = 50  # labels between checks that the serving head still meets the target (decision 0024)
DRIFT_WINDOW = 100  # the most recent labels that check looks at
JUDGE_PROMPT_TOKENS = 120  # the judge's instructions around the query and the two answers
JUDGE_OUTPUT_TOKENS = 10
MISSING_ANSWER_TOKENS = 150  # where a record holds no response text (the shared data's convention)


def retraining_points(every: int | None, first: int = 50) -> Callable[[int], bool]:
    """When to retrain, by number of labels: every `every` labels, or by default at 50, 100, 200, 400, ...: the
    learning curve flattens while each retraining costs more (decision 0019)."""
    if every:
        return lambda n: n > 0 and n % every == 0
    return lambda n: n >= first and (n // first) & (n // first - 1) == 0 and n % first == 0


def labelling_cost(record: Record, cfg: RouterConfig, judge_tier: int, served: int) -> float:
    """Every tier's recorded answer but the `served` tier's (already paid, and reused), plus the judge grading tier
    1's and tier 2's answers against tier 3's."""
    def tokens(text: str | None) -> int:
        return MISSING_ANSWER_TOKENS if text is None else estimate_tokens(text)

    reference = tokens(record.responses[-1])
    judge = sum(cfg.tiers[judge_tier].cost(JUDGE_PROMPT_TOKENS + estimate_tokens(record.query) + tokens(answer)
                                           + reference, JUDGE_OUTPUT_TOKENS) for answer in record.responses[:-1])
    return float(sum(c for tier, c in enumerate(record.costs, start=1) if tier != served)) + judge


@dataclass
class Simulation:
    records: list[Record]
    tiers: np.ndarray  # the tier each query was routed to
    shadowed: np.ndarray  # bool: labelled by the shadow
    labelling_usd: np.ndarray  # what labelling each query cost (0 where not shadowed)
    promotions: list[dict] = field(default_factory=list)
    renamed: int = 0  # records counted as the most common lineup's (`one_deployment`)
    budget_spent_at: int | None = None  # the query whose draw the spent budget refused a label (1-based)

    def figures(self, rows: slice) -> dict:
        records, tiers = self.records[rows], self.tiers[rows]
        m = routing_metrics(records, tiers)
        always_3 = arrays(records)[1][:, N_TIERS - 1].sum()
        paid = always_3 * (1 - m["cost_savings"])
        labelling = float(self.labelling_usd[rows].sum())
        return {"n": len(records), "labels": int(self.shadowed[rows].sum()), "cost_savings": _ratio(m["cost_savings"]),
                "quality_vs_frontier": _ratio(m["quality_vs_frontier"]),
                "net_savings": _ratio(1 - (paid + labelling) / always_3 if always_3 > 0 else float("nan")),
                "tier_mix": [round(t, 4) for t in m["tier_mix"]], "labelling_cost_usd": round(labelling, 6)}

    def result(self, window: int) -> dict:
        """Figures per window of `window` queries (a remainder under half a window joins the last one, so the last
        window is never a handful of queries) and over all."""
        starts = list(range(0, len(self.records), window))
        if len(starts) > 1 and len(self.records) - starts[-1] < window / 2:
            starts.pop()
        ends = starts[1:] + [len(self.records)]
        windows = [self.figures(slice(start, end)) for start, end in zip(starts, ends)]
        for w in windows:
            w.pop("labelling_cost_usd")
        total = self.figures(slice(None)) | {"pays_back_after_queries": self.pays_back_after(),
                                              "labelling_stopped_at_query": self.budget_spent_at}
        return {"windows": windows, "total": total, "promotions": self.promotions}

    def pays_back_after(self) -> int | None:
        """The query (counted from 1) from which on the deployment's spend so far, labelling included, stays at or
        under what always tier 3 would have cost; None while it is still over at the end of the replay."""
        cost = arrays(self.records)[1]
        saved = np.cumsum(cost[:, N_TIERS - 1] - cost[np.arange(len(cost)), self.tiers - 1] - self.labelling_usd)
        if not len(saved) or saved[-1] < 0:
            return None
        behind = np.flatnonzero(saved < 0)
        return int(behind[-1]) + 2 if len(behind) else 1


def shadow_draw(record: Record, rate: float, seed: int) -> bool:
    """Whether the shadow labels this query: a uniform draw, reproducible from the record's id and the seed."""
    digest = hashlib.sha256(f"{seed}:{record.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def one_deployment(records: list[Record]) -> tuple[list[Record], int]:
    """A replay is one router's traffic, so one lineup: records that name other models (a fallback provider
    answered, a model version changed mid-file) count as the most common lineup's, or no candidate could learn
    from them all. Returns the records and how many were renamed."""
    counts = Counter(r.models for r in records)
    if len(counts) < 2:
        return records, 0
    models = counts.most_common(1)[0][0]
    return [r if r.models == models else replace(r, models=models) for r in records], len(records) - counts[models]


def _ratio(value: float) -> float | None:
    """A window's ratio, rounded; None where it is undefined (tier 3 solved, or cost, nothing in the window)."""
    return round(value, 4) if np.isfinite(value) else None


def simulate(records: list[Record], x: np.ndarray, registry: HeadRegistry, cfg: RouterConfig, rate: float,
             target: float = 0.95, every: int | None = None, seed: int = 0, budget: float = 0.0) -> Simulation:
    """`registry`: the shipped heads the deployment starts from (and the priors of every retraining). `budget`:
    USD the labelling may spend over the whole replay (0 = no limit); as the router's shadow budget, no label
    starts once it is spent, so the last one may pass it."""
    records, renamed = one_deployment(records)
    priors = list(registry)
    serving: TierHead = registry.for_lineup(lineup(records))
    serving.tradeoff_keeping(target)  # Uncalibrated, before any work, for a target above every calibrated one
    judge_tier = cfg.shadow.judge_tier
    retrain_now = retraining_points(every)
    tiers = np.zeros(len(records), dtype=int)
    drawn = np.array([i for i, r in enumerate(records) if shadow_draw(r, rate, seed)], dtype=int)
    sim = Simulation(records, tiers, np.zeros(len(records), dtype=bool), np.zeros(len(records)), renamed=renamed)

    routed, serving_since, spent = 0, 0, 0.0
    for labels, i in enumerate(drawn, start=1):
        if budget and spent >= budget:
            sim.budget_spent_at = int(i) + 1
            break
        tiers[routed:i + 1] = serving.route(x[routed:i + 1], target)
        routed = i + 1
        sim.shadowed[i] = True
        sim.labelling_usd[i] = labelling_cost(records[i], cfg, judge_tier, tiers[i])
        spent += sim.labelling_usd[i]
        so_far = drawn[:labels]  # the labels are the draws so far: none is skipped before the budget stops them
        trigger = ("schedule" if retrain_now(labels) else
                   "drift" if drifted(sim, serving, so_far[serving_since:], x, target) else None)
        if trigger:
            candidate = retrained(sim, serving, so_far, x, priors, target, seed, trigger)
            serving, serving_since = candidate, (labels if candidate is not serving else serving_since)
    tiers[routed:] = serving.route(x[routed:], target)
    return sim


def drifted(sim: Simulation, serving: TierHead, unseen: np.ndarray, x: np.ndarray, target: float) -> bool:
    """Whether the labels that arrived since the serving head began serving (`unseen`, none of which it trained on)
    show, every DRIFT_CHECK_EVERY of them, that it now misses the target: its quality's 95% upper bound on the
    latest DRIFT_WINDOW of them is below it. Traffic that changed kind (a new task) is caught this way instead of at
    the next scheduled retraining; a false alarm costs one retraining, which promote's check still gates."""
    if not len(unseen) or len(unseen) % DRIFT_CHECK_EVERY:
        return False
    unseen = unseen[-DRIFT_WINDOW:]
    records = [sim.records[j] for j in unseen]
    if not arrays(records)[0][:, N_TIERS - 1].any():
        return False
    return quality_bounds(records, serving.route(x[unseen], target))[1] < target - 1e-12


def retrained(sim: Simulation, serving: TierHead, labelled: np.ndarray, x: np.ndarray, priors: list[TierHead],
              target: float, seed: int, trigger: str = "schedule") -> TierHead:
    """The serving head after one retraining point: a candidate fitted on the labels' dev part replaces it if
    promote's rule, on the labels' held-out part, says so."""
    records = [sim.records[j] for j in labelled]
    held_out = np.array([r.held_out for r in records], dtype=bool)  # train's split, by id hash
    dev_rows, held_rows = labelled[~held_out], labelled[held_out]
    if len(dev_rows) < MIN_DEV_RECORDS or not len(held_rows):
        return serving  # too few labels train or check nothing
    held = [sim.records[j] for j in held_rows]
    fitted = fit_head([sim.records[j] for j in dev_rows], x[dev_rows], [target], seed=seed, priors=priors)
    candidate = fitted.head("simulated", f"labels-{len(labelled)}", target, models=lineup(records))
    x_held = x[held_rows]
    mine, theirs = measure(candidate, held, x_held, target), measure(serving, held, x_held, target)
    ok, why = verdict(mine, theirs, target)
    sim.promotions.append({"at_query": int(labelled[-1]) + 1, "labels": len(labelled), "trigger": trigger,
                           "promoted": ok, "why": why})
    return candidate if ok else serving


def summary(total: dict) -> str:
    """The whole replay in one line, as the report and the command print it."""
    stopped, back = total.get("labelling_stopped_at_query"), total.get("pays_back_after_queries")
    return (f"{total['n']} queries, {total['labels']} labelled for ${total['labelling_cost_usd']:.4f}"
            + (f" (budget spent at query {stopped})" if stopped else "") + f"; gross savings "
            f"{total['cost_savings']:.1%}, net {total['net_savings']:.1%}, "
            f"quality vs frontier {total['quality_vs_frontier']:.3f}; "
            + (f"spends less than always tier 3, labelling included, from query {back} on" if back
               else "labelling not paid back within the replay"))


def report(result: dict, window: int, out: Path) -> Path:
    """Savings (gross and net of labelling) and quality vs frontier per window, as a PNG and a Markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    windows = result["windows"]
    ends = np.cumsum([w["n"] for w in windows])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("cost_savings", "gross savings"), ("net_savings", "net of labelling"),
                       ("quality_vs_frontier", "quality vs frontier")):
        ax.plot(ends, [np.nan if w[key] is None else w[key] for w in windows], marker="o", label=label)
    for p in result["promotions"]:
        if p["promoted"]:
            ax.axvline(p["at_query"], color="grey", linewidth=0.6, linestyle=":")
    if stopped := result["total"].get("labelling_stopped_at_query"):
        ax.axvline(stopped, color="firebrick", linewidth=0.8, linestyle="-.", label="labelling budget spent")
    ax.axhline(0.95, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel(f"queries served (windows of {window}; dotted: a head promoted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    write_atomic(out / "simulation.png", png.getvalue())
    plt.close(fig)
    lines = ["# Tierwise deployment simulation", "", "![savings and quality over time](simulation.png)", "",
             "| queries | labels | gross savings | net savings | quality vs frontier | tier mix |", "|---|---|---|---|---|---|"]
    lines += [f"| {end} | {w['labels']} | {shown(w['cost_savings'], '.1%')} | {shown(w['net_savings'], '.1%')} | "
              f"{shown(w['quality_vs_frontier'], '.3f')} | {' / '.join(f'{t:.2f}' for t in w['tier_mix'])} |"
              for end, w in zip(ends, windows)]
    lines += ["", f"Total: {summary(result['total'])}."]
    path = out / "REPORT.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def shown(value: float | None, spec: str) -> str:
    """A window's figure as the report and the command print it: "undefined" where it is (see `_ratio`)."""
    return "undefined" if value is None else format(value, spec)
