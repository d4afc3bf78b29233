"""Fitting a head's tier models, choosing their regularisation and support: what `train` runs, without its I/O.

Kept apart from train.py so that code needing only the fitting (the research probes, some in the export venv)
does not import the replay machinery and the router it brings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from tqdm import tqdm

from classifier_service.heads import Support, TierHead, decide, success, unit
from tierwise.data import Record, arrays, repeats
from tierwise.tiers import N_TIERS

from .calibration import calibrate
from .prior import Prior, joined_support, usable

C_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)
PRIOR_SCALES = (0.0, 0.25, 1.0)  # the embedding correction's scale beside a prior: none, damped, as a plain head
QUERIES_PER_CENTROID = 100
SUPPORT_QUANTILE = 0.05  # share of each centroid's own queries below its bar
MIN_DEV_RECORDS = 25  # five cross-validation folds of five


def fit(x: np.ndarray, ok: np.ndarray, c: float, prior: Prior | None = None,
        scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(coef (3, d), intercept (3,)) of one logistic model per tier; a tier that always (or never) succeeds
    in the data gets a constant model at its smoothed success rate. With a `prior`, each tier's model is fitted
    on the prior heads' logits and the embedding scaled by `scale`, then folded back into the embedding."""
    coef = np.zeros((N_TIERS, x.shape[1]), dtype=np.float32)
    intercept = np.zeros(N_TIERS, dtype=np.float32)
    features = x if prior is None else prior.features(x, scale)
    for t in range(N_TIERS):
        if ok[:, t].min() == ok[:, t].max():
            rate = (ok[:, t].sum() + 0.5) / (len(ok) + 1.0)
            intercept[t] = np.log(rate / (1 - rate))
            continue
        model = LogisticRegression(C=c, max_iter=3000).fit(features, ok[:, t])
        w, b = model.coef_[0], model.intercept_[0]
        coef[t], intercept[t] = (w, b) if prior is None else prior.fold(w, b, scale)
    return coef, intercept


