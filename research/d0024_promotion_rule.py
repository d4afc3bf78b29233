"""Decision 0024: what promote's check on the labels' held-out fifth, and the retraining schedule, cost a simulated
deployment.

`tierwise simulate` on each dev file, starting from heads that never saw it (decision 0019's `heads-without-<file>`,
rebuilt under DIR when absent), in the file's own order (sorted by task: every task change is a shift of traffic)
and in shuffled orders drawn from a hash of the ids (stationary traffic, as a mixed chat stream is; `shuffledN`, N
the seed). Each run under one of four rules:

- `0015`: decision 0015's check: a candidate whose point estimate of quality vs frontier on the held-out labels is
  below the target is refused unless the serving head keeps less there; retraining on the schedule only;
- `evidence`: the check this record ships: refused for its quality only when the held-out labels show that it
  misses the target (their 95 % upper bootstrap bound is below it); schedule only;
- `0015+drift` / `shipped`: the same two checks, plus a retraining whenever the latest 100 labels since the serving
  head began serving show that it misses the target (checked every 50 labels): what `tierwise simulate` now does;
- `shipped80`: `shipped` with the check's upper bound at one-sided 80 % instead of 95 %;
- `recent`: `shipped`, with a candidate retrained on drift calibrated on its latest RECENT dev labels only;
- `min50`: `shipped`, with 0015's point estimate instead of the bound on fewer than 50 held-out records.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0024_promotion_rule [--rules 0015,shipped] [--rates 0.5]
        [--orders file,shuffled0,shuffled1] [--shadow-seeds 0,1] [--files zeroeval] [--size N] [--retrain-every N]
        [--name NAME] [--out DIR]
    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0024_promotion_rule --decisions --orders shuffled0,shuffled1

The first writes DIR/NAME.json and DIR/NAME.md (per run: last window's savings and quality, totals, windows under the
target, where heads were promoted); about 12 s a run at rate 0.5 on one core. `--decisions` replays the scheduled
retraining points under decision 0015's check and scores each call against the next 1,000 queries: the candidate's
and the serving head's quality and savings there (rate 0.5).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

import tierwise_tools.simulate as simulate_module
from classifier_service.heads import HeadRegistry
from router_service.config import load as load_config
from tierwise.data import Record, load, shared_files
from tierwise.metrics import quality_bounds, routing_metrics
from tierwise_tools.calibration import calibrate
from tierwise_tools.fitting import MIN_DEV_RECORDS, fit_head, lineup
from tierwise_tools.paths import ROOT

from .common import embed
from .d0019_few_label_transfer import heads_without

TARGET = 0.95
SHIPPED = (simulate_module.measure, simulate_module.drifted)


def measure_with(upper):
    """promote's measure with the candidate's upper bound replaced by `upper(records, tiers, measured)`."""
    def measure(head, records, x, target):
        m = SHIPPED[0](head, records, x, target)
        return {**m, "quality_vs_frontier_upper_bound": upper(records, head.route(x, target), m)}
    return measure


# Decision 0015's rule: a candidate whose held-out point estimate is below the target is refused unless the
# serving head keeps less there.
point_measure = measure_with(lambda records, tiers, m: m["quality_vs_frontier"])
# The bound at one-sided 80 % instead of 95 %.
measure_at_80 = measure_with(lambda records, tiers, m: quality_bounds(records, tiers, level=0.80)[1])
# The point estimate standing in for the bound on fewer than 50 held-out records (so few show nothing either way).
measure_min_50 = measure_with(lambda records, tiers, m: m["quality_vs_frontier_upper_bound"] if len(records) >= 50
                              else m["quality_vs_frontier"])


def never(*_args) -> bool:
    return False


RECENT = 160  # dev labels a candidate retrained on drift is calibrated on, in the `recent` rule
_ORIGINAL = (simulate_module.retrained, simulate_module.fit_head)
_drift_now = [False]


def retrained_noting_trigger(*args, **kwargs):
    _drift_now[0] = (args[7] if len(args) > 7 else kwargs.get("trigger")) == "drift"
    try:
        return _ORIGINAL[0](*args, **kwargs)
    finally:
        _drift_now[0] = False


def fit_head_recent(records, x, targets, *args, **kwargs):
    """fit_head; on a drift retraining, the tradeoffs recalibrated on the out-of-fold predictions of the latest
    RECENT records only (the traffic since the shift, more or less)."""
    fitted = _ORIGINAL[1](records, x, targets, *args, **kwargs)
    if not _drift_now[0] or len(records) <= RECENT:
        return fitted
    recent = records[-RECENT:]
    oof = fitted.chosen.oof[-RECENT:]
    calibration = {key: calibrate(recent, oof, fitted.relative_cost, float(key))[0] for key in fitted.calibration}
    return dataclasses.replace(fitted, calibration=calibration)


RULES = {"0015": (point_measure, never), "0015+drift": (point_measure, SHIPPED[1]),
         "evidence": (SHIPPED[0], never), "shipped": SHIPPED, "shipped80": (measure_at_80, SHIPPED[1]),
         "recent": SHIPPED, "min50": (measure_min_50, SHIPPED[1])}


_SCHEDULE = simulate_module.retraining_points


def half_steps(every: int | None, first: int = 50):
    """The default schedule with a retraining halfway between each doubling: 50, 100, 150, 200, 300, 400, 600, ...
    labels (the default doublings from `first` and from 3 x `first`; `--half-steps`); `every` as `tierwise
    simulate --retrain-every`."""
    if every:
        return _SCHEDULE(every, first)
    doublings, halfway = _SCHEDULE(None, first), _SCHEDULE(None, 3 * first)
    return lambda n: doublings(n) or halfway(n)


def shuffled(records: list[Record], x: np.ndarray, seed: int) -> tuple[list[Record], np.ndarray]:
    """The records in an order drawn from a hash of their ids: stationary traffic, one arrival order per seed."""
    salt = "order" if seed == 0 else f"order{seed}"
    order = sorted(range(len(records)), key=lambda i: hashlib.sha256(f"{salt}:{records[i].id}".encode()).hexdigest())
    return [records[i] for i in order], x[order]


def files_and_heads(out: Path, only: list[str] | None) -> dict:
    """{file: (records, embeddings, the heads a deployment of that file starts from)}."""
    files = {p.name.split(".")[0]: (records, embed(records)) for p in shared_files() for records in [load([p])]}
    chosen = {}
    for left, (records, x) in files.items():
        if only and left not in only:
            continue
        heads = out / f"heads-without-{left}"
        if not (heads / "default" / "head.json").exists():
            heads_without(files, left, out)
        chosen[left] = (records, x, HeadRegistry.from_dir(heads))
    return chosen


def ordered(records: list[Record], x: np.ndarray, order: str) -> tuple[list[Record], np.ndarray]:
    return (records, x) if order == "file" else shuffled(records, x, int(order.removeprefix("shuffled")))


def run(rules: list[str], rates: list[float], orders: list[str], files: dict, out: Path, name: str,
        seeds: list[int] = (0,), size: int | None = None, every: int | None = None) -> list[dict]:
    """Every (file, order, rate, shadow seed, rule); `size`: only the first `size` queries of each order (with a
    shuffled order, a deployment that sees that many queries of stationary traffic); `every`: retrain every that
    many labels (`tierwise simulate --retrain-every`) instead of on the default schedule."""
    cfg = load_config(ROOT / "tierwise.example.yaml")
    rows = []
    for left, (records, x, registry) in files.items():
        for order in orders:
            recs, xs = ordered(records, x, order)
            recs, xs = recs[:size], xs[:size]
            for rate, seed, rule in ((rate, seed, rule) for rate in rates for seed in seeds for rule in rules):
                simulate_module.measure, simulate_module.drifted = RULES[rule]
                if rule == "recent":
                    simulate_module.retrained, simulate_module.fit_head = retrained_noting_trigger, fit_head_recent
                try:
                    result = simulate_module.simulate(recs, xs, registry, cfg, rate, TARGET, every, seed).result(500)
                finally:
                    simulate_module.measure, simulate_module.drifted = SHIPPED
                    simulate_module.retrained, simulate_module.fit_head = _ORIGINAL
                last, total = result["windows"][-1], result["total"]
                row = {"file": left, "order": order, "queries": len(recs), "rate": rate, "shadow_seed": seed, "rule": rule,
                       "last_savings": last["cost_savings"], "last_quality": last["quality_vs_frontier"],
                       "total_savings": total["cost_savings"], "total_quality": total["quality_vs_frontier"],
                       "net_savings": total["net_savings"],
                       "windows_under": sum(w["quality_vs_frontier"] < TARGET for w in result["windows"]),
                       "windows": len(result["windows"]),
                       "promoted": [p["labels"] for p in result["promotions"] if p["promoted"]],
                       "drift_retrainings": sum(p["trigger"] == "drift" for p in result["promotions"])}
                rows.append(row)
                print(json.dumps(row), flush=True)
                (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| file | order | queries | rate | shadow seed | rule | last window savings / quality | total savings / quality | net | "
             "windows < 0.95 | promoted at | drift retrainings |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['file']} | {r['order']} | {r.get('queries', 'all')} | {r['rate']} | {r['shadow_seed']} | {r['rule']} | {r['last_savings']:.1%} / "
                     f"{r['last_quality']:.3f} | {r['total_savings']:.1%} / {r['total_quality']:.3f} | "
                     f"{r['net_savings']:.1%} | {r['windows_under']} of {r['windows']} | "
                     f"{', '.join(map(str, r['promoted'])) or 'none'} | {r['drift_retrainings']} |")
    return "\n".join(lines)


def decisions(records: list[Record], x: np.ndarray, registry: HeadRegistry, rate: float, rule: str = "0015",
              horizon: int = 1000) -> list[dict]:
    """Each scheduled retraining point of `tierwise simulate`'s replay under `rule`'s check, with what the candidate
    and the serving head would do on the next `horizon` queries: whether the check's call on the held-out labels was
    the right one."""
    priors, serving = list(registry), registry.for_lineup(lineup(records))
    shadowed = np.array([simulate_module.shadow_draw(r, rate, 0) for r in records])
    retrain_now, labels, rows = simulate_module.retraining_points(None), 0, []
    for i in np.flatnonzero(shadowed):
        labels += 1
        if not retrain_now(labels):
            continue
        labelled = np.flatnonzero(shadowed[: i + 1])
        held_out = np.array([records[j].held_out for j in labelled], dtype=bool)
        dev_rows, held_rows = labelled[~held_out], labelled[held_out]
        if len(dev_rows) < MIN_DEV_RECORDS or not len(held_rows):
            continue
        fitted = fit_head([records[j] for j in dev_rows], x[dev_rows], [TARGET], priors=priors)
        candidate = fitted.head("simulated", f"labels-{labels}", TARGET, models=lineup(records))
        held = [records[j] for j in held_rows]
        mine, theirs = (RULES[rule][0](h, held, x[held_rows], TARGET) for h in (candidate, serving))
        ok, _ = simulate_module.verdict(mine, theirs, TARGET)
        future = slice(i + 1, i + 1 + horizon)
        ahead = {}
        for name, head in (("candidate", candidate), ("serving", serving)):
            m = routing_metrics(records[future], head.route(x[future], TARGET))
            ahead[name] = (round(m["quality_vs_frontier"], 3), round(m["cost_savings"], 3))
        rows.append({"labels": labels, "held_out": int(len(held_rows)), "promoted": ok,
                     "held_candidate": (mine["quality_vs_frontier"], mine["cost_savings"]),
                     "held_serving": (theirs["quality_vs_frontier"], theirs["cost_savings"]),
                     "next_candidate": ahead["candidate"], "next_serving": ahead["serving"]})
        if ok:
            serving = candidate
    return rows


def print_decisions(files: dict, orders: list[str]) -> None:
    calls = []
    for left, (records, x, registry) in files.items():
        for order in orders:
            for row in decisions(*ordered(records, x, order), registry, 0.5):
                calls.append(row)
                print(left, order, json.dumps(row), flush=True)
    scored = [r for r in calls if r["labels"] >= 100]
    better = [r for r in scored if r["next_candidate"][0] >= TARGET and (
        r["next_serving"][0] < TARGET or r["next_candidate"][1] > r["next_serving"][1] + 0.01)]
    worse = [r for r in scored if r["next_candidate"][0] < TARGET or (
        r["next_serving"][0] >= TARGET and r["next_candidate"][1] < r["next_serving"][1] - 0.01)]
    print(f"calls at >= 100 labels: {len(scored)}; candidates at >= {TARGET} on the next queries: "
          f"{sum(r['next_candidate'][0] >= TARGET for r in scored)}; serving heads under it: "
          f"{sum(r['next_serving'][0] < TARGET for r in scored)}")
    print(f"refused though better: {sum(not r['promoted'] for r in better)} of {len(better)}; "
          f"installed though worse: {sum(r['promoted'] for r in worse)} of {len(worse)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--files", default="", help="comma-separated dev file names (default: all)")
    ap.add_argument("--decisions", action="store_true", help="score decision 0015's calls against the next queries")
    ap.add_argument("--rates", default="0.05,0.5")
    ap.add_argument("--orders", default="file,shuffled0", help="'file' (the file's own order) and/or shuffledN "
                    "(arrival order drawn from a hash of the ids, N its seed)")
    ap.add_argument("--shadow-seeds", default="0", help="which queries the shadow draws (tierwise simulate --seed)")
    ap.add_argument("--size", type=int, help="replay only the first N queries of each order")
    ap.add_argument("--half-steps", action="store_true", help="retrain at 50, 100, 150, 200, 300, 400, 600, ... labels")
    ap.add_argument("--retrain-every", type=int, help="retrain every N labels instead of on the default schedule")
    ap.add_argument("--name", default="runs", help="writes DIR/NAME.json and DIR/NAME.md")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "research" / "d0024")
    args = ap.parse_args()
    if not shared_files():
        raise SystemExit("no records: this probe needs ../shared/data/routing")
    args.out.mkdir(parents=True, exist_ok=True)
    files = files_and_heads(args.out, [f for f in args.files.split(",") if f])
    if args.half_steps:
        simulate_module.retraining_points = half_steps
    if args.decisions:
        return print_decisions(files, args.orders.split(","))
    rows = run(args.rules.split(","), [float(r) for r in args.rates.split(",")], args.orders.split(","), files,
               args.out, args.name, [int(v) for v in args.shadow_seeds.split(",")], args.size,
               args.retrain_every)
    (args.out / f"{args.name}.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()

