"""Decision 0019: a new lineup's head from its first K labels, leave one source out.

Each shared dev file plays "new traffic" in turn. The prior heads are trained on the other files only (a pooled
head and one per other lineup, each with its support, as the shipped heads are). From the left-out file, K records
are drawn by id hash (several draws); `tierwise train`'s own fitting (`fit_head`, holding out its fifth) runs on
them with the priors and without, and the head is scored on every record of the file it never saw: the shipped
point (quality vs frontier, savings) and the curve's savings at 95%. The full-data figure is the shipped lineup
head's held-out curve savings@95 (its model card).

    .venv/bin/python -m research.d0019_few_label_transfer [--k 50,100,200,400,800] [--draws 3] [--out DIR]

`--support` measures how much of a file's own traffic a support fitted on K of its queries puts outside: with at
least 16 centroids (the rule before this record) and with one per 100 queries (now); draw 0.

`--simulate` runs `tierwise simulate` on each dev file at shadow rates 0.05 and 0.5, starting from heads that never
saw that file: a default head pooled over the other files (calibrated leave-one-lineup-out, as `make train` does)
and the other lineups' heads, written under DIR/heads-without-<file>.

    .venv/bin/python -m research.d0019_few_label_transfer --simulate [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from classifier_service.heads import HeadRegistry, TierHead, decide, success
from tierwise.data import arrays, load, shared_files, split
from tierwise.metrics import routing_metrics, savings_at_quality
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.fitting import fit, fit_head, fit_support, lineup
from tierwise_tools.paths import HEADS_DIR, ROOT

from .common import embed

TARGET = 0.95


def prior_heads(files: dict, left: str) -> list[TierHead]:
    """Heads trained on every file but `left`: pooled, and one per lineup, each with its support (C=0.5)."""
    def head(name, records, x):
        coef, intercept = fit(x, arrays(records)[0].astype(float), 0.5)
        return TierHead(name=name, version="prior", coef=coef, intercept=intercept, models=lineup(records),
                        support=fit_support(x))
    others = [n for n in files if n != left]
    pooled = [r for n in others for r in files[n][0]]
    return [head("prior-pooled", pooled, np.vstack([files[n][1] for n in others]))] + \
        [head(f"prior-{n}", *files[n]) for n in others]


def scored(fitted, records, x) -> dict:
    """The head's shipped point on `records` and its curve savings at 95% (support check on throughout)."""
    p, outside = success(x, fitted.coef, fitted.intercept), fitted.support.outside(x)
    shipped = routing_metrics(records, decide(p, fitted.relative_cost, fitted.calibration[f"{TARGET:g}"], outside))
    points = [(m["quality_vs_frontier"], m["cost_savings"]) for t in TRADEOFFS
              for m in [routing_metrics(records, decide(p, fitted.relative_cost, t, outside))]]
    return {"quality": round(shipped["quality_vs_frontier"], 4), "savings": round(shipped["cost_savings"], 4),
            "curve": round(savings_at_quality(points, TARGET) or 0.0, 4),
            "prior_used": fitted.chosen.prior is not None}


def full_data(records) -> float | None:
    head = next((h for h in HeadRegistry.from_dir(HEADS_DIR) if h.models == lineup(records)), None)
    return float(head.card["held_out_savings_at_0.95_curve"]) if head else None


