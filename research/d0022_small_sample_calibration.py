"""Decision 0022: can a calibration on K = 50-800 labels of a new lineup ship more savings and still keep quality
vs frontier >= 0.95 in >= 90% of draws?

Stage 1 (`--fit`) runs decision 0019's leave-one-source-out protocol with the priors on (the default) once per
(file, K, draw) and caches what a calibration needs: the development records' outcomes and costs, the
out-of-fold predictions `fit_head` calibrates on, the fitted head's predictions, support check, outcomes and
costs on the file's unseen records, and the prior heads' tier gaps on the sample's queries. `--one-se` fits with
the one-standard-error rule for choosing the model instead (a fitting variant, cached apart).
Stage 2 (default) scores calibration methods on a cache, so that methods differ only in the calibration;
"shipped" is `tierwise_tools.calibration.calibrate_arrays` itself, the default a user gets (since this record
a fixed sequence at 90%); "0019" is the search before it (the cheapest tradeoff whose 95% bound meets the
target). The PNG draws both (the curve is the same fit's, drawn twice).

    .venv/bin/python -m research.d0022_small_sample_calibration --fit --draws 0,1,2,3,4,5   # ~15 min, 2 cores
    .venv/bin/python -m research.d0022_small_sample_calibration --draws 3,4,5    # choose: the selection draws
    .venv/bin/python -m research.d0022_small_sample_calibration --draws 0,1,2    # report: decision 0019's draws
    .venv/bin/python -m research.d0022_small_sample_calibration --fit --k 200 --draws 6,7,8,9,10,11  # after choosing
    .venv/bin/python -m research.d0022_small_sample_calibration --k 200 --draws 0,1,2,3,4,5,6,7,8,9,10,11
    .venv/bin/python -m research.d0022_small_sample_calibration --diagnose --k 200,400 --draws 3,4,5

Methods are chosen on draws 3-5 and reported on draws 0-2 (decision 0019's), so no reported draw chose anything.
Set OMP_NUM_THREADS=1 on a shared machine: BLAS threads fighting over two cores made each fit 20 times slower.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from classifier_service.heads import TierHead, decide, success
from tierwise.data import arrays, load, shared_files, split
from tierwise.metrics import savings_at_quality
from tierwise_tools import fitting
from tierwise_tools.calibration import ALWAYS_TIER_3, TRADEOFFS, calibrate_arrays
from tierwise_tools.paths import ROOT

from .common import embed
from .d0019_few_label_transfer import plot, prior_heads

TARGET = 0.95
OUT = ROOT / "build" / "research" / "d0022"
# The lineup heads' held-out curve s@95 when decisions 0019-0026 were measured (heads trained 2026-11-28). The heads
# `make train` gives since 2026-12-06 read 0.530 / 0.454 / 0.574 on the same held-out fifth.
FULL = {"routerbench": 0.547, "llmrouter": 0.446, "zeroeval": 0.557}


def tier_gaps(heads: list[TierHead], x: np.ndarray) -> list[float]:
    """Tier 1's and tier 2's success rate relative to tier 3's that the prior heads expect on `x`, averaged."""
    gaps = [rates[:2] / rates[2] for h in heads for rates in [h.probabilities(x).mean(axis=0)]]
    return [float(g) for g in np.mean(gaps, axis=0)]


def one_se_select(x, ok, seed, c=None, prior=None) -> fitting.Selected:
    """`fitting.select`, but the simplest setting within one standard error (over records) of the best log loss:
    least weight on the embedding, then with the prior, then smallest C."""
    grid = fitting.settings(c, prior is not None)
    oofs = {key: fitting.out_of_fold(x, ok, key[0], seed, prior=prior if key[2] else None, scale=key[1])
            for key in grid}
    per = {key: -np.mean(ok * np.log(np.clip(p, 1e-6, 1 - 1e-6)) + (1 - ok) * np.log(np.clip(1 - p, 1e-6, 1)),
                         axis=1) for key, p in oofs.items()}
    best = min(grid, key=lambda k: per[k].mean())
    near = [k for k in grid if (per[k] - per[best]).mean() <= (per[k] - per[best]).std(ddof=1) / np.sqrt(len(ok))]
    chosen = min(near, key=lambda k: (k[1], not k[2], k[0]))
    return fitting.Selected(chosen[0], chosen[1], prior if chosen[2] else None, oofs[chosen],
                            {k: float(v.mean()) for k, v in per.items()})


