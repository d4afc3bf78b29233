"""Reproduce the head comparison of docs/decisions/0007 on each dev file's held-out fifth.

Heads are fitted on the development part only (int(sha256(id)[:8 hex digits], 16) % 5 != 0) from the int8
embeddings cached by `tierwise train` (run `make train` first), then swept over the held-out part:
  - multiclass: the previous kind of head, softmax over the oracle tier, ordinal thresholds (t2, t3);
  - success (pooled): one logistic model per tier, fitted on all lineups, argmax_t P_t - tradeoff*cost_t;
  - success (per lineup): the same, fitted on the evaluated file's lineup only;
  - the same with the support check (what ships; decision 0008's in-distribution comparison);
  - two knobs instead of the one tradeoff: a free bias for tier 2 on top of the tradeoff (bias 0 is the
    shipped rule). Both knobs are also calibrated for 95% on the dev part's out-of-fold predictions, as
    `train` calibrates the one knob, and scored on the held-out part (decision 0011).
Also prints the bootstrap interval of the per-lineup head's savings@95: how precisely each held-out part
measures the curve figure (decision 0011).
Prints savings@{90,95,99}% quality vs frontier (the `curve` figure of `tierwise eval`).
With --calibration-check: a dev-only check of the calibration bound instead. The tradeoff is
calibrated on out-of-fold predictions of 4/5 of each file's dev part and scored on the last fifth,
with the plain bound (window 0) and the 500-query window bound.
Usage, from the repository root: .venv/bin/python -m research.d0007_success_heads [--calibration-check]
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from classifier_service.heads import decide, success
from research.common import biased, cli, curve, multiclass_sweep, op, two_knobs
from tierwise.data import arrays
from tierwise.metrics import routing_metrics
from tierwise_tools.calibration import ALWAYS_TIER_3, TRADEOFFS, calibrate, cheapest_meeting
from tierwise_tools.fitting import fit, fit_support, out_of_fold, relative_cost


def interval(records, sweep: list[np.ndarray], target: float = 0.95, resamples: int = 300) -> str:
    """5-95% bootstrap interval of savings@target over `sweep`: how precisely `records` measure the curve."""
    ok, cost = arrays(records)
    rows = np.arange(len(records))
    chosen_ok = np.array([ok[rows, t - 1] for t in sweep]).T
    chosen_cost = np.array([cost[rows, t - 1] for t in sweep]).T
    weights = np.random.default_rng(0).poisson(1.0, size=(resamples, len(records))).astype(np.float64)
    quality = (weights @ chosen_ok) / (weights @ ok[:, 2])[:, None]
    savings = 1 - (weights @ chosen_cost) / (weights @ cost[:, 2])[:, None]
    best = np.where(quality >= target - 1e-12, savings, -np.inf).max(axis=1)
    low, high = np.quantile(best, [0.05, 0.95])
    return f"{low:.0%}..{high:.0%}"


def one_or_two_knobs(dev_records, oof, p, cost, test) -> str:
    """Held-out quality vs frontier / savings of one knob and of two knobs, each calibrated for 95% on `oof`."""
    tradeoff = calibrate(dev_records, oof, cost, 0.95)[0]
    (both, bias), _ = cheapest_meeting(dev_records, two_knobs(oof, cost), 0.95, (ALWAYS_TIER_3, 0.0))
    return (f"one knob {op(test, decide(p, cost, tradeoff))}, "
            f"two knobs {op(test, biased(p, cost, both, bias))} (bias {bias:+.3f})")


def calibration_check(records, x, ok, source, dev) -> None:
    for name in sorted(set(source)):
        idx = np.where(dev & (source == name))[0]
        part = [records[i] for i in idx]
        oof, cost = out_of_fold(x[idx], ok[idx], 0.5, 0), relative_cost(part)
        for window in (0, 500):
            cells = []
            for tr, va in KFold(5, shuffle=True, random_state=1).split(idx):
                tradeoff, _ = calibrate([part[i] for i in tr], oof[tr], cost, 0.95, window=window)
                m = routing_metrics([part[i] for i in va], decide(oof[va], cost, tradeoff))
                cells.append(f"{m['quality_vs_frontier']:.3f}/{m['cost_savings']:.0%}")
            print(f"{name} window {window}: quality vs frontier / savings per unseen dev fold: {', '.join(cells)}",
                  flush=True)


def held_out(records, x, ok, source, held) -> None:
    dev = ~held
    oracle = np.array([r.oracle_tier for r in records])
    multiclass = LogisticRegression(C=1.0, max_iter=3000).fit(x[dev], oracle[dev]).predict_proba(x)
    pooled = success(x, *fit(x[dev], ok[dev], 0.5))
    for name in sorted(set(source)):
        part = dev & (source == name)
        idx = np.where(held & (source == name))[0]
        test = [records[i] for i in idx]
        dev_records = [records[i] for i in np.where(part)[0]]
        cost = relative_cost(dev_records)
        own = success(x[idx], *fit(x[part], ok[part], 0.5))
        outside = fit_support(x[part]).outside(x[idx])
        print(f"{name} (n={len(idx)} held out) savings@90/95/99: "
              f"multiclass {curve(test, multiclass_sweep(multiclass[idx]))}, "
              f"success pooled {curve(test, [decide(pooled[idx], cost, t) for t in TRADEOFFS])}, "
              f"success per lineup {curve(test, [decide(own, cost, t) for t in TRADEOFFS])}, "
              f"the same with the support check {curve(test, [decide(own, cost, t, outside) for t in TRADEOFFS])}, "
              f"two knobs {curve(test, [t for _, t in two_knobs(own, cost)])}", flush=True)
        oof = out_of_fold(x[part], ok[part], 0.5, 0)
        print(f"{name} calibrated for 95% on the dev part, held-out quality vs frontier/savings: "
              f"{one_or_two_knobs(dev_records, oof, own, cost, test)}; 5-95% bootstrap interval of the "
              f"per-lineup savings@95: {interval(test, [decide(own, cost, t) for t in TRADEOFFS])}", flush=True)


def main() -> None:
    cli(__doc__, lambda d: held_out(d.records, d.x, d.ok, d.source, d.held),
        calibration_check=("check the calibration bound on the dev parts only, instead of the held-out comparison",
                           lambda d: calibration_check(d.records, d.x, d.ok, d.source, d.dev)))


if __name__ == "__main__":
    main()
