"""First measurements for the routing-quality issue: savings at quality targets on the held-out part.

Compares, on each dev file's held-out fifth (sha256(id) % 5 == 0), using the int8 embeddings cached by
`tierwise train` (run `make train` first):
  - multiclass: the shipped kind of head (oracle-tier logistic regression), both thresholds swept;
  - utility: per-tier success heads P(tier t acceptable), choose argmax_t P_t - lambda * relative cost_t,
    lambda swept;
  - bar: cheapest tier whose success probability clears one bar, bar swept.
Prints savings@{90,95,99}% quality vs frontier. Usage: .venv/bin/python scripts/quality_probe.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifier_service.encoder import Encoder  # noqa: E402
from classifier_service.heads import decide  # noqa: E402
from classifier_service.train import embed_records  # noqa: E402
from tierwise.data import arrays, load, shared_files  # noqa: E402

TARGETS = (0.90, 0.95, 0.99)


def savings_at(ok: np.ndarray, cost: np.ndarray, choices: list[np.ndarray]) -> list[float]:
    rows = np.arange(len(ok))
    points = [(ok[rows, t].mean() / ok[:, 2].mean(), 1 - cost[rows, t].sum() / cost[:, 2].sum()) for t in choices]
    return [max((s for q, s in points if q >= target), default=float("nan")) for target in TARGETS]


def main() -> None:
    records = load(shared_files())
    x = embed_records(Encoder(ROOT / "build" / "encoder", "int8", 2), records, ROOT / "build" / "embeddings")
    ok, cost = arrays(records)
    source = np.array([r.source for r in records])
    held = np.array([r.held_out for r in records])
    dev = ~held
    success = np.column_stack([LogisticRegression(max_iter=2000).fit(x[dev], ok[dev, t]).predict_proba(x)[:, 1]
                               for t in range(3)])
    oracle = np.array([r.oracle_tier for r in records])
    multiclass = LogisticRegression(max_iter=2000).fit(x[dev], oracle[dev]).predict_proba(x)
    relative_cost = cost[dev].mean(0) / cost[dev, 2].mean()
    grid = np.linspace(0, 1, 41)
    for name in sorted(set(source)):
        idx = held & (source == name)
        o, c, p, m = ok[idx], cost[idx], success[idx], multiclass[idx]
        methods = {
            "multiclass": [decide(m, (a, b)) - 1 for a in grid for b in grid],
            "utility": [np.argmax(p - lam * relative_cost, axis=1)
                        for lam in np.concatenate([[0], np.geomspace(1e-3, 100, 400)])],
            "bar": [np.where(p[:, 0] >= b, 0, np.where(p[:, 1] >= b, 1, 2)) for b in np.linspace(0, 1, 201)],
        }
        cells = ", ".join(f"{k} {'/'.join(f'{s:.0%}' for s in savings_at(o, c, v))}" for k, v in methods.items())
        print(f"{name} (n={idx.sum()} held out) savings@90/95/99: {cells}")


if __name__ == "__main__":
    main()