def drawn(records: list, k: int, draw: int, all_labels: bool = False) -> tuple[list[int], list[int]]:
    """(rows of the development part of the K records drawn by id hash, rows of every record not drawn): the
    sample `tierwise train` fits on (its held-out fifth set aside, unless `all_labels`) and the unseen records it
    is scored on."""
    order = sorted(range(len(records)), key=lambda i: hashlib.sha256(f"{draw}:{records[i].id}".encode()).hexdigest())
    sample, rest = order[:k], order[k:]
    if all_labels:
        return sample, rest
    ids = {r.id for r in split([records[i] for i in sample])[0]}
    return [i for i in sample if records[i].id in ids], rest


def fit_cache(ks: list[int], draws: list[int], out: Path, all_labels: bool = False) -> None:
    files = {p.name.split(".")[0]: (records, embed(records)) for p in shared_files() for records in [load([p])]}
    (out / "cache").mkdir(parents=True, exist_ok=True)
    for left, (records, x) in files.items():
        priors = prior_heads(files, left)
        ok_all, cost_all = arrays(records)
        for draw in draws:
            for k in ks:
                path = out / "cache" / f"{left}-{k}-{draw}.npz"
                if path.exists():
                    continue
                rows_dev, rest = drawn(records, k, draw, all_labels)
                dev = [records[i] for i in rows_dev]
                fitted = fitting.fit_head(dev, x[rows_dev], [TARGET], priors=priors)
                np.savez(path, dev_ok=ok_all[rows_dev], dev_cost=cost_all[rows_dev], oof=fitted.chosen.oof,
                         relative_cost=np.array(fitted.relative_cost), p=success(x[rest], fitted.coef, fitted.intercept),
                         outside=fitted.support.outside(x[rest]), ok=ok_all[rest], cost=cost_all[rest],
                         prior_gaps=np.array(tier_gaps(priors, x[rows_dev])),
                         chosen=np.array([fitted.chosen.c, fitted.chosen.scale, fitted.chosen.prior is not None]))
                print(f"{left} K={k} draw={draw}", flush=True)


def routed(c: dict, t: float, outside: bool = True) -> tuple[float, float]:
    """(quality vs frontier, savings) on the unseen records at tradeoff t, support check on."""
    tiers = decide(c["p"], c["relative_cost"], t, c["outside"] if outside else None)
    rows = np.arange(len(tiers))
    return (float(c["ok"][rows, tiers - 1].mean() / c["ok"][:, 2].mean()),
            float(1 - c["cost"][rows, tiers - 1].sum() / c["cost"][:, 2].sum()))


# --- calibration methods: (cache) -> tradeoff ---------------------------------------------------------------

def lower_bound(ok: np.ndarray, chosen_ok: np.ndarray, confidence: float, window: int | None,
                weights: np.ndarray | None = None, resamples: int = 300) -> float:
    n = len(ok)
    size = 1 / (1 / n + 1 / window) if window else n
    w = np.random.default_rng(0).poisson(size / n, size=(resamples, n)).astype(float)
    w = w if weights is None else w * weights
    frontier = w @ ok[:, 2]
    return float(np.quantile(np.where(frontier > 0, (w @ chosen_ok) / np.maximum(frontier, 1e-12), 0.0),
                             1 - confidence))


def search(c: dict, passes: Callable[[np.ndarray, np.ndarray], bool], sequential: bool, stride: int = 1) -> float:
    """The cheapest tradeoff that `passes`; `sequential`: a fixed sequence from the most conservative up that
    stops at the first miss (Learn-then-Test), else every tradeoff is tried (the shipped search)."""
    ok, cost, rows = c["dev_ok"].astype(float), c["dev_cost"], np.arange(len(c["dev_ok"]))
    best, best_cost = ALWAYS_TIER_3, np.inf
    for t in TRADEOFFS[::stride]:
        tiers = decide(c["oof"], c["relative_cost"], t)
        if (tiers == 3).all():
            continue
        spent = cost[rows, tiers - 1].sum()
        if not passes(ok, ok[rows, tiers - 1]):
            if sequential:
                break
            continue
        if spent < best_cost:
            best, best_cost = float(t), spent
    return best


