"""The seed's protocol: 5-fold cross-validation over each whole dev file (docs/decisions/0011).

The held-out part is included: most likely the protocol of the quality issue's seed figures. For the previous
multiclass head, the per-tier success heads and their two-knob sweep (a free tier-2 bias beside the tradeoff),
with three fold seeds. Prints savings@{90,95,99}% quality vs frontier. The record's held-out figures (the
bootstrap interval, the two knobs calibrated on dev) come from `python -m research.d0007_success_heads`.
Run `make train` first (it caches the embeddings).
Usage, from the repository root: .venv/bin/python -m research.d0011_seed_protocol
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from classifier_service.heads import decide
from research.common import cli, curve, multiclass_sweep, two_knobs
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.fitting import out_of_fold, relative_cost


def whole_file(records, x, ok, source) -> None:
    oracle = np.array([r.oracle_tier for r in records])
    for name in sorted(set(source)):
        idx = np.where(source == name)[0]
        part = [records[i] for i in idx]
        cost = relative_cost(part)
        for seed in (0, 1, 2):
            multiclass = np.zeros((len(idx), 3))
            for tr, va in KFold(5, shuffle=True, random_state=seed).split(idx):
                model = LogisticRegression(C=1.0, max_iter=3000).fit(x[idx[tr]], oracle[idx[tr]])
                multiclass[va] = model.predict_proba(x[idx[va]])
            own = out_of_fold(x[idx], ok[idx], 0.5, seed)
            print(f"{name} (n={len(idx)}, 5-fold, seed {seed}) savings@90/95/99: "
                  f"multiclass {curve(part, multiclass_sweep(multiclass))}, "
                  f"success {curve(part, [decide(own, cost, t) for t in TRADEOFFS])}, "
                  f"two knobs {curve(part, [t for _, t in two_knobs(own, cost)])}", flush=True)


def main() -> None:
    cli(__doc__, lambda d: whole_file(d.records, d.x, d.ok, d.source))


if __name__ == "__main__":
    main()
