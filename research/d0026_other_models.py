"""Decision 0026, later questions: from a new lineup's first K labels, does anything route better than the one model
`fitting.select` picks by out-of-fold log loss: an average of its grid's models, or the labelled neighbours?

At K = 200 the log losses of the grid's settings lie close together, so the choice between them is partly chance.
For each of decision 0022's draws (leave one source out, K records by id hash, the development part, the priors
trained on the other files), every setting of the grid (C, and with the prior heads their embedding scale) is
fitted, out of fold and on the whole sample. The averages are taken in logit space, where linear models stay one
linear model, so each would fold into an ordinary head. Weights per setting: `chosen` (all on the best: what
`tierwise train` does), `bma` (exp(-n * (loss - best loss)), n = records x tiers, as a posterior would weigh them),
`bma/10` (tempered tenfold), `uniform`, and `prior-only` (the best setting that keeps the embedding out).
`neighbours k` estimates each tier's success from the k labelled queries nearest by cosine (weights
exp(cosine / 0.05), shrunk towards the sample's rate by one query's weight; out of fold: each labelled query
without itself), which no linear head can serve; `chosen + neighbours 25` averages the two in logit space.
Each method is calibrated by the shipped `calibrate_arrays` on its own out-of-fold predictions and scored on the
file's unseen records: curve savings@95 and the shipped point, with the support check of 0022's cached fit.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0026_other_models --k 200 --draws 0,1,2,3,4,5,6,7,8,9,10,11

Needs 0022's cache of the same draws (`research.d0022_small_sample_calibration --fit`), for its support checks.
"""
from __future__ import annotations

import argparse

import numpy as np

from classifier_service.heads import success
from tierwise.data import arrays, load, shared_files
from tierwise.metrics import savings_at_quality
from tierwise_tools.calibration import TRADEOFFS, calibrate_arrays
from tierwise_tools.fitting import fit, lineup, log_loss, out_of_fold, settings
from tierwise_tools.prior import Prior, usable

from . import d0022_small_sample_calibration as d0022
from .common import embed
from .d0019_few_label_transfer import prior_heads

METHODS = ("chosen", "bma", "bma/10", "uniform", "prior-only", "neighbours 10", "neighbours 25",
           "chosen + neighbours 25")
TEMPERATURE = 0.05  # of the neighbours' cosine weights


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def mean_logit(probabilities: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-sum(wi * logit(p) for wi, p in zip(w, probabilities))))


def weights(losses: dict, n: int) -> dict[str, np.ndarray]:
    keys, loss = list(losses), np.array(list(losses.values()))
    prior_only = [i for i, k in enumerate(keys) if k[2] and k[1] == 0.0]
    return {"chosen": (loss == loss.min()).astype(float), "bma": np.exp(-n * (loss - loss.min())),
            "bma/10": np.exp(-n / 10 * (loss - loss.min())), "uniform": np.ones(len(keys)),
            "prior-only": np.isin(np.arange(len(keys)), [min(prior_only, key=lambda i: loss[i])]).astype(float)}


def neighbours(x_dev: np.ndarray, ok: np.ndarray, x: np.ndarray, k: int, self_excluded: bool) -> np.ndarray:
    """(n, 3) success rates of each row of `x` among its k nearest labelled queries (unit embeddings)."""
    near = x @ x_dev.T
    if self_excluded:
        np.fill_diagonal(near, -np.inf)
    idx = np.argpartition(-near, k, axis=1)[:, :k]
    w = np.take_along_axis(near, idx, axis=1)
    w = np.exp((w - w.max(axis=1, keepdims=True)) / TEMPERATURE)
    return ((w[:, :, None] * ok[idx]).sum(axis=1) + ok.mean(axis=0)) / (w.sum(axis=1, keepdims=True) + 1)


def scored(records, x, priors, k: int, draw: int, cache: dict) -> dict[str, tuple[float, float, float]]:
    """Method -> (curve savings@95, shipped quality, shipped savings) on the unseen records of one draw."""
    rows, rest = d0022.drawn(records, k, draw)
    ok_all, cost_all = arrays(records)
    x_dev, ok = x[rows], ok_all[rows].astype(np.float64)
    prior = Prior.from_heads(usable(priors, x.shape[1], lineup([records[i] for i in rows])))
    grid = settings(None, True)
    oof = {key: out_of_fold(x_dev, ok, key[0], 0, prior=prior if key[2] else None, scale=key[1]) for key in grid}
    full = {key: fit(x_dev, ok, key[0], prior if key[2] else None, key[1]) for key in grid}
    predicted = {}  # method -> (out-of-fold predictions on the sample, predictions on the unseen records)
    for method, w in weights({key: log_loss(oof[key], ok) for key in grid}, ok.size).items():
        w = w / w.sum()
        coef = sum(wi * full[key][0] for wi, key in zip(w, grid))
        intercept = sum(wi * full[key][1] for wi, key in zip(w, grid))
        predicted[method] = (mean_logit([oof[key] for key in grid], w), success(x[rest], coef, intercept))
    for n in (10, 25):
        predicted[f"neighbours {n}"] = (neighbours(x_dev, ok, x_dev, n, True), neighbours(x_dev, ok, x[rest], n, False))
    predicted["chosen + neighbours 25"] = tuple(mean_logit([a, b], np.array([0.5, 0.5])) for a, b in
                                                 zip(predicted["chosen"], predicted["neighbours 25"]))
    out = {}
    for method, (sample_p, unseen_p) in predicted.items():
        c = {**cache, "p": unseen_p}
        curve = savings_at_quality([d0022.routed(c, t) for t in TRADEOFFS], d0022.TARGET) or 0.0
        tradeoff = calibrate_arrays(ok, cost_all[rows], sample_p, cache["relative_cost"], d0022.TARGET)[0]
        out[method] = (curve, *d0022.routed(c, tradeoff))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="200")
    ap.add_argument("--draws", default="0,1,2,3,4,5,6,7,8,9,10,11")
    args = ap.parse_args()
    ks, draws = [int(v) for v in args.k.split(",")], [int(v) for v in args.draws.split(",")]
    files = {p.name.split(".")[0]: (records, embed(records)) for p in shared_files() for records in [load([p])]}
    print("| file | K | method | curve s@95 (of full) | shipped savings (of full) | shipped quality (min) | >= 0.95 | "
          "paired with chosen: shipped, curve (mean; draws more / less by 0.5 points) |\n|---|---|---|---|---|---|---|---|")
    for left, (records, x) in files.items():
        priors = prior_heads(files, left)
        for k in ks:
            runs = [scored(records, x, priors, k, d, c) for f, _, d, c in d0022.load_cache(d0022.OUT, [k], draws)
                    if f == left]
            base = {i: np.array([r["chosen"][i] for r in runs]) for i in (0, 2)}
            for method in METHODS:
                curve, quality, savings = (np.array([r[method][i] for r in runs]) for i in range(3))
                full = d0022.FULL[left]
                paired = ", ".join(f"{d.mean():+.1%} ({(d > 0.005).sum()} / {(d < -0.005).sum()})"
                                   for d in (savings - base[2], curve - base[0]))
                print(f"| {left} | {k} | {method} | {np.median(curve):.1%} ({np.median(curve) / full:.0%}) | "
                      f"{np.median(savings):.1%} ({np.median(savings) / full:.0%}) | {quality.min():.3f} | "
                      f"{(quality >= d0022.TARGET).sum()}/{len(runs)} | {paired} |", flush=True)

if __name__ == "__main__":
    main()
