"""Fit the tier head served by the classifier: one logistic model per tier over sentence embeddings.

Label of tier t's model = "tier t's recorded answer was acceptable". One record in five, chosen by id
hash, is held out and only ever scored. The regularisation strength is chosen, and the tradeoff
calibrated, on out-of-fold predictions of the development part, never on the held-out part.
The head's support (k-means centroids of the dev queries, one per ~100, each with a similarity bar) is
fitted on the dev part too. The tradeoff is calibrated without the check, which only ever adds tier 3.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from tqdm import tqdm

from classifier_service.encoder import Encoder
from classifier_service.heads import Support, TierHead, decide, success, unit
from tierwise.data import DataError, Record, arrays, check_measurable, load, split
from tierwise.metrics import QUALITY_TARGETS, routing_metrics
from tierwise.tiers import N_TIERS

from .calibration import WINDOW, calibrate
from .embeddings import embed_records
from .evaluate import tradeoff_replay
from .paths import EMBEDDINGS_DIR, ENCODER_DIR

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
    """k-means over the unit embeddings, one centroid per QUERIES_PER_CENTROID queries (16 to 128); each
    centroid's bar is the SUPPORT_QUANTILE of its own queries' similarity to it."""
    k = int(np.clip(len(x) // QUERIES_PER_CENTROID, 16, 128))
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


def train(data: list[Path], out: Path, name: str, target_quality: float, c: float | None = None,
          seed: int = 0) -> TierHead:
    records = load(data)
    dev, test = split(records)
    part = "the development part (records not held out)"
    check_measurable(dev, part)
    if len(dev) < MIN_DEV_RECORDS:
        raise DataError(f"{part}: {len(dev)} records; at least {MIN_DEV_RECORDS} are needed to cross-validate and "
                        "calibrate a head (label more with `tierwise label`)")
    encoder = Encoder(ENCODER_DIR, "int8", threads=2)
    x_all = embed_records(encoder, records, EMBEDDINGS_DIR)
    index = {id(r): i for i, r in enumerate(records)}
    x_dev = x_all[[index[id(r)] for r in dev]]
    x_test = x_all[[index[id(r)] for r in test]]
    ok_dev = arrays(dev)[0].astype(np.float64)
    costs = relative_cost(dev)

    grid = C_GRID if c is None else (c,)
    losses, oofs = {}, {}
    for value in tqdm(grid, desc="cross-validation", unit="C"):
        oofs[value] = out_of_fold(x_dev, ok_dev, value, seed)
        losses[value] = log_loss(oofs[value], ok_dev)
    c = min(grid, key=losses.get)
    oof = oofs[c]
    calibration_oof, pooled = calibration_predictions(dev, x_dev, ok_dev, c, seed, oof)
    targets = sorted({*QUALITY_TARGETS, target_quality})
    calibration = {f"{t:g}": calibrate(dev, calibration_oof, costs, t)[0]
                   for t in tqdm(targets, desc="calibration", unit="target")}
    tradeoff = calibration[f"{target_quality:g}"]
    coef, intercept = fit(x_dev, ok_dev, c)
    support = fit_support(x_dev, seed)
    p_test = success(x_test, coef, intercept)
    outside_test = support.outside(x_test)
    cv = routing_metrics(dev, decide(oof, costs, tradeoff))
    try:
        check_measurable(test, "the held-out part")
        held = tradeoff_replay("held-out", test, [(np.arange(len(test)), p_test, costs, tradeoff, outside_test)]
                               ).result(target_quality)
        held_out = {**{f"held_out_{k}": _fmt(v) for k, v in held["operating_point"].items()
                       if k != "avg_latency_overhead_ms"},
                    **{f"held_out_savings_at_{q}_curve": _fmt(v) for q, v in held["curve"]["savings_at_quality"].items()}}
    except DataError as err:
        held_out = {"held_out": f"not measured: {err}"}

    when = time.strftime("%Y-%m-%d")
    models = lineup(records)
    card = {
        "data": ", ".join(f"{p.name} ({sum(1 for r in records if r.source == p.name.split('.')[0])} records)" for p in data),
        "lineup": " / ".join(models) if models else "pooled: " + "; ".join(sorted({" / ".join(r.models) for r in records})),
        "split": "sha256(id) % 5 == 0 held out; fit, select and calibrate on the rest",
        "trained": when,
        "encoder": encoder.version,
        "model": f"per-tier logistic regression P(tier t acceptable), C={c:g} chosen by 5-fold out-of-fold log loss "
                 f"({', '.join(f'{k:g}: {v:.4f}' for k, v in losses.items())})",
        "rule": "tier = argmax_t P_t - tradeoff x relative_cost_t",
        "calibration": (f"per target {', '.join(calibration)}: the cheapest tradeoff whose 95% lower bootstrap bound "
                        f"of quality vs frontier over a window of {WINDOW} new queries meets the target, on "
                        + ("leave-one-lineup-out predictions of the dev part (each lineup predicted by a model fitted "
                           "on the others)" if pooled else "out-of-fold predictions of the dev part")),
        "support": (f"{len(support.bars)} k-means centroids of the dev queries, each with a bar at the "
                    f"{SUPPORT_QUANTILE:.0%} quantile of its own queries' similarity; held out records outside: "
                    + (f"{outside_test.mean():.1%}" if len(test) else "none held out")),
        "n_dev": str(len(dev)),
        "n_held_out": str(len(test)),
        **{f"cv_{k}": _fmt(v) for k, v in cv.items()},
        **held_out,
    }
    head = TierHead(name=name, version="", coef=coef, intercept=intercept, relative_cost=costs, tradeoff=tradeoff,
                    target_quality=target_quality, encoder=encoder.version, models=models, card=card,
                    calibration=calibration, support=support).versioned(when)
    head.publish(out)
    return head


def _fmt(v) -> str:
    if v is None:
        return "none"
    return json.dumps([round(x, 4) for x in v]) if isinstance(v, list) else f"{v:.4f}"
