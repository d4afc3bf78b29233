"""What the cascade's verify gate could buy with a verifier of a given AUC (docs/decisions/0017).

On the held-out parts that carry responses (routerbench, zeroeval). The verifier is simulated: after the free
surface checks, it gives each answer a P(acceptable) from a binormal model with that AUC, errors drawn
independently (a real verifier's errors are likely to cluster on hard queries, so these figures are optimistic
at a given AUC). Its call reads the gate's prompt, the query and the answer (characters / 4 tokens) and writes
5 tokens, at the verifier model's prices: the data README's tier prices for zeroeval (its costs are estimated
with them), list prices for routerbench's models (they reproduce its recorded MBPP costs; its ARC and
Winogrande costs also hold the five worked examples the query omits).
With --verifier: the curve sweeps the verifier's bar as `eval` does. Two verifiers: tier 1's model (the
default) and the tier above the answer's. The cascade starts at the per-lineup head's tier, over its tradeoff
sweep, or always at tier 1 (`cheapest+cascade`). About 45 minutes.
With --verifier-calibration: the same simulated verifier's bar and the head start's tradeoff calibrated
together for 95% on the dev part (as `tierwise calibrate --config` does), scored on the held-out part. About
10 minutes.
Run `make train` first (it caches the embeddings).
Usage, from the repository root:
  .venv/bin/python -m research.d0017_simulated_verifier --verifier | --verifier-calibration
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from classifier_service.heads import decide, success
from research.common import cli, curve, op
from router_service.gates import VERIFY, SurfaceGate
from tierwise.data import arrays
from tierwise.metrics import routing_metrics
from tierwise_tools import evaluate
from tierwise_tools.calibration import ALWAYS_TIER_3, TRADEOFFS, calibrate, cheapest_meeting
from tierwise_tools.fitting import fit, out_of_fold, relative_cost


class SimulatedVerifier:
    """Stands in for tierwise_tools.live_gate.LiveGate in evaluate.cascade: the surface checks, then a verifier whose
    P(acceptable) ranks an acceptable answer above an unacceptable one with probability `auc` (a binormal
    score with independent errors), its call priced as the module's docstring says."""

    def __init__(self, auc: float, tier_above: bool, seed: int = 0, free: bool = False):
        self.auc = auc
        self.tier_above = tier_above
        self.rng = np.random.default_rng(seed)
        self.free = free

    def judge(self, records):
        surface = SurfaceGate()
        ok = arrays(records)[0][:, :2]
        passed = np.array([[surface.check(r.query, r.responses[t]).accept for t in (0, 1)] for r in records])
        noise = self.rng.standard_normal(ok.shape)
        if self.auc >= 1:  # perfectly ranked; ties within each kind broken at random
            score = np.where(ok, 0.75, 0.0) + 0.25 * norm.cdf(noise)
        else:
            separation = np.sqrt(2) * norm.ppf(self.auc)
            score = norm.cdf(separation * (ok - 0.5) + noise)
        score = np.where(passed, score, np.nan)
        cost = np.array([reading_cost(r, self.tier_above) for r in records])
        return passed & (score >= 0.5), score, np.where(passed & ~self.free, cost, 0.0), passed


# $ per 1M input / output tokens of each tier's model.
PRICES = {"routerbench": ((0.2, 0.2), (1.0, 2.0), (10.0, 30.0)),  # mistral-7b-chat, gpt-3.5-turbo-1106, gpt-4-1106
          "zeroeval": ((0.25, 1.25), (3.0, 15.0), (15.0, 75.0))}   # the data README's tier prices


def reading_cost(record, tier_above: bool) -> list[float]:
    """What the verifier pays to read tier t's answer (t = 1, 2) with the gate's prompt and write 5 tokens."""
    prompt = (len(VERIFY) + len(record.query) + 40) / 4
    prices = PRICES[record.source]
    return [(prices[t + 1 if tier_above else 0][0] * (prompt + len(record.responses[t] or "") / 4)
             + prices[t + 1 if tier_above else 0][1] * 5) / 1e6 for t in (0, 1)]


