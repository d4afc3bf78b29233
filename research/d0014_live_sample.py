"""Which live requests to label: a uniform sample or only those routed below tier 3 (docs/decisions/0014).

A new deployment starts with the pooled head fitted on the other lineups (calibrated leave-one-lineup-out,
support check on); its routing of the file's dev part stands for live traffic. A head is then trained on N
labelled requests drawn uniformly (what `shadow.labels` does) or only from those routed below tier 3, and
routes the held-out part. Five draws per N. About 1 minute after `make train` (it caches the embeddings).
Usage, from the repository root: .venv/bin/python -m research.d0014_live_sample
"""
from __future__ import annotations

import numpy as np

from classifier_service.heads import decide, success
from research.common import cli, curve, op
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.fitting import fit, relative_cost, route_unseen


def live_sample(records, x, ok, source, dev, sizes=(400, 800), draws: int = 5) -> None:
    for name in sorted(set(source)):
        rows, test = np.where(dev & (source == name))[0], np.where(~dev & (source == name))[0]
        others = np.where(dev & (source != name))[0]
        _, deployed, _ = route_unseen([records[i] for i in others], x[others], x[np.concatenate([rows, test])])
        below = rows[deployed[:len(rows)] < 3]
        part = [records[i] for i in test]
        print(f"{name}: the cold-start head routes {len(below)} of {len(rows)} dev requests below tier 3; on the "
              f"held-out part it keeps {op(part, deployed[len(rows):])}", flush=True)
        for label, pool in (("uniform", rows), ("below tier 3 only", below)):
            for n in sorted({min(n, len(pool)) for n in sizes}):
                cells = []
                for draw in range(draws):
                    train = np.random.default_rng(draw).choice(pool, size=n, replace=False)
                    _, tiers, _ = route_unseen([records[i] for i in train], x[train], x[test])
                    p = success(x[test], *fit(x[train], ok[train], 0.5))
                    cost = relative_cost([records[i] for i in train])
                    cells.append(f"{op(part, tiers, 0)} {curve(part, [decide(p, cost, t) for t in TRADEOFFS]).split('/')[1]}")
                print(f"  N={n} {label}: held-out quality vs frontier/savings at the calibrated point, savings@95 "
                      f"per draw: {', '.join(cells)}", flush=True)


def main() -> None:
    cli(__doc__, lambda d: live_sample(d.records, d.x, d.ok, d.source, d.dev))


if __name__ == "__main__":
    main()