def run(ks: list[int], draws: int, out: Path) -> list[dict]:
    files = {p.name.split(".")[0]: (records, embed(records)) for p in shared_files() for records in [load([p])]}
    rows = []
    for left, (records, x) in files.items():
        priors = prior_heads(files, left)
        for k in ks:
            for draw in range(draws):
                order = sorted(range(len(records)),
                               key=lambda i: hashlib.sha256(f"{draw}:{records[i].id}".encode()).hexdigest())
                sample, rest = order[:k], order[k:]
                dev, _ = split([records[i] for i in sample])
                ids = {r.id for r in dev}
                rows_dev = [i for i in sample if records[i].id in ids]
                unseen = [records[i] for i in rest]
                for method, given in (("alone", ()), ("prior", priors)):
                    fitted = fit_head(dev, x[rows_dev], [TARGET], priors=given)
                    rows.append({"file": left, "k": k, "draw": draw, "method": method, "n_fit": len(dev),
                                 **scored(fitted, unseen, x[rest])})
                    print(json.dumps(rows[-1]), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.json").write_text(json.dumps({"rows": rows, "full": {n: full_data(files[n][0]) for n in files}}))
    return rows


def table(rows: list[dict], full: dict) -> str:
    lines = ["| file | K | method | curve s@95 (median) | vs full | shipped savings (median) | vs full | "
             "shipped quality (min) | draws >= 0.95 |", "|---|---|---|---|---|---|---|---|---|"]
    for (f, k, m) in sorted({(r["file"], r["k"], r["method"]) for r in rows}):
        cell = [r for r in rows if (r["file"], r["k"], r["method"]) == (f, k, m)]
        curve, saved = np.median([r["curve"] for r in cell]), np.median([r["savings"] for r in cell])
        ok = sum(r["quality"] >= TARGET for r in cell)
        ref = full.get(f)
        lines.append(f"| {f} | {k} | {m} | {curve:.1%} | {curve / ref:.0%} | {saved:.1%} | {saved / ref:.0%} | "
                     f"{min(r['quality'] for r in cell):.3f} | {ok}/{len(cell)} |" if ref else "")
    return "\n".join(lines)


def plot(rows: list[dict], full: dict, path: Path, methods=(("alone", "--"), ("prior", "-"))) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["file"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, style in methods:
            cell = [r for r in rows if r["file"] == name and r["method"] == method]
            ks = sorted({r["k"] for r in cell})
            for key, label in (("curve", "curve savings@95"), ("savings", "shipped savings")):
                ax.plot(ks, [np.median([r[key] for r in cell if r["k"] == k]) for k in ks], style, marker="o",
                        label=f"{method}: {label}")
        if full.get(name):
            ax.axhline(full[name], color="grey", linewidth=0.8, label="full data: curve savings@95")
        ax.set_xscale("log")
        ax.set_xlabel("K labelled records of the new lineup")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heads_without(files: dict, left: str, out: Path) -> Path:
    """A heads directory like the shipped one, trained without `left`: `default` pooled over the other files and
    calibrated as `tierwise train` calibrates it, plus the other lineups' heads."""
    others = [n for n in files if n != left]
    pooled = [r for n in others for r in files[n][0]]
    fitted = fit_head(pooled, np.vstack([files[n][1] for n in others]), [TARGET])
    default = fitted.head("default", f"without-{left}", TARGET)
    directory = out / f"heads-without-{left}"
    default.publish(directory / "default")
    for head in prior_heads(files, left)[1:]:
        head.publish(directory / head.name)
    return directory


def support_sizes(ks: list[int]) -> None:
    from classifier_service.heads import Support, unit
    from sklearn.cluster import KMeans

    def fitted(x: np.ndarray, k: int) -> Support:  # fit_support's rule with the number of centroids given
        rows = unit(x)
        km = KMeans(k, n_init=3, random_state=0).fit(rows)
        centroids = unit(km.cluster_centers_).astype(np.float32)
        near = rows @ centroids.T
        return Support(centroids, np.array([np.quantile(near[km.labels_ == j, j], 0.05) for j in range(k)],
                                           dtype=np.float32))

    for p in shared_files():
        records = load([p])
        x = embed(records)
        order = sorted(range(len(records)), key=lambda i: hashlib.sha256(f"0:{records[i].id}".encode()).hexdigest())
        for k in ks:
            seen, rest = x[order[:k]], x[order[k:]]
            before, now = fitted(seen, min(max(16, k // 100), k)), fit_support(seen)
            print(f"{p.name} K={k}: outside with {len(before.bars)} centroids {before.outside(rest).mean():.0%}, "
                  f"with {len(now.bars)} {now.outside(rest).mean():.0%}", flush=True)


def simulations(out: Path) -> None:
    files = {p.name.split(".")[0]: (records, embed(records)) for p in shared_files() for records in [load([p])]}
    paths = {p.name.split(".")[0]: p for p in shared_files()}
    for left in files:
        heads = heads_without(files, left, out)
        for rate in (0.05, 0.5):
            result = subprocess.run([sys.executable, "-m", "tierwise_tools.cli", "simulate", "--data", str(paths[left]),
                                     "--shadow-rate", str(rate), "--heads-dir", str(heads), "--json",
                                     "--report", str(out / f"simulate-{left}-{rate}")],
                                    capture_output=True, text=True, check=True)
            (out / f"simulate-{left}-{rate}.json").write_text(result.stdout)
            total = json.loads(result.stdout)["total"]
            last = json.loads(result.stdout)["windows"][-1]
            print(f"{left} rate {rate}: total {total}; last window {last}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="50,100,200,400,800")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "research" / "d0019")
    ap.add_argument("--simulate", action="store_true", help="the simulator on each dev file at rates 0.05 and 0.5")
    ap.add_argument("--support", action="store_true", help="how much of a file's own traffic its K-query support "
                    "puts outside, before and after this record")
    args = ap.parse_args()
    if not shared_files():
        raise SystemExit("no records: this probe needs ../shared/data/routing")
    if args.simulate:
        return simulations(args.out)
    if args.support:
        return support_sizes([int(k) for k in args.k.split(",")])
    rows = run([int(k) for k in args.k.split(",")], args.draws, args.out)
    full = json.loads((args.out / "rows.json").read_text())["full"]
    (args.out / "TABLE.md").write_text(table(rows, full) + "\n")
    plot(rows, full, args.out / "learning-curve.png")
    print(table(rows, full))


if __name__ == "__main__":
    main()