def verifier(records, x, ok, source, dev) -> None:
    for name in ("routerbench", "zeroeval"):
        part = dev & (source == name)
        idx = np.where(~dev & (source == name))[0]
        test = [records[i] for i in idx]
        cost = relative_cost([records[i] for i in np.where(part)[0]])
        own = success(x[idx], *fit(x[part], ok[part], 0.5))
        sweep = [evaluate.Outcome(decide(own, cost, t), np.zeros(len(idx))) for t in TRADEOFFS]

        def from_head(replayable):
            assert len(replayable) == len(test), "every held-out record here carries its answers"
            return evaluate.Replay("embedding", test, sweep[0], sweep, 0.0)

        def from_tier_1(replayable):
            return evaluate.baseline("always-1", replayable)

        def at_95(start, verifier) -> float:
            found = evaluate.cascade(test, start, "verify", live=verifier).result(0.95)["curve"]["savings_at_quality"]
            return np.nan if found["0.95"] is None else found["0.95"]

        print(f"{name} (n={len(idx)} held out): the head alone, savings@90/95/99 {curve(test, [o.tiers for o in sweep])}; "
              f"a perfect verifier that costs nothing, from tier 1, savings@95 "
              f"{at_95(from_tier_1, SimulatedVerifier(1.0, False, free=True)):.0%}; the oracle router "
              f"{op(test, np.array([r.oracle_tier for r in test]), 0)}", flush=True)
        for auc in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0):
            cells = {label: np.median([at_95(start, SimulatedVerifier(auc, above, seed)) for seed in range(5)])
                     for label, start, above in (("tier 1 verifies, head start", from_head, False),
                                                 ("tier 1 verifies, from tier 1", from_tier_1, False),
                                                 ("tier above verifies, head start", from_head, True))}
            print(f"  AUC {auc:g}, savings@95 (median of 5 draws): "
                  + "; ".join(f"{label} {v:.0%}" for label, v in cells.items()), flush=True)


def verifier_calibration(records, x, ok, source, dev) -> None:
    """The verifier's bar and the head start's tradeoff calibrated together for 95% on the dev part (out-of-fold
    head probabilities, a simulated verifier's scores), as `calibrate --config` does, then scored on the held-out
    part with the same kind of verifier (fresh draws). Without the support check, as calibration runs."""
    for name in ("routerbench", "zeroeval"):
        part, held = np.where(dev & (source == name))[0], np.where(~dev & (source == name))[0]
        dev_records, test = [records[i] for i in part], [records[i] for i in held]
        cost = relative_cost(dev_records)
        oof = out_of_fold(x[part], ok[part], 0.5, 0)
        own = success(x[held], *fit(x[part], ok[part], 0.5))
        alone = decide(own, cost, calibrate(dev_records, oof, cost, 0.95)[0])
        print(f"{name}: the head alone, calibrated on dev, held out: {op(test, alone)}", flush=True)
        for auc in (0.75, 0.8, 0.85, 0.9):
            cells = []
            for seed in range(5):
                tuning = evaluate.gated(dev_records, "verify", SimulatedVerifier(auc, False, seed))
                scoring = evaluate.gated(test, "verify", SimulatedVerifier(auc, False, seed + 100))
                assert len(tuning.records) == len(part) and len(scoring.records) == len(held), "all carry answers"
                candidates = [((t, bar), o.tiers, o.paid) for t in TRADEOFFS for bar in evaluate.bars(tuning.scores)
                              for o in [tuning.run(decide(oof, cost, t), bar)]]
                (t, bar), _ = cheapest_meeting(dev_records, candidates, 0.95, (ALWAYS_TIER_3, np.inf))
                out = scoring.run(decide(own, cost, t), bar)
                m = routing_metrics(test, out.tiers, out.paid)
                cells.append(f"{m['quality_vs_frontier']:.3f}/{m['cost_savings']:.0%}")
            print(f"  AUC {auc:g}, held-out quality vs frontier/savings per draw: {', '.join(cells)}", flush=True)


def main() -> None:
    cli(__doc__, verifier=("savings@95 per verifier AUC, over the bar's sweep",
                           lambda d: verifier(d.records, d.x, d.ok, d.source, d.dev)),
        verifier_calibration=("the bar and the start's tradeoff calibrated on dev, scored on the held-out part",
                              lambda d: verifier_calibration(d.records, d.x, d.ok, d.source, d.dev)))


if __name__ == "__main__":
    main()
