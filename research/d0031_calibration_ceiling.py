"""Decision 0031: what does calibrating on n labels cost by itself, with a head as good as the whole file makes it?

Issue 20's K = 200 targets ask the shipped point for 60 % of the full-data curve. Decision 0022 found the shipped
point on the fit's own curve, held back by the bound's margin. This probe takes the fit out of the question: each
record's success probabilities come from a head fitted on the other four fifths of its file (`fit_head`, no prior,
as `make train` fits a lineup's head), so every record has a prediction from a head that never saw it, fitted on
about 1,760-4,390 records. A calibration then sees n of those records (drawn by id hash) and is scored on all the
others, in decision 0022's cache format, so the very methods of 0022 (the shipped one is `calibrate_arrays`) run
on it unchanged.

"Full" is the curve savings@95 of the cross-fitted predictions over the whole file. If the shipped calibration on
n labels ships less than 60 % of it here, no fit on n labels reaches the target with this calibration.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0031_calibration_ceiling --fit   # 15 fits, ~1 min
    .venv/bin/python -m research.d0031_calibration_ceiling --draws 0-19              # ~1.5 min
    .venv/bin/python -m research.d0031_calibration_ceiling --single-test
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from classifier_service.heads import decide, success
from tierwise.data import arrays, load, shared_files
from tierwise.metrics import savings_at_quality
from tierwise_tools import fitting
from tierwise_tools.calibration import CONFIDENCE, TRADEOFFS, WINDOW
from tierwise_tools.paths import ROOT

from .common import embed
from .d0022_small_sample_calibration import METHODS, SHIPPED, TARGET, evaluate, lower_bound, routed

OUT = ROOT / "build" / "research" / "d0031"
FOLDS = 5
NS = (80, 120, 160, 240, 320, 640)
Z90 = 1.2816  # one-sided 90 % normal quantile
SHOWN = (SHIPPED, "fixed sequence 90%, no window", "bootstrap 90%", "point estimate")


def fold_of(record_id: str) -> int:
    return int(hashlib.sha256(f"fold:{record_id}".encode()).hexdigest(), 16) % FOLDS


def cross_fit(out: Path) -> None:
    """Per file, every record's probabilities and support check from the head fitted on the other folds."""
    out.mkdir(parents=True, exist_ok=True)
    for path in shared_files():
        name = path.name.split(".")[0]
        target = out / f"{name}.npz"
        if target.exists():
            continue
        records = load([path])
        x = embed(records)
        folds = np.array([fold_of(r.id) for r in records])
        p, outside = np.zeros((len(records), 3)), np.zeros(len(records), bool)
        for k in range(FOLDS):
            train = np.flatnonzero(folds != k)
            fitted = fitting.fit_head([records[i] for i in train], x[train], [TARGET])
            rows = folds == k
            p[rows] = success(x[rows], fitted.coef, fitted.intercept)
            outside[rows] = fitted.support.outside(x[rows])
            print(f"{name} fold {k}: C={fitted.chosen.c:g}", flush=True)
        ok, cost = arrays(records)
        np.savez(target, p=p, outside=outside, ok=ok, cost=cost, ids=np.array([r.id for r in records]),
                 relative_cost=np.array(fitting.relative_cost(records)))


def caches(out: Path, ns, draws) -> None:
    """0022's cache entries: n records drawn by id hash to calibrate on (their cross-fitted predictions stand in
    for the out-of-fold ones), every other record to score on."""
    (out / "cache").mkdir(parents=True, exist_ok=True)
    for path in sorted(out.glob("*.npz")):
        c = dict(np.load(path))
        for draw in draws:
            order = sorted(range(len(c["ids"])), key=lambda i: hashlib.sha256(f"{draw}:{c['ids'][i]}".encode()).hexdigest())
            for n in ns:
                cal, rest = np.array(order[:n]), np.array(order[n:])
                np.savez(out / "cache" / f"{path.stem}-{n}-{draw}.npz", dev_ok=c["ok"][cal], dev_cost=c["cost"][cal],
                         oof=c["p"][cal], relative_cost=c["relative_cost"], p=c["p"][rest], outside=c["outside"][rest],
                         ok=c["ok"][rest], cost=c["cost"][rest], prior_gaps=np.zeros(2))


def full_curves(out: Path) -> dict[str, float]:
    full = {}
    for path in sorted(out.glob("*.npz")):
        c = dict(np.load(path))
        full[path.stem] = savings_at_quality([routed(c, t) for t in TRADEOFFS], TARGET) or 0.0
    return full


