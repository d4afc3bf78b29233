"""Fitting a head's tier models, choosing their regularisation and support: what `train` runs, without its I/O.

Kept apart from train.py so that code needing only the fitting (the research probes, some in the export venv)
does not import the replay machinery and the router it brings.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from classifier_service.heads import Support, decide, success, unit
from tierwise.data import Record, arrays
from tierwise.tiers import N_TIERS

from .calibration import calibrate

C_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)
QUERIES_PER_CENTROID = 100
SUPPORT_QUANTILE = 0.05  # share of each centroid's own queries below its bar
MIN_DEV_RECORDS = 25  # five cross-validation folds of five


def fit(x: np.ndarray, ok: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(coef (3, d), intercept (3,)) of one logistic model per tier; a tier that always (or never) succeeds
    in the data gets a constant model at its smoothed success rate."""
    coef = np.zeros((N_TIERS, x.shape[1]), dtype=np.float32)
    intercept = np.zeros(N_TIERS, dtype=np.float32)
    for t in range(N_TIERS):
        if ok[:, t].min() == ok[:, t].max():
            rate = (ok[:, t].sum() + 0.5) / (len(ok) + 1.0)
            intercept[t] = np.log(rate / (1 - rate))
            continue
        model = LogisticRegression(C=c, max_iter=3000).fit(x, ok[:, t])
        coef[t], intercept[t] = model.coef_[0], model.intercept_[0]
    return coef, intercept


def out_of_fold(x: np.ndarray, ok: np.ndarray, c: float, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Success probabilities of each row from a model fitted without it: 5 random folds, or with `groups`,
    one fold per group (each group predicted by a model that never saw any of it)."""
    oof = np.zeros(ok.shape)
    folds = (KFold(5, shuffle=True, random_state=seed).split(x) if groups is None else
             ((np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in np.unique(groups)))
    for tr, va in folds:
        oof[va] = success(x[va], *fit(x[tr], ok[tr], c))
    return oof


def fit_support(x: np.ndarray, seed: int = 0) -> Support:
    """k-means over the unit embeddings, one centroid per QUERIES_PER_CENTROID queries (1 to 128); each
    centroid's bar is the SUPPORT_QUANTILE of its own queries' similarity to it. Fewer queries make fewer, wider
    centroids: a bar estimated from a handful of queries would put most of the user's own traffic outside
    (decision 0019: with 16 centroids of 200 queries, 27-39% of the same files' other queries)."""
    k = int(np.clip(len(x) // QUERIES_PER_CENTROID, 1, 128))
    rows = unit(x)
    km = KMeans(min(k, len(np.unique(rows, axis=0))), n_init=3, random_state=seed).fit(rows)
    centroids = unit(km.cluster_centers_).astype(np.float32)
    near = rows @ centroids.T
    bars = np.array([np.quantile(near[km.labels_ == j, j], SUPPORT_QUANTILE) if (km.labels_ == j).sum() else 1.0
                     for j in range(len(centroids))], dtype=np.float32)
    return Support(centroids, bars)


def log_loss(p: np.ndarray, ok: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(ok * np.log(p) + (1 - ok) * np.log(1 - p)))


def relative_cost(records: list[Record]) -> tuple[float, float, float]:
    cost = arrays(records)[1].mean(axis=0)
    return tuple(float(c / cost[2]) for c in cost)


def lineup(records: list[Record]) -> tuple[str, ...]:
    """The records' tier models when they all share one lineup; () for a pool of lineups."""
    lineups = {r.models for r in records}
    only = next(iter(lineups))
    return only if len(lineups) == 1 and all(only) else ()


def calibration_predictions(records: list[Record], x: np.ndarray, ok: np.ndarray, c: float, seed: int,
                            oof: np.ndarray | None = None, by_lineup: bool = True) -> tuple[np.ndarray, bool]:
    """(predictions to calibrate on, whether they are leave-one-lineup-out). A head pooled over lineups
    serves lineups it has no outcomes for, so it is calibrated the way it is used: each lineup predicted
    by a model fitted on the others only (decision 0008). Otherwise: 5-fold out-of-fold predictions."""
    lineups = np.array([" / ".join(r.models) for r in records])
    if by_lineup and len(set(lineups)) > 1:
        return out_of_fold(x, ok, c, seed, groups=lineups), True
    return (out_of_fold(x, ok, c, seed) if oof is None else oof), False


def route_unseen(records: list[Record], x: np.ndarray, x_new: np.ndarray, target: float = 0.95, c: float = 0.5,
                 seed: int = 0, by_lineup: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit and calibrate a head on `records` (embedded as `x`) as `train` does, route `x_new` with it:
    (tiers without the support check, tiers with it, rows outside the support)."""
    ok = arrays(records)[0].astype(np.float64)
    costs = relative_cost(records)
    tradeoff = calibrate(records, calibration_predictions(records, x, ok, c, seed, by_lineup=by_lineup)[0],
                         costs, target)[0]
    p = success(x_new, *fit(x, ok, c))
    outside = fit_support(x, seed).outside(x_new)
    return decide(p, costs, tradeoff), decide(p, costs, tradeoff, outside), outside
