"""Fit the tier head served by the classifier: logistic regression on sentence embeddings.

Label = oracle tier (cheapest acceptable tier; unsolvable queries count as tier 1). One record in five,
chosen by id hash, is held out and only ever scored. Thresholds are calibrated on out-of-fold
predictions of the development part, never on the held-out part.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from tierwise.data import Record, load, split
from tierwise.metrics import QUALITY_TARGETS, routing_metrics

from .calibration import calibrate
from .encoder import Encoder
from .heads import TierHead, decide

ROOT = Path(__file__).resolve().parent.parent


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


def fit(x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=2000).fit(x, y)


def train(data: list[Path], out: Path, name: str, target_quality: float, c: float, seed: int = 0) -> TierHead:
    records = load(data)
    dev, test = split(records)
    encoder = Encoder(ROOT / "build" / "encoder", "int8", threads=2)
    x_all = embed_records(encoder, records, ROOT / "build" / "embeddings")
    index = {id(r): i for i, r in enumerate(records)}
    x_dev = x_all[[index[id(r)] for r in dev]]
    x_test = x_all[[index[id(r)] for r in test]]
    y_dev = np.array([r.oracle_tier for r in dev])

    oof = np.zeros((len(dev), 3))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for tr, va in tqdm(list(folds.split(x_dev, y_dev)), desc="cross-validation", unit="fold"):
        oof[va] = fit(x_dev[tr], y_dev[tr], c).predict_proba(x_dev[va])
    targets = sorted({*QUALITY_TARGETS, target_quality})
    calibration = {f"{t:g}": calibrate(dev, oof, t)[0] for t in tqdm(targets, desc="calibration", unit="target")}
    thresholds = calibration[f"{target_quality:g}"]
    model = fit(x_dev, y_dev, c)
    cv = routing_metrics(dev, decide(oof, thresholds))
    held = routing_metrics(test, decide(model.predict_proba(x_test), thresholds))
    held_argmax = routing_metrics(test, model.predict_proba(x_test).argmax(1) + 1)

    when = time.strftime("%Y-%m-%d")
    card = {
        "data": ", ".join(f"{p.name} ({sum(1 for r in records if r.source == p.name.split('.')[0])} records)" for p in data),
        "split": "sha256(id) % 5 == 0 held out; train and calibrate on the rest",
        "trained": when,
        "encoder": encoder.version,
        "model": f"multinomial logistic regression, C={c}, label = oracle tier (unsolvable -> 1)",
        "calibration": (f"per target {', '.join(calibration)}: cheapest thresholds whose 95% lower bootstrap bound of "
                        "quality vs frontier meets the target, on 5-fold out-of-fold predictions of the dev part"),
        "n_dev": str(len(dev)),
        "n_held_out": str(len(test)),
        **{f"cv_{k}": _fmt(v) for k, v in cv.items()},
        **{f"held_out_{k}": _fmt(v) for k, v in held.items()},
        "held_out_argmax_accuracy": _fmt(held_argmax["accuracy"]),
    }
    head = TierHead(name=name, version="", coef=model.coef_.astype(np.float32),
                    intercept=model.intercept_.astype(np.float32), thresholds=thresholds,
                    target_quality=target_quality, encoder=encoder.version, card=card,
                    calibration=calibration).versioned(when)
    head.publish(out)
    return head


def _fmt(v) -> str:
    return json.dumps([round(x, 4) for x in v]) if isinstance(v, list) else f"{v:.4f}"