def single_test_ceiling(out: Path, ns, window: int | None = None) -> str:
    """The most any calibration can ship that must pass a one-sided 90% test on n labels, told the best tradeoff to
    test for free: the cheapest tradeoff whose quality over the whole file, minus 1.28 standard errors of its
    estimate on n labels (normal approximation; with `window`, of the gap to a window of new queries), meets the
    target. The support check is on, as in every score here."""
    lines = []
    for path in sorted(out.glob("*.npz")):
        c = dict(np.load(path))
        ok, cost, rows = c["ok"].astype(float), c["cost"], np.arange(len(c["ok"]))
        points = []
        for t in TRADEOFFS:
            tiers = decide(c["p"], c["relative_cost"], t, c["outside"])
            chosen = ok[rows, tiers - 1]
            q = chosen.mean() / ok[:, 2].mean()
            sd = (chosen - q * ok[:, 2]).std() / ok[:, 2].mean()
            points.append((q, 1 - cost[rows, tiers - 1].sum() / cost[:, 2].sum(), sd))
        full = max(s for q, s, _ in points if q >= TARGET)
        cells = []
        for n in ns:
            se = np.sqrt(1 / n + (1 / window if window else 0.0))
            best = max([s for q, s, sd in points if q - Z90 * sd * se >= TARGET], default=0.0)
            cells.append(f"n = {n}: {best:.1%} ({best / full:.0%})")
        lines.append(f"{path.stem} (full {full:.1%}): " + "; ".join(cells))
    return "\n".join(lines)


def bound_path(out: Path, n: int, draw: int, file: str = "llmrouter") -> str:
    """Along the fixed sequence on one draw: savings and quality vs frontier on the n labels, the shipped bound,
    and the same tradeoff on the unseen records; the sequence stops at the first bound under the target."""
    c = dict(np.load(out / "cache" / f"{file}-{n}-{draw}.npz"))
    ok, cost, rows = c["dev_ok"].astype(float), c["dev_cost"], np.arange(len(c["dev_ok"]))
    lines = [f"{file} n={n} draw {draw}: shipped tradeoff {METHODS[SHIPPED](c):g}",
             "tradeoff  labels: savings quality bound | unseen: quality savings"]
    for t in TRADEOFFS:
        tiers = decide(c["oof"], c["relative_cost"], t)
        if (tiers == 3).all():
            continue
        bound = lower_bound(ok, ok[rows, tiers - 1], CONFIDENCE, WINDOW)
        q, s = ok[rows, tiers - 1].mean() / ok[:, 2].mean(), 1 - cost[rows, tiers - 1].sum() / cost[:, 2].sum()
        lines.append(f"{t:9.4f} {s:7.3f} {q:7.3f} {bound:5.3f} | {'%7.3f %7.3f' % routed(c, t)}")
        if bound < TARGET:
            break
    return "\n".join(lines)


def table(rows: list[dict], full: dict[str, float]) -> str:
    lines = ["| file (full curve) | n | method | curve s@95 of the rest | shipped savings (of full) | shipped quality "
             "(median; min) | >= 0.95 |", "|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(SHOWN)}
    for f, n, m in sorted({(r["file"], r["k"], r["method"]) for r in rows}, key=lambda x: (x[0], x[1], order[x[2]])):
        cell = [r for r in rows if (r["file"], r["k"], r["method"]) == (f, n, m)]
        sa, q = np.median([r["savings"] for r in cell]), [r["quality"] for r in cell]
        lines.append(f"| {f} ({full[f]:.1%}) | {n} | {m} | {np.median([r['curve'] for r in cell]):.1%} | "
                     f"{sa:.1%} ({sa / full[f]:.0%}) | {np.median(q):.3f}; {min(q):.3f} | "
                     f"{sum(v >= TARGET for v in q)}/{len(cell)} |")
    return "\n".join(lines)


def draw_list(text: str) -> list[int]:
    if "-" in text:
        lo, hi = map(int, text.split("-"))
        return list(range(lo, hi + 1))
    return [int(d) for d in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="cross-fit every file (cached)")
    ap.add_argument("--n", default=",".join(map(str, NS)))
    ap.add_argument("--draws", default="0-19")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--single-test", action="store_true", help="the most a calibration told the best tradeoff could "
                    "ship: without and with the 500-query window")
    ap.add_argument("--path", type=int, metavar="DRAW", help="print llmrouter's bound along the sequence on DRAW")
    args = ap.parse_args()
    if not shared_files():
        raise SystemExit("no records: this probe needs ../shared/data/routing")
    if args.fit:
        return cross_fit(args.out)
    ns, draws = [int(n) for n in args.n.split(",")], draw_list(args.draws)
    if args.path is not None:
        return print(bound_path(args.out, ns[0], args.path))
    if args.single_test:
        return print(single_test_ceiling(args.out, ns), single_test_ceiling(args.out, ns, WINDOW), sep="\n")
    caches(args.out, ns, draws)
    rows = evaluate(args.out, ns, draws, list(SHOWN))
    full = full_curves(args.out)
    text = table(rows, full)
    (args.out / "TABLE.md").write_text(text + "\n")
    (args.out / "rows.json").write_text(json.dumps(rows))
    print(text)


if __name__ == "__main__":
    assert set(SHOWN) <= set(METHODS)
    main()
