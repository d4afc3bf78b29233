"""`tierwise eval`: replay routing strategies offline on benchmark records.

Each strategy is replayed at its shipped operating point (thresholds calibrated on other data, never
on the evaluated file) and swept over its thresholds on the evaluated file (the cost-quality curve).
`heuristic` and `embedding` decide from the query. `cascade` (starting where `cascade.start` says, as the
router's plain cascade does) and `embedding+cascade` run a quality gate (the router's `cascade.gate` unless
told otherwise) on each tier's recorded response and pay for every tier tried, so records without
responses are not replayable. A gate that asks a model (`verify`) runs live through the providers of a
router config (tierwise_tools/live_gate.py). `as-routed` scores the live router's own decisions on the records its
shadow labelled (they carry `routed_tier`).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score

from classifier_service.heads import HeadRegistry, decide
from router_service.gates import GATES, gate
from router_service.strategies.heuristic import HeuristicStrategy, heuristic_score
from tierwise.atomic import write_atomic
from tierwise.data import Record, arrays, check_measurable
from tierwise.metrics import QUALITY_TARGETS, aiq, quality_bounds, routing_metrics, savings_at_quality
from tierwise.tiers import CHEAPEST, FRONTIER, TIERS

from .calibration import TRADEOFFS
from .embeddings import embed_records, offline_encoder
from .live_gate import LiveGate

STRATEGIES = ("heuristic", "embedding", "cascade", "embedding+cascade")
BASELINES = ("always-1", "always-3", "oracle", "random")
AS_ROUTED = "as-routed"  # the decisions the router actually made, on live records its shadow labelled
CASCADE_STARTS = ("heuristic", "embedding", "cheapest")  # what a replayed cascade can start from (judge asks a live model)


@dataclass
class Outcome:
    """Final tier and money paid per record, for one setting of a strategy; `first` the tier each record started
    at (a cascade climbs a tier at a time from it, paying each), None where unknown (as-routed)."""
    tiers: np.ndarray
    paid: np.ndarray
    first: np.ndarray | None = None

    def paid_mix(self) -> list[float] | None:
        """The share of records that paid each tier (they add up to more than 1 where a cascade climbed)."""
        if self.first is None:
            return None
        return [round(float(((self.first <= t) & (t <= self.tiers)).mean()), 4) for t in TIERS]


@dataclass
class Replay:
    name: str
    records: list[Record]
    operating_point: Outcome
    sweep: list[Outcome]
    latency_ms: float
    not_replayable: int = 0
    detail: dict = field(default_factory=dict)  # e.g. which heads decided

    @classmethod
    def nothing(cls, name: str, skipped: int, why: str) -> "Replay":
        """No record could be replayed; `why` says so in the result."""
        return cls(name, [], Outcome(np.zeros(0, int), np.zeros(0)), [], 0.0, not_replayable=skipped,
                   detail={"why": why})

    def result(self, target_quality: float) -> dict:
        head = {"strategy": self.name, "n": len(self.records), "target_quality": target_quality,
                "not_replayable": self.not_replayable, **self.detail}
        if not self.records:
            return {**head, "operating_point": None, "curve": None}
        op = routing_metrics(self.records, self.operating_point.tiers, self.operating_point.paid)
        op["avg_latency_overhead_ms"] = self.latency_ms
        if (paid_mix := self.operating_point.paid_mix()) is not None:
            op["paid_mix"] = paid_mix  # what `tierwise costs` prices at the configured prices
        points = [self._point(o) for o in self.sweep]
        return {
            **head,
            "operating_point": op,
            "curve": {"savings_at_quality": {f"{q:g}": savings_at_quality(points, q) for q in QUALITY_TARGETS},
                      "aiq": aiq([(1 - s, q * self._frontier_quality()) for q, s in points]),
                      "points": [[round(q, 5), round(s, 5)] for q, s in points]},
        }

    def _point(self, o: Outcome) -> tuple[float, float]:
        m = routing_metrics(self.records, o.tiers, o.paid)
        return m["quality_vs_frontier"], m["cost_savings"]

    def _frontier_quality(self) -> float:
        return float(arrays(self.records)[0][:, 2].mean())


def _one_shot(records: list[Record], tiers: np.ndarray) -> Outcome:
    cost = arrays(records)[1]
    tiers = np.asarray(tiers, dtype=int)
    return Outcome(tiers, cost[np.arange(len(records)), tiers - 1], tiers)


def baseline(name: str, records: list[Record], seed: int = 0) -> Replay:
    n = len(records)
    if name == "oracle":
        tiers = np.array([r.oracle_tier for r in records])
        return Replay(name, records, _one_shot(records, tiers), [_one_shot(records, tiers)], 0.0)
    if name == "random":
        rng = np.random.default_rng(seed)
        op = _one_shot(records, rng.integers(CHEAPEST, FRONTIER + 1, n))
        # The curve of random routing: send a share p of traffic to tier 3, the rest to tier 1.
        sweep = [_one_shot(records, np.where(rng.random(n) < p, 3, 1)) for p in np.linspace(0, 1, 21)]
        return Replay(name, records, op, sweep, 0.0)
    tier = {"always-1": 1, "always-3": 3}[name]
    outcome = _one_shot(records, np.full(n, tier))
    return Replay(name, records, outcome, [outcome], 0.0)


def as_routed(records: list[Record]) -> Replay:
    """The live router's own decisions and what it paid (a cascade pays every tier it tried), on the records
    that carry them: an unbiased sample of its traffic when the shadow labels it. One point, no sweep."""
    routed = [r for r in records if r.routed_tier is not None]
    if not routed:
        return Replay.nothing(AS_ROUTED, len(records), "no recorded routing decisions")
    check_measurable(routed, f"the {len(routed)} records with a recorded routing decision")  # the ones scored
    tiers = np.array([r.routed_tier for r in routed], dtype=int)
    paid = np.array([tier_cost if r.paid_usd is None else r.paid_usd
                     for r, tier_cost in zip(routed, _one_shot(routed, tiers).paid)])
    outcome = Outcome(tiers, paid)  # which tiers a live cascade tried is not recorded, only what it paid
    # On a sample of live traffic the point estimate alone proves little: say how low it may really be.
    lower = {"quality_vs_frontier_lower_bound": round(quality_bounds(routed, tiers)[0], 5)}
    return Replay(AS_ROUTED, routed, outcome, [outcome], 0.0, not_replayable=len(records) - len(routed), detail=lower)


def heuristic(records: list[Record]) -> Replay:
    strategy = HeuristicStrategy()
    started = time.perf_counter()
    op = _one_shot(records, np.array([strategy.decide_now(r.query).tier for r in records]))
    latency = (time.perf_counter() - started) * 1e3 / max(len(records), 1)
    scores = np.array([heuristic_score(r.query)[0] for r in records])
    sweep = [_one_shot(records, np.where(scores < a, 1, np.where(scores < b, 2, 3)))
             for a in range(0, 7) for b in range(a, 8)]
    return Replay("heuristic", records, op, sweep, latency)


def embedding(records: list[Record], target_quality: float, encoder_dir: Path, heads_dir: Path,
              head_name: str = "", cache_dir: Path | None = None, tradeoff: float | None = None) -> Replay:
    """Each record is routed by `head_name`, or by default by the head trained on its tier lineup (the
    default head where none was). The operating point is each head's tradeoff for `target_quality`, or
    `tradeoff` (a cascade's `start_tradeoff`)."""
    registry = HeadRegistry.from_dir(heads_dir)
    if head_name and registry.get(head_name) is None:
        raise KeyError(f"head: unknown head {head_name!r}; loaded heads: {', '.join(registry.names)}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((registry.get(head_name) if head_name else registry.for_lineup(r.models)).name, []).append(i)
    heads = {name: registry.get(name) for name in groups}
    encoder = offline_encoder(encoder_dir)
    started = time.perf_counter()
    sample = [r.query for r in records[:50]]
    for text in sample:
        encoder.embed_tokens(encoder.tokenize([text]))
    latency = (time.perf_counter() - started) * 1e3 / max(len(sample), 1)
    x = embed_records(encoder, records, cache_dir or encoder_dir.parent / "embeddings")
    routed = []
    used = {}
    for name, idx in groups.items():
        head, rows = heads[name], np.asarray(idx)
        outside = head.outside(x[rows])
        routed.append((rows, head.probabilities(x[rows]), head.relative_cost, head.tradeoff_keeping(target_quality)[0], outside))
        used[name] = {"version": head.version, "records": len(idx), "outside_support": int(outside.sum())}
    return tradeoff_replay("embedding", records, routed, latency, detail={"heads": used}, operating=tradeoff)


def tradeoff_replay(name: str, records: list[Record], routed: list[tuple], latency_ms: float = 0.0,
                    detail: dict | None = None, operating: float | None = None) -> Replay:
    """Replay success heads: each (row indices, success probabilities, relative cost, shipped tradeoff, rows
    outside the head's support) in `routed` decides its rows; the operating point uses the shipped
    tradeoffs (or `operating` for every head), the sweep every tradeoff in TRADEOFFS, in order."""
    def route(tradeoff: float | None) -> Outcome:
        tiers = np.ones(len(records), dtype=int)
        for idx, probs, relative_cost, shipped, outside in routed:
            tiers[idx] = decide(probs, relative_cost, shipped if tradeoff is None else tradeoff, outside)
        return _one_shot(records, tiers)

    return Replay(name, records, route(operating), [route(t) for t in TRADEOFFS], latency_ms, detail=detail or {})


@dataclass
class Gated:
    """A gate's verdicts on each replayable record's tier 1 and 2 answers, and what a cascade does with them."""
    records: list[Record]
    accepts: np.ndarray  # (records, 2): accepted at the gate's configured bar
    scores: np.ndarray  # (records, 2): P(acceptable), NaN where the verdict is final whatever the bar
    verdict_cost: np.ndarray  # (records, 2): what asking for each verdict cost
    latency_ms: float
    detail: dict

    @cached_property
    def _cost(self) -> np.ndarray:
        return arrays(self.records)[1]

    def accepted(self, bar: float | None = None) -> np.ndarray:
        return self.accepts if bar is None else np.where(np.isnan(self.scores), self.accepts, self.scores >= bar)

    def run(self, first: np.ndarray, bar: float | None = None) -> Outcome:
        """Start each record at `first`; escalate while the gate rejects (at `bar`, or its configured one), paying
        for every tier tried and every verdict bought."""
        cost = self._cost
        accepted = self.accepted(bar)
        rows = np.arange(len(self.records))
        start = np.asarray(first, dtype=int)
        tiers = start.copy()
        paid = cost[rows, tiers - 1].copy()
        judged = tiers < FRONTIER  # the gate runs on every answer below tier 3 the cascade gets
        for _ in range(2):  # at most two escalations: 1 -> 2 -> 3
            answer = np.minimum(tiers, 2) - 1
            paid += np.where(judged, self.verdict_cost[rows, answer], 0.0)
            climb = judged & ~accepted[rows, answer]
            tiers += climb
            paid += np.where(climb, cost[rows, tiers - 1], 0.0)
            judged = climb & (tiers < FRONTIER)
        return Outcome(tiers, paid, start)


def gated(records: list[Record], gate_name: str, live: LiveGate | None = None) -> Gated | str:
    """The gate's verdicts on the records with a tier 1 and a tier 2 answer, or why there are none to replay. A
    gate that asks a model runs through `live` (the configured providers)."""
    text_only = gate_name not in GATES or GATES[gate_name].replayable
    if not text_only and live is None:
        return (f"the {gate_name} gate asks a live model: pass --config to run it through your providers, or "
                "measure it on labelled live traffic (shadow.labels, then --strategy as-routed)")
    check = gate(gate_name).check if text_only else None
    replayable = [r for r in records if r.responses[0] is not None and r.responses[1] is not None]
    if not replayable:
        return "no recorded responses"
    if check is None:
        accepts, scores, verdict_cost, asked = live.judge(replayable)
        # Live calls: their time says more about this machine's link than about the router.
        return Gated(replayable, accepts, scores, verdict_cost, 0.0,
                     {"verifier": verifier_agreement(accepts, asked, arrays(replayable)[0][:, :2], scores)})
    started = time.perf_counter()
    accepts = np.array([[check(r.query, r.responses[t]).accept for t in (0, 1)] for r in replayable], dtype=bool)
    latency = (time.perf_counter() - started) * 1e3 / len(replayable)
    return Gated(replayable, accepts, np.full(accepts.shape, np.nan), np.zeros(accepts.shape), latency, {})


def cascade(records: list[Record], start: Callable[[list[Record]], Replay], gate_name: str,
            name: str = "cascade", live: LiveGate | None = None) -> Replay:
    """A cascade as the router runs it: the `start` strategy's replay on the replayable records gives each
    record's first tier (its operating point, and each setting of its sweep); the gate runs on each recorded
    answer, and a rejection escalates. Records lacking a tier 1 or 2 answer are not replayable. The sweep
    also covers a scoring gate's bar: each setting of the start with each bar between the verifier's scores."""
    answers = gated(records, gate_name, live)
    if isinstance(answers, str):
        return Replay.nothing(name, len(records), answers)
    first = start(answers.records)
    settings = [None, *bars(answers.scores)]
    return Replay(name, answers.records, answers.run(first.operating_point.tiers),
                  [answers.run(o.tiers, bar) for o in first.sweep for bar in settings],
                  first.latency_ms + answers.latency_ms, len(records) - len(answers.records),
                  {**first.detail, **answers.detail})


def bars(scores: np.ndarray, steps: int = 20) -> list[float]:
    """Bars to sweep for a gate that scores answers: scores it gave at evenly spaced quantiles (a bar accepts
    the answers scored at least as high), and one above them all (reject every scored answer). No bars for a
    gate whose verdicts are final."""
    scored = scores[~np.isnan(scores)]
    if not scored.size:
        return []
    return [*map(float, np.unique(np.quantile(scored, np.linspace(0, 1, steps + 1), method="inverted_cdf"))), np.inf]


def verifier_agreement(accepts: np.ndarray, asked: np.ndarray, acceptable: np.ndarray,
                       scores: np.ndarray | None = None) -> dict:
    """How a verifier's verdicts match the records' labels, over the answers it was asked about: the figure
    that decides whether it pays (docs/decisions/0016). `auc`: how well its P(acceptable) ranks acceptable
    answers above the others, whatever the bar (docs/decisions/0017); None without both kinds of answer."""
    def share(mask: np.ndarray, of: np.ndarray) -> float | None:
        return round(float(mask[of].mean()), 4) if of.any() else None

    figures = {"asked": int(asked.sum()), "agreement": share(accepts == acceptable, asked),
               "passed_unacceptable": share(accepts, asked & ~acceptable),
               "rejected_acceptable": share(~accepts, asked & acceptable), "auc": None}
    scored = asked if scores is None else asked & ~np.isnan(scores)
    if scores is not None and len(set(acceptable[scored].tolist())) == 2:
        figures["auc"] = round(float(roc_auc_score(acceptable[scored], scores[scored])), 4)
    return figures


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, quality) points no other point beats on both: the best quality each cost buys."""
    frontier: list[tuple[float, float]] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or quality > frontier[-1][1]:
            frontier.append((cost, quality))
    return frontier


def report(results: dict[str, dict[str, dict]], out: Path) -> Path:
    """Markdown with the seed's table per file, plus a PNG cost-quality curve per file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Tierwise routing evaluation", ""]
    charts: dict[str, str] = {}  # file -> its PNG's name, apart from another directory's file of the same name
    for file in results:
        stem = Path(file).stem
        charts[file] = next(f"{stem}{n or ''}.png" for n in range(len(results) + 1)
                            if f"{stem}{n or ''}.png" not in charts.values())
    for file, by_strategy in results.items():
        lines += [f"## {file}", "", f"![cost-quality curve]({charts[file]})", "",
                  "| strategy | n | accuracy | cost savings | quality preserved | quality vs frontier | "
                  "savings@95%Q (curve) | AIQ | latency overhead ms | not replayable |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, r in by_strategy.items():
            op, curve = r["operating_point"], r["curve"]
            if op is None:
                lines.append(f"| {name} | 0 | not replayable: {r['why']} | | | | | | | {r['not_replayable']} |")
                continue
            s95 = curve["savings_at_quality"]["0.95"]
            lines.append(f"| {name} | {r['n']} | {op['accuracy']:.3f} | {op['cost_savings']:.1%} | "
                         f"{op['quality_preserved']:.3f} | {op['quality_vs_frontier']:.3f} | "
                         f"{'—' if s95 is None else f'{s95:.1%}'} | {curve['aiq']:.3f} | "
                         f"{op['avg_latency_overhead_ms']:.2f} | {r['not_replayable']} |")
            frontier = pareto([(1 - s, q) for q, s in curve["points"]])
            ax.plot([p[0] for p in frontier], [p[1] for p in frontier], marker="." if len(frontier) > 1 else "o",
                    linestyle="-" if len(frontier) > 1 else "", label=name)
        ax.axhline(0.95, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("cost (fraction of always tier 3)")
        ax.set_ylabel("quality vs frontier")
        ax.set_title(Path(file).name)
        ax.legend(fontsize=8)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        write_atomic(out / charts[file], png.getvalue())
        plt.close(fig)
        lines.append("")
    path = out / "REPORT.md"
    write_atomic(path, "\n".join(lines))
    return path