def out_of_fold(x: np.ndarray, ok: np.ndarray, c: float, seed: int, groups: np.ndarray | None = None,
                prior: Prior | None = None, scale: float = 1.0, same: np.ndarray | None = None) -> np.ndarray:
    """Success probabilities of each row from a model fitted without it: 5 random folds, or with `groups`,
    one fold per group (each group predicted by a model that never saw any of it). Rows `same` numbers alike
    (a repeated record id: see data.repeats) fall in one fold, or a model would be scored on its own
    training rows."""
    oof = np.zeros(ok.shape)
    kfold = KFold(5, shuffle=True, random_state=seed)
    if same is not None and same.max() < 4:  # fewer than five different ids: nothing to keep apart
        same = None
    folds = (((np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in np.unique(groups))
             if groups is not None else kfold.split(x) if same is None else
             ((np.flatnonzero(np.isin(same, tr)), np.flatnonzero(np.isin(same, va)))
              for tr, va in kfold.split(np.arange(int(same.max()) + 1))))
    for tr, va in folds:
        oof[va] = success(x[va], *fit(x[tr], ok[tr], c, prior, scale))
    return oof


@dataclass
class Selected:
    """The model with the best out-of-fold log loss: its regularisation, and whether (and how) it uses a prior."""
    c: float
    scale: float
    prior: Prior | None
    oof: np.ndarray
    losses: dict[tuple[float, float, bool], float]  # (C, scale, with the prior) -> out-of-fold log loss

    def describe(self) -> str:
        grid = ", ".join(f"{c:g}{f'/prior x{s:g}' if with_prior else ''}: {v:.4f}"
                         for (c, s, with_prior), v in self.losses.items())
        model = (f"per-tier logistic regression P(tier t acceptable), C={self.c:g}" if self.prior is None else
                 f"per-tier logistic regression P(tier t acceptable) on the logits of the prior heads "
                 f"{', '.join(self.prior.names)} and the embedding scaled by {self.scale:g}, folded into one linear "
                 f"model, C={self.c:g}")
        return f"{model}; chosen by 5-fold out-of-fold log loss ({grid})"


def settings(c: float | None, with_prior: bool) -> list[tuple[float, float, bool]]:
    """The models `select` chooses among, as (C, the embedding's scale, whether the prior is used): every C (or `c`)
    alone, then with a prior each C at every scale beside it."""
    grid = [(value, 1.0, False) for value in (C_GRID if c is None else (c,))]
    if with_prior:
        grid += [(value, scale, True) for value, _, _ in grid for scale in PRIOR_SCALES]
    return grid


def select(x: np.ndarray, ok: np.ndarray, seed: int, c: float | None = None, prior: Prior | None = None,
           same: np.ndarray | None = None) -> Selected:
    """Choose C, and with a prior whether to use it and the embedding's scale beside it, by 5-fold out-of-fold log
    loss: a prior that does not predict the user's own labels better is left out."""
    grid = settings(c, prior is not None)
    oofs = {key: out_of_fold(x, ok, key[0], seed, prior=prior if key[2] else None, scale=key[1], same=same)
            for key in tqdm(grid, desc="cross-validation", unit="setting")}
    losses = {key: log_loss(oof, ok) for key, oof in oofs.items()}
    best = min(grid, key=losses.get)
    return Selected(best[0], best[1], prior if best[2] else None, oofs[best], losses)


@dataclass
class Fitted:
    """A head's model, calibration and support, fitted on development records as `tierwise train` does."""
    coef: np.ndarray
    intercept: np.ndarray
    relative_cost: tuple[float, float, float]
    calibration: dict[str, float]  # quality target ("0.95") -> tradeoff
    chosen: Selected
    support: Support
    pooled: bool  # calibrated leave-one-lineup-out
    trained_on: tuple[tuple[str, ...], ...]  # the lineups its records name

    def head(self, name: str, version: str, target: float, **facts) -> TierHead:
        """This fit as a head routing at its tradeoff for `target`; `facts`: more of TierHead's fields."""
        return TierHead(name=name, version=version, coef=self.coef, intercept=self.intercept,
                        relative_cost=self.relative_cost, tradeoff=self.calibration[f"{target:g}"],
                        target_quality=target, calibration=self.calibration, support=self.support,
                        trained_on=self.trained_on, **facts)


def fit_head(records: list[Record], x: np.ndarray, targets, c: float | None = None, seed: int = 0,
             priors: Sequence[TierHead] = ()) -> Fitted:
    """Fit and calibrate a head on `records` (embedded as `x`) for each quality target. A head for one lineup may
    build on `priors` (heads trained on other lineups): their tier models become features when they predict the
    records better, and then their supports join its own (docs/decisions/0019). A head pooled over lineups uses
    none: it is calibrated leave-one-lineup-out (decision 0008)."""
    ok = arrays(records)[0].astype(np.float64)
    costs = relative_cost(records)
    models = lineup(records)
    prior = Prior.from_heads([] if pooled(records) else usable(list(priors), x.shape[1], models))
    chosen = select(x, ok, seed, c, prior, repeats(records))
    calibration_oof, left_out = calibration_predictions(records, x, ok, chosen.c, seed, chosen.oof)
    calibration = {f"{t:g}": calibrate(records, calibration_oof, costs, t)[0]
                   for t in tqdm(sorted(set(targets)), desc="calibration", unit="target")}
    coef, intercept = fit(x, ok, chosen.c, chosen.prior, chosen.scale)
    used = [h for h in priors if chosen.prior is not None and h.name in chosen.prior.names]
    support = joined_support(fit_support(x, seed), used)
    named = tuple(sorted({r.models for r in records if any(r.models)}))
    return Fitted(coef, intercept, costs, calibration, chosen, support, left_out, named)


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
    """The records' tier models when they all share one named lineup; () for a pool of lineups, or for records
    that do not name their models (`pooled` tells the two apart)."""
    lineups = {r.models for r in records}
    only = next(iter(lineups))
    return only if len(lineups) == 1 and all(only) else ()


def pooled(records: list[Record]) -> bool:
    """Whether the records come from several tier lineups. Records that all name no models are one lineup: one
    deployment's traffic exported without the model names, which learns like any other lineup."""
    return len({r.models for r in records}) > 1


def calibration_predictions(records: list[Record], x: np.ndarray, ok: np.ndarray, c: float, seed: int,
                            oof: np.ndarray | None = None, by_lineup: bool = True) -> tuple[np.ndarray, bool]:
    """(predictions to calibrate on, whether they are leave-one-lineup-out). A head pooled over lineups
    serves lineups it has no outcomes for, so it is calibrated the way it is used: each lineup predicted
    by a model fitted on the others only (decision 0008). Otherwise: 5-fold out-of-fold predictions."""
    lineups = np.array([" / ".join(r.models) for r in records])
    if by_lineup and len(set(lineups)) > 1:
        return out_of_fold(x, ok, c, seed, groups=lineups), True
    return (out_of_fold(x, ok, c, seed, same=repeats(records)) if oof is None else oof), False


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
