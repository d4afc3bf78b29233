"""Does `tierwise promote`'s rule keep bad heads out? (docs/decisions/0015)

With --promotion: as in decision 0014's live sample, a deployment starts with the cold-start head (pooled over
the other lineups) and labels N of its requests, uniformly or only below tier 3. A random fifth of the labels is
the check part; the candidate is trained and calibrated on the rest, and `promote`'s own verdict weighs it
against the cold-start head on the check part. Both heads are then scored on the file's held-out part, which
neither saw: what the deployment would serve with and without the check. About 40 s after `make train` (it
caches the embeddings).
Usage, from the repository root: .venv/bin/python -m research.d0015_promoting_heads --promotion
"""
from __future__ import annotations

import numpy as np

from research.common import cli, op
from tierwise_tools.promote import summary, verdict
from tierwise_tools.train import route_unseen


def promotion(records, x, ok, source, dev, sizes=(400, 800), draws: int = 5) -> None:
    for name in sorted(set(source)):
        rows, test = np.where(dev & (source == name))[0], np.where(~dev & (source == name))[0]
        others = np.where(dev & (source != name))[0]
        _, cold, _ = route_unseen([records[i] for i in others], x[others], x[np.concatenate([rows, test])])
        cold_at = dict(zip(rows, cold[:len(rows)]))
        part = [records[i] for i in test]
        print(f"{name}: cold-start head on the held-out part {op(part, cold[len(rows):])}", flush=True)
        for label, pool in (("uniform", rows), ("below tier 3 only", rows[cold[:len(rows)] < 3])):
            for n in sorted({min(n, len(pool)) for n in sizes}):
                cells = []
                for draw in range(draws):
                    rng = np.random.default_rng(draw)
                    labels = rng.choice(pool, size=n, replace=False)
                    check = rng.random(n) < 0.2
                    train, held = labels[~check], labels[check]
                    _, tiers, _ = route_unseen([records[i] for i in train], x[train], x[np.concatenate([held, test])])
                    checked = [records[i] for i in held]
                    passed, _ = verdict({"version": "candidate", **summary(checked, tiers[:len(held)])},
                                        {"version": "cold start",
                                         **summary(checked, np.array([cold_at[i] for i in held]))}, 0.95)
                    cells.append(f"{'promoted' if passed else 'refused'} {op(part, tiers[len(held):], 0)}")
                print(f"  N={n} {label}: candidate's verdict on the check part, then its held-out quality vs "
                      f"frontier/savings per draw: {', '.join(cells)}", flush=True)


def main() -> None:
    cli(__doc__, promotion=("promote's verdict on candidates trained on live labels",
                            lambda d: promotion(d.records, d.x, d.ok, d.source, d.dev)))


if __name__ == "__main__":
    main()