def gap_weights(ok: np.ndarray, prior: list[float], prior_records: float) -> np.ndarray:
    """Record weights under which tier 1's and tier 2's gaps to tier 3 are no better than the posterior (sample
    and prior weighted n : prior_records); a tier whose sample gap is already below is left alone (one-sided)."""
    from scipy.optimize import minimize

    n, sample = len(ok), ok[:, :2].mean(axis=0) / ok[:, 2].mean()
    post = (n * sample + prior_records * np.asarray(prior)) / (n + prior_records)
    pulled = [j for j in range(2) if sample[j] > post[j] + 1e-9]
    if not pulled:
        return np.ones(n)
    a = np.column_stack([ok[:, j] - post[j] * ok[:, 2] for j in pulled])

    def dual(lam):
        z = a @ lam
        w = np.exp(z - z.max())
        return float(np.log(w.sum()) + z.max()), (w @ a) / w.sum()

    lam = minimize(dual, np.zeros(len(pulled)), jac=True, method="L-BFGS-B", bounds=[(None, 0.0)] * len(pulled)).x
    w = np.exp(a @ lam - (a @ lam).max())
    return w * n / w.sum()


def bootstrap(confidence=0.95, window=500, sequential=False, prior_records=None, stride=1):
    def method(c):
        w = None if prior_records is None else gap_weights(c["dev_ok"].astype(float), c["prior_gaps"], prior_records)
        return search(c, lambda ok, ch: lower_bound(ok, ch, confidence, window, w) >= TARGET, sequential, stride)
    return method


SHIPPED, OLD = "shipped: fixed sequence 90% (0022)", "0019: cheapest, bootstrap 95%"
METHODS: dict[str, Callable[[dict], float]] = {
    OLD: bootstrap(0.95),
    SHIPPED: lambda c: calibrate_arrays(c["dev_ok"], c["dev_cost"], c["oof"], c["relative_cost"], TARGET)[0],
    "bootstrap 90%": bootstrap(0.90),
    "bootstrap 95%, no window": bootstrap(0.95, None),
    "fixed sequence 95%": bootstrap(0.95, sequential=True),
    "fixed sequence 90%, every 4th tradeoff": bootstrap(0.90, sequential=True, stride=4),
    "fixed sequence 90%, every 10th tradeoff": bootstrap(0.90, sequential=True, stride=10),
    "fixed sequence 90%, no window": bootstrap(0.90, None, sequential=True),
    "gap prior 50 + bootstrap 95%": bootstrap(0.95, prior_records=50),
    "gap prior 100 + fixed sequence 90%": bootstrap(0.90, sequential=True, prior_records=100),
    "point estimate": lambda c: search(c, lambda ok, ch: ch.mean() / ok[:, 2].mean() >= TARGET, False),
}


def load_cache(out: Path, ks, draws):
    for path in sorted((out / "cache").glob("*.npz")):
        f, k, d = path.stem.rsplit("-", 2)
        if int(k) in ks and int(d) in draws:
            c = dict(np.load(path))
            if "prior_gaps" not in c:  # caches written before the gaps were: kept beside them
                c["prior_gaps"] = np.array(json.loads(path.with_suffix(".gaps.json").read_text()))
            yield f, int(k), int(d), c


def evaluate(out: Path, ks, draws, methods) -> list[dict]:
    rows = []
    for f, k, d, c in load_cache(out, ks, draws):
        curve = savings_at_quality([routed(c, t) for t in TRADEOFFS], TARGET) or 0.0
        for name in methods:
            q, s = routed(c, METHODS[name](c))
            rows.append({"file": f, "k": k, "draw": d, "method": name, "curve": curve, "quality": q, "savings": s})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| file | K | method | curve s@95 (of full) | shipped savings (of full) | shipped quality (min) | >= 0.95 |",
             "|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(METHODS)}
    for f, k, m in sorted({(r["file"], r["k"], r["method"]) for r in rows}, key=lambda x: (x[0], x[1], order[x[2]])):
        cell = [r for r in rows if (r["file"], r["k"], r["method"]) == (f, k, m)]
        cu, sa = np.median([r["curve"] for r in cell]), np.median([r["savings"] for r in cell])
        lines.append(f"| {f} | {k} | {m} | {cu:.1%} ({cu / FULL[f]:.0%}) | {sa:.1%} ({sa / FULL[f]:.0%}) | "
                     f"{min(r['quality'] for r in cell):.3f} | {sum(r['quality'] >= TARGET for r in cell)}/{len(cell)} |")
    return "\n".join(lines)


