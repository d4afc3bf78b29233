"""Decision 0026, added in session 29: does a head on a few principal components of the K queries route better?

At K = 200 the out-of-fold log loss that `select` minimises prefers models that predict outcomes better, and
decision 0026 found they route no better. A head on the first 2, 4 or 8 principal components of the user's own
queries (PCA fitted on those K queries, C = 0.25 on standardised components) is a far smaller model; it folds
back into an ordinary linear head, so the classifier would serve it unchanged. Per draw (0022's leave-one-source-
out draws: K records by id hash, `tierwise train`'s development part, the priors of 0019), it is scored beside
`fit_head` on every record not drawn: the curve's savings@95 and the point the shipped calibration
(`calibrate_arrays` on the model's own out-of-fold predictions) chooses, support check on. `by_oof_curve` picks,
per draw, the model whose out-of-fold curve on the K labels is highest.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0026_pca_heads --draws 0-11 --k 200 > pca.jsonl   # ~5 min
    .venv/bin/python -m research.d0026_pca_heads --summary pca.jsonl
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from classifier_service.heads import success
from tierwise.data import arrays, load, shared_files
from tierwise.metrics import savings_at_quality
from tierwise_tools import fitting
from tierwise_tools.calibration import TRADEOFFS, calibrate_arrays

from .common import embed
from .d0019_few_label_transfer import prior_heads
from .d0022_small_sample_calibration import FULL, TARGET, drawn, routed
from .d0031_calibration_ceiling import draw_list

DIMS = (2, 4, 8)
C = 0.25
METHODS = ("shipped", *(f"pca{d}" for d in DIMS), "by_oof_curve")


def pca_fit(x: np.ndarray, ok: np.ndarray, dims: int, c: float = C) -> tuple[np.ndarray, np.ndarray]:
    """(coef (3, d), intercept (3,)): per-tier logistic models on the first `dims` standardised principal
    components of `x`, folded back into the embedding."""
    mu = x.mean(0)
    v = np.linalg.svd(x - mu, full_matrices=False)[2][:dims]
    z = (x - mu) @ v.T
    scale = z.std(0) + 1e-9
    coef, intercept = np.zeros((3, x.shape[1])), np.zeros(3)
    for t in range(3):
        if ok[:, t].min() == ok[:, t].max():
            rate = (ok[:, t].sum() + 0.5) / (len(ok) + 1)
            intercept[t] = np.log(rate / (1 - rate))
            continue
        model = LogisticRegression(C=c, max_iter=3000).fit(z / scale, ok[:, t])
        w = (model.coef_[0] / scale) @ v
        coef[t], intercept[t] = w, model.intercept_[0] - w @ mu
    return coef, intercept


def out_of_fold(x: np.ndarray, ok: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    out = np.zeros(ok.shape)
    for tr, va in KFold(5, shuffle=True, random_state=seed).split(x):
        out[va] = success(x[va], *pca_fit(x[tr], ok[tr], dims))
    return out


def curve(c: dict) -> float:
    return savings_at_quality([routed(c, t) for t in TRADEOFFS], TARGET) or 0.0


def run(draws: list[int], ks: list[int]) -> None:
    files = {p.name.split(".")[0]: (r, embed(r)) for p in shared_files() for r in [load([p])]}
    for left, (records, x) in files.items():
        priors = prior_heads(files, left)
        ok_all, cost_all = arrays(records)
        for k in ks:
            for draw in draws:
                rows, rest = drawn(records, k, draw)
                xd, okd, costd = x[rows], ok_all[rows].astype(float), cost_all[rows]
                fitted = fitting.fit_head([records[i] for i in rows], xd, [TARGET], priors=priors)
                rc = np.array(fitted.relative_cost)
                unseen = {"outside": fitted.support.outside(x[rest]), "ok": ok_all[rest], "cost": cost_all[rest],
                          "relative_cost": rc}
                on_labels = {"outside": np.zeros(len(rows), bool), "ok": okd, "cost": costd, "relative_cost": rc}
                p = success(x[rest], fitted.coef, fitted.intercept)
                row = {"file": left, "k": k, "draw": draw,
                       "shipped": (curve({**unseen, "p": p}), *routed({**unseen, "p": p}, fitted.calibration[f"{TARGET:g}"]))}
                label_curves = {"shipped": curve({**on_labels, "p": fitted.chosen.oof})}
                for dims in DIMS:
                    oof = out_of_fold(xd, okd, dims)
                    p = success(x[rest], *pca_fit(xd, okd, dims))
                    tradeoff = calibrate_arrays(okd, costd, oof, tuple(rc), TARGET)[0]
                    row[f"pca{dims}"] = (curve({**unseen, "p": p}), *routed({**unseen, "p": p}, tradeoff))
                    label_curves[f"pca{dims}"] = curve({**on_labels, "p": oof})
                row["picked"] = max(label_curves, key=label_curves.get)
                row["by_oof_curve"] = row[row["picked"]]
                print(json.dumps(row), flush=True)


def summary(path: Path) -> str:
    """Per file and K: each method's median curve and shipped savings (share of full), its mean difference from
    `fit_head`'s per draw (draws more / less by over half a point), and the shipped quality."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells = collections.defaultdict(list)
    for r in rows:
        cells[(r["file"], r["k"])].append(r)
    lines = ["| file | K | draws | method | curve s@95 (of full) | vs fit_head | shipped savings (of full) | vs fit_head "
             "| shipped quality min; >= 0.95 |", "|---|---|---|---|---|---|---|---|---|"]
    for (f, k), rs in sorted(cells.items()):
        base = np.array([r["shipped"] for r in rs])
        for m in METHODS:
            v = np.array([r[m] for r in rs])
            dc, ds = v[:, 0] - base[:, 0], v[:, 2] - base[:, 2]
            lines.append(f"| {f} | {k} | {len(rs)} | {m} | {np.median(v[:, 0]):.1%} ({np.median(v[:, 0]) / FULL[f]:.0%}) "
                         f"| {dc.mean() * 100:+.1f} ({(dc > 0.005).sum()}/{(dc < -0.005).sum()}) "
                         f"| {np.median(v[:, 2]):.1%} ({np.median(v[:, 2]) / FULL[f]:.0%}) "
                         f"| {ds.mean() * 100:+.1f} ({(ds > 0.005).sum()}/{(ds < -0.005).sum()}) "
                         f"| {v[:, 1].min():.3f}; {(v[:, 1] >= TARGET).sum()}/{len(rs)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", default="0-11")
    ap.add_argument("--k", default="200")
    ap.add_argument("--summary", type=Path, help="print the table of a run's JSON lines")
    args = ap.parse_args()
    if args.summary:
        print(summary(args.summary))
    else:
        run(draw_list(args.draws), [int(k) for k in args.k.split(",")])


if __name__ == "__main__":
    main()
