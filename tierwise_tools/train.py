"""Fit the tier head served by the classifier: one logistic model per tier over sentence embeddings.

Label of tier t's model = "tier t's recorded answer was acceptable". One record in five, chosen by id
hash, is held out and only ever scored. The regularisation strength is chosen, and the tradeoff
calibrated, on out-of-fold predictions of the development part, never on the held-out part.
The head's support (k-means centroids of the dev queries, one per ~100, each with a similarity bar) is
fitted on the dev part too. The tradeoff is calibrated without the check, which only ever adds tier 3.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from classifier_service.heads import TierHead, decide, success
from tierwise.data import DataError, check_measurable, load, split
from tierwise.metrics import QUALITY_TARGETS, routing_metrics

from .calibration import CONFIDENCE, WINDOW
from .embeddings import embed_records, offline_encoder
from .evaluate import tradeoff_replay
from .fitting import MIN_DEV_RECORDS, SUPPORT_QUANTILE, fit_head, lineup
from .paths import EMBEDDINGS_DIR

POOLED = "pooled: "  # how a model card's lineup line starts for a head trained on several lineups


def train(data: list[Path], out: Path, name: str, target_quality: float, c: float | None = None,
          seed: int = 0, priors: Sequence[TierHead] = ()) -> TierHead:
    """Fit, calibrate and publish a head on `data`. A head for one lineup builds on `priors` (the shipped heads,
    less any trained on this very lineup): their tier models are features and their supports join its own
    (docs/decisions/0019). A head pooled over lineups uses none: it is calibrated leave-one-lineup-out."""
    files = [load([path]) for path in data]
    records = [r for part in files for r in part]
    dev, test = split(records)
    part = "the development part (records not held out)"
    check_measurable(dev, part)
    if len(dev) < MIN_DEV_RECORDS:
        raise DataError(f"{part}: {len(dev)} records; at least {MIN_DEV_RECORDS} are needed to cross-validate and "
                        "calibrate a head (label more with `tierwise label`)")
    encoder = offline_encoder()
    x_all = embed_records(encoder, records, EMBEDDINGS_DIR)
    index = {id(r): i for i, r in enumerate(records)}
    x_dev = x_all[[index[id(r)] for r in dev]]
    x_test = x_all[[index[id(r)] for r in test]]
    models = lineup(records)
    fitted = fit_head(dev, x_dev, [*QUALITY_TARGETS, target_quality], c, seed, priors)
    costs, calibration, chosen = fitted.relative_cost, fitted.calibration, fitted.chosen
    tradeoff = calibration[f"{target_quality:g}"]
    coef, intercept, support, pooled, oof = fitted.coef, fitted.intercept, fitted.support, fitted.pooled, chosen.oof
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
    card = {
        "data": data_line(data, files),
        "lineup": (" / ".join(models) if models else
                   POOLED + "; ".join(sorted({" / ".join(r.models) for r in records})) if pooled else
                   "one lineup; the records do not name its models"),
        "split": "int(sha256(id)[:8 hex digits], 16) % 5 == 0 held out (tierwise/data.py); fit, select and calibrate on the rest",
        "trained": when,
        "encoder": encoder.version,
        "model": chosen.describe(),
        "rule": "tier = argmax_t P_t - tradeoff x relative_cost_t",
        "calibration": (f"per target {', '.join(calibration)}: tradeoffs tested as a fixed sequence from always tier 3 "
                        f"towards the cheapest, stopping at the first whose {CONFIDENCE:.0%} lower bootstrap bound of "
                        f"quality vs frontier over a window of {WINDOW} new queries misses the target; the cheapest "
                        "before it, on "
                        + ("leave-one-lineup-out predictions of the dev part (each lineup predicted by a model fitted "
                           "on the others)" if pooled else "out-of-fold predictions of the dev part")),
        "support": (f"{len(support.bars)} centroids: k-means of the dev queries"
                    + (f" and the prior heads' ({', '.join(chosen.prior.names)})" if chosen.prior else "")
                    + f", each with a bar at the {SUPPORT_QUANTILE:.0%} quantile of its own queries' similarity; "
                    "held out records outside: "
                    + (f"{outside_test.mean():.1%}" if len(test) else "none held out")),
        "n_dev": str(len(dev)),
        "n_held_out": str(len(test)),
        **{f"cv_{k}": _fmt(v) for k, v in cv.items()},
        **held_out,
    }
    head = fitted.head(name, "", target_quality, encoder=encoder.version, models=models, card=card).versioned(when)
    head.publish(out)
    return head


def _fmt(v) -> str:
    if v is None:
        return "none"
    return json.dumps([round(x, 4) for x in v]) if isinstance(v, list) else f"{v:.4f}"


def data_line(paths: list[Path], files: list[list]) -> str:
    """The card's `data`: each file whose development part the head was fitted on, and how many records it holds."""
    return ", ".join(f"{card_name(path)} ({len(part)} records)" for path, part in zip(paths, files))


def card_name(path: Path) -> str:
    """How a card names a file: its name, with the commas and brackets the `data` line is read back by as "_"."""
    return re.sub(r"[,()]", "_", path.name)


def fitted_files(card: dict) -> set[str]:
    """The names of the files a head's card says it was fitted on (`data_line`, read back)."""
    return {name.strip() for name in re.findall(r"([^,()]+?) \(\d+ records\)", card.get("data", ""))}

