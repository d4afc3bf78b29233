"""How many labelled queries a lineup needs, and four more query-only signals (docs/decisions/0013).

With --learning-curve: a head is fitted and calibrated as `train` does (C fixed at 0.5) on N random dev
records, five draws per N, and routes the held-out part: its operating point (with the support check) and its
savings@95. About 2 minutes.
With --other-signals: four more query-only variants, each against the shipped rule, on the held-out part and
5-fold over the whole file. About 1 minute.
  - heads that model each tier's gain over the tier below (-1/0/+1) instead of each tier's success;
  - the embedding plus the query's length in characters and words and its shares of digits and punctuation;
  - the rule with each query's own predicted cost per tier (ridge regression of log cost on the embedding
    and log query length) instead of the lineup's mean cost;
  - success heads over word 1-2-gram TF-IDF, averaged with the embedding heads.
Run `make train` first (it caches the embeddings).
Usage, from the repository root: .venv/bin/python -m research.d0013_label_set_size --learning-curve | --other-signals
"""
from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold

from classifier_service.heads import decide, success
from research.common import cli, curve
from tierwise.data import arrays
from tierwise.metrics import routing_metrics
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.fitting import fit, relative_cost, route_unseen


def learning_curve(records, x, ok, source, dev, sizes=(100, 200, 400, 800, 1600), draws: int = 5) -> None:
    for name in sorted(set(source)):
        rows, test = np.where(dev & (source == name))[0], np.where(~dev & (source == name))[0]
        part = [records[i] for i in test]
        for n in (*(s for s in sizes if s < len(rows)), len(rows)):
            cells = []
            for draw in range(draws if n < len(rows) else 1):
                train = np.random.default_rng(draw).choice(rows, size=n, replace=False)
                _, tiers, _ = route_unseen([records[i] for i in train], x[train], x[test])
                p = success(x[test], *fit(x[train], ok[train], 0.5))
                cost = relative_cost([records[i] for i in train])
                m = routing_metrics(part, tiers)
                cells.append((m["quality_vs_frontier"], m["cost_savings"],
                              curve(part, [decide(p, cost, t) for t in TRADEOFFS]).split("/")[1]))
            print(f"{name} N={n}: quality vs frontier / savings at the calibrated point, savings@95 per draw: "
                  + ", ".join(f"{q:.3f}/{s:.0%} {c}" for q, s, c in cells), flush=True)


def other_signals(records, x, ok, source, dev) -> None:
    cost = arrays(records)[1]
    shape = np.array([[np.log1p(len(q)), np.log1p(len(q.split())), sum(c.isdigit() for c in q) / len(q),
                       sum(not (c.isalnum() or c.isspace()) for c in q) / len(q)] for q in (r.query for r in records)])
    features = np.hstack([x, shape[:, :1]])  # embedding + log length: what the cost regression reads
    with_shape = np.hstack([x, 0.15 * (shape - shape.mean(axis=0)) / shape.std(axis=0)])

    def routings(train, test) -> dict[str, list[np.ndarray]]:
        p = success(x[test], *fit(x[train], ok[train], 0.5))
        mean = np.array(relative_cost([records[i] for i in train]))
        own = np.exp(np.array([Ridge(alpha=1.0).fit(features[train], np.log(cost[train, t])).predict(features[test])
                               for t in range(3)]).T) / cost[train, 2].mean()
        words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=30000, sublinear_tf=True)
        w_train = words.fit_transform([records[i].query for i in train])
        w_test = words.transform([records[i].query for i in test])
        lexical = np.array([LogisticRegression(C=2.0, max_iter=3000).fit(w_train, ok[train, t]).predict_proba(w_test)[:, 1]
                            if 0 < ok[train, t].mean() < 1 else np.full(len(test), ok[train, t].mean())
                            for t in range(3)]).T
        # The rule only needs each tier's gain over the one below; model the gains (-1/0/+1) directly.
        gain = np.zeros((len(test), 3))
        for t in (1, 2):
            model = LogisticRegression(C=0.25, max_iter=3000).fit(x[train], ok[train, t] - ok[train, t - 1])
            gain[:, t] = gain[:, t - 1] + model.predict_proba(x[test]) @ model.classes_
        shaped = success(with_shape[test], *fit(with_shape[train], ok[train], 0.5))
        return {name: [decide(values, costs, t) for t in TRADEOFFS] for name, values, costs in (
            ("shipped", p, mean), ("gains", gain, mean), ("+ length", shaped, mean), ("own cost", p, own),
            ("+ tf-idf", (p + lexical) / 2, mean))}

    for name in sorted(set(source)):
        train, test = np.where(dev & (source == name))[0], np.where(~dev & (source == name))[0]
        found = routings(train, test)
        print(f"{name} held out (n={len(test)}) savings@90/95/99: "
              + ", ".join(f"{k} {curve([records[i] for i in test], v)}" for k, v in found.items()), flush=True)
        rows = np.where(source == name)[0]
        whole = {}
        for tr, va in KFold(5, shuffle=True, random_state=0).split(rows):
            for k, v in routings(rows[tr], rows[va]).items():
                for setting, tiers in enumerate(v):
                    whole.setdefault(k, [np.zeros(len(rows), dtype=int) for _ in v])[setting][va] = tiers
        print(f"{name} whole file, 5-fold (n={len(rows)}) savings@90/95/99: "
              + ", ".join(f"{k} {curve([records[i] for i in rows], v)}" for k, v in whole.items()), flush=True)


def main() -> None:
    cli(__doc__, learning_curve=("heads trained on N labelled dev records",
                                 lambda d: learning_curve(d.records, d.x, d.ok, d.source, d.dev)),
        other_signals=("four more query-only variants", lambda d: other_signals(d.records, d.x, d.ok, d.source, d.dev)))


if __name__ == "__main__":
    main()