def diagnose(out: Path, ks, draws) -> None:
    """Is the bound or the fit the conservative part? Per cached draw, at the shipped tradeoff: the unseen curve's
    savings at the shipped point's own quality (the fit's), the variance a prediction-powered estimate would keep
    (var(d - d_hat) / var(d), d = chosen tier's success - 0.95 x tier 3's), and the sample's tier gaps."""
    for f, k, d, c in load_cache(out, ks, draws):
        t = METHODS[SHIPPED](c)
        q, s = routed(c, t)
        points = [routed(c, u) for u in TRADEOFFS]
        on_curve = max([sv for qq, sv in points if qq >= q - 1e-12], default=0.0)
        ok, rows = c["dev_ok"].astype(float), np.arange(len(c["dev_ok"]))
        tiers = decide(c["oof"], c["relative_cost"], t)
        dd = ok[rows, tiers - 1] - TARGET * ok[:, 2]
        dh = c["oof"][rows, tiers - 1] - TARGET * c["oof"][:, 2]
        ratio = np.var(dd - dh) / np.var(dd) if np.var(dd) else float("nan")
        unseen = c["ok"].astype(float)
        print(f"{f} K={k} draw={d}: shipped {s:.1%} at {q:.3f}; curve at that quality {on_curve:.1%}; "
              f"PPI variance kept {ratio:.2f}; tier gaps sample {np.round(ok[:, :2].mean(0) / ok[:, 2].mean(), 3)} "
              f"unseen {np.round(unseen[:, :2].mean(0) / unseen[:, 2].mean(), 3)} prior {np.round(c['prior_gaps'], 3)}")


def paired(rows: list[dict]) -> str:
    """Per file and K, the shipped calibration's savings against 0019's on the same draws."""
    lines = []
    for f, k in sorted({(r["file"], r["k"]) for r in rows}):
        new = {r["draw"]: r for r in rows if (r["file"], r["k"], r["method"]) == (f, k, SHIPPED)}
        old = {r["draw"]: r for r in rows if (r["file"], r["k"], r["method"]) == (f, k, OLD)}
        d = np.array([new[i]["savings"] - old[i]["savings"] for i in sorted(new)])
        lines.append(f"{f} K={k}, {len(d)} draws: shipped minus 0019 {d.mean():+.1%} on average, more in "
                     f"{(d > 1e-3).sum()}, less in {(d < -1e-3).sum()} ({', '.join(f'{v:+.1%}' for v in d if v < -1e-3)}); "
                     f"quality >= 0.95 in {sum(r['quality'] >= TARGET for r in new.values())} and "
                     f"{sum(r['quality'] >= TARGET for r in old.values())}")
    return "\n".join(lines)


def draw_parser(doc: str) -> argparse.ArgumentParser:
    """The options every probe over these draws takes: which K, which draws, and whether to fit them."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="50,100,200,400,800")
    ap.add_argument("--draws", default="3,4,5")
    ap.add_argument("--fit", action="store_true", help="fit and cache the draws")
    return ap


def main() -> None:
    ap = draw_parser(__doc__)
    ap.add_argument("--one-se", action="store_true", help="fit with the one-standard-error model choice (cached "
                    "under OUT/one-se)")
    ap.add_argument("--methods", default="", help="';'-separated names (default: all)")
    ap.add_argument("--diagnose", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--all-labels", action="store_true", help="fit on all K records drawn (train's held-out fifth "
                    "not set aside)")
    args = ap.parse_args()
    if not shared_files():
        raise SystemExit("no records: this probe needs ../shared/data/routing")
    ks, draws = [int(k) for k in args.k.split(",")], [int(d) for d in args.draws.split(",")]
    out = args.out / "one-se" if args.one_se else args.out
    if args.fit:
        if args.one_se:
            fitting.select = one_se_select
        return fit_cache(ks, draws, out, args.all_labels)
    if args.diagnose:
        return diagnose(out, ks, draws)
    rows = evaluate(out, ks, draws, args.methods.split(";") if args.methods else list(METHODS))
    text = table(rows) + ("\n\n" + paired(rows) if {SHIPPED, OLD} <= {r["method"] for r in rows} else "")
    name = f"TABLE-draws-{'-'.join(map(str, draws))}.md"
    (out / name).write_text(text + "\n")
    if {SHIPPED, OLD} <= {r["method"] for r in rows} and len({r["k"] for r in rows}) > 1:
        plot(rows, FULL, out / f"learning-curve-draws-{'-'.join(map(str, draws))}.png", ((OLD, "--"), (SHIPPED, "-")))
    print(text)


if __name__ == "__main__":
    main()
