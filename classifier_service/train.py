"""Fit the tier head served by the classifier: one logistic model per tier over sentence embeddings.

Label of tier t's model = "tier t's recorded answer was acceptable". One record in five, chosen by id
hash, is held out and only ever scored. The regularisation strength is chosen, and the tradeoff
calibrated, on out-of-fold predictions of the development part, never on the held-out part.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from tqdm import tqdm

from tierwise.data import Record, arrays, load, split
from tierwise.evaluate import tradeoff_replay
from tierwise.metrics import QUALITY_TARGETS, routing_metrics

from .calibration import WINDOW, calibrate
from .encoder import Encoder
from .heads import TierHead, decide, success

ROOT = Path(__file__).resolve().parent.parent
C_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)


def embed_records(encoder: Encoder, records: list[Record], cache_dir: Path) -> np.ndarray:
    """Embeddings of the records' queries, cached on disk per (queries, encoder version)."""
    digest = hashlib.sha256(encoder.version.encode())
    for r in records:
        digest.update(r.query.encode() + b"\0")
    path = cache_dir / f"{digest.hexdigest()[:20]}.npy"
    if path.exists():
        return np.load(path)
    out = np.empty((len(records), encoder.dimension), dtype=np.float32)
    order = sorted(range(len(records)), key=lambda i: len(records[i].query))
    step = 32
    for start in tqdm(range(0, len(order), step), desc="embedding", unit="batch"):
        idx = order[start : start + step]
        out[idx] = encoder.embed([records[i].query for i in idx], batch_size=step)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def fit(x: np.ndarray, ok: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(coef (3, d), intercept (3,)) of one logistic model per tier; a tier that always (or never) succeeds
    in the data gets a constant model at its smoothed success rate."""
    coef = np.zeros((3, x.shape[1]), dtype=np.float32)
    intercept = np.zeros(3, dtype=np.float32)
    for t in range(3):
        if ok[:, t].min() == ok[:, t].max():
            rate = (ok[:, t].sum() + 0.5) / (len(ok) + 1.0)
            intercept[t] = np.log(rate / (1 - rate))
            continue
        model = LogisticRegression(C=c, max_iter=3000).fit(x, ok[:, t])
        coef[t], intercept[t] = model.coef_[0], model.intercept_[0]
    return coef, intercept


def out_of_fold(x: np.ndarray, ok: np.ndarray, c: float, seed: int) -> np.ndarray:
    oof = np.zeros(ok.shape)
    for tr, va in KFold(5, shuffle=True, random_state=seed).split(x):
        oof[va] = success(x[va], *fit(x[tr], ok[tr], c))
    return oof


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


def train(data: list[Path], out: Path, name: str, target_quality: float, c: float | None = None,
          seed: int = 0) -> TierHead:
    records = load(data)
    dev, test = split(records)
    encoder = Encoder(ROOT / "build" / "encoder", "int8", threads=2)
    x_all = embed_records(encoder, records, ROOT / "build" / "embeddings")
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
    targets = sorted({*QUALITY_TARGETS, target_quality})
    calibration = {f"{t:g}": calibrate(dev, oof, costs, t)[0] for t in tqdm(targets, desc="calibration", unit="target")}
    tradeoff = calibration[f"{target_quality:g}"]
    coef, intercept = fit(x_dev, ok_dev, c)
    p_test = success(x_test, coef, intercept)
    cv = routing_metrics(dev, decide(oof, costs, tradeoff))
    held = tradeoff_replay("held-out", test, [(np.arange(len(test)), p_test, costs, tradeoff)]).result(target_quality)

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
                        f"of quality vs frontier over a window of {WINDOW} new queries meets the target, on out-of-fold "
                        "predictions of the dev part"),
        "n_dev": str(len(dev)),
        "n_held_out": str(len(test)),
        **{f"cv_{k}": _fmt(v) for k, v in cv.items()},
        **{f"held_out_{k}": _fmt(v) for k, v in held["operating_point"].items() if k != "avg_latency_overhead_ms"},
        **{f"held_out_savings_at_{q}_curve": _fmt(v) for q, v in held["curve"]["savings_at_quality"].items()},
    }
    head = TierHead(name=name, version="", coef=coef, intercept=intercept, relative_cost=costs, tradeoff=tradeoff,
                    target_quality=target_quality, encoder=encoder.version, models=models, card=card,
                    calibration=calibration).versioned(when)
    head.publish(out)
    return head


def _fmt(v) -> str:
    if v is None:
        return "none"
    return json.dumps([round(x, 4) for x in v]) if isinstance(v, list) else f"{v:.4f}"
