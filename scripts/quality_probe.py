"""Reproduce the head comparison of docs/decisions/0007 on each dev file's held-out fifth.

Heads are fitted on the development part only (sha256(id) % 5 != 0) from the int8 embeddings cached by
`tierwise train` (run `make train` first), then swept over the held-out part:
  - multiclass: the previous kind of head, softmax over the oracle tier, ordinal thresholds (t2, t3);
  - success (pooled): one logistic model per tier, fitted on all lineups, argmax_t P_t - tradeoff*cost_t;
  - success (per lineup): the same, fitted on the evaluated file's lineup only;
  - the same with the support check (what ships): queries unlike the training queries go to tier 3;
  - two knobs instead of the one tradeoff: a free bias for tier 2 on top of the tradeoff (bias 0 is the
    shipped rule). Both knobs are also calibrated for 95% on the dev part's out-of-fold predictions, as
    `train` calibrates the one knob, and scored on the held-out part.
Also prints the bootstrap interval of the per-lineup head's savings@95: how precisely each held-out part
measures the curve figure.
Prints savings@{90,95,99}% quality vs frontier (the `curve` figure of `tierwise eval`).
With --calibration-check: a dev-only check of the calibration bound instead. The tradeoff is
calibrated on out-of-fold predictions of 4/5 of each file's dev part and scored on the last fifth,
with the plain bound (window 0) and the 500-query window bound.
With --generalisation: how a head does on what it never saw (decision 0008). For each task of a file,
a head is trained and calibrated (as `tierwise train` does) on the dev part of the file's other tasks
and routes every record of the left-out task, with and without the support check. Then, for each
file, a head pooled over the other files' lineups routes its held-out part (an unseen lineup), with
5-fold and with leave-one-lineup-out calibration.
With --whole-file: 5-fold cross-validation over each whole dev file (held-out part included), most likely
the protocol of the issue's seed figures (decision 0011), for the previous multiclass head, the success
heads and their two-knob sweep; three fold seeds.
With --learning-curve: how many labelled queries a lineup needs (decision 0013). A head is fitted and
calibrated as `train` does (C fixed at 0.5) on N random dev records, five draws per N, and routes the
held-out part: its operating point (with the support check) and its savings@95.
With --other-signals: four more query-only variants, each against the shipped rule (decision 0013), on
the held-out part and 5-fold over the whole file:
  - heads that model each tier's gain over the tier below (-1/0/+1) instead of each tier's success;
  - the embedding plus the query's length in characters and words and its shares of digits and punctuation;
  - the rule with each query's own predicted cost per tier (ridge regression of log cost on the embedding
    and log query length) instead of the lineup's mean cost;
  - success heads over word 1-2-gram TF-IDF, averaged with the embedding heads.
With --live-sample: which live requests to label (decision 0014). The cold-start head (pooled over the
other lineups) routes a file's dev part; heads trained on N of those requests, drawn uniformly or only from
the ones routed below tier 3, route the held-out part. Five draws per N.
With --promotion: does `tierwise promote`'s rule keep bad heads out (decision 0015)? As --live-sample, but a
random fifth of the N labels is held back as the check part, and promote's verdict (against the cold-start
head) is printed beside the candidate's quality and savings on the file's held-out part.
With --verifier: what the cascade's verify gate would reach with a verifier that ranks answers with a given
AUC (decisions 0016, 0017), on the held-out parts that carry responses (routerbench, zeroeval). The
verifier is simulated: after the free surface checks, it gives each answer a P(acceptable) from a binormal
model with that AUC, errors drawn independently (a real verifier's errors are likely to cluster on hard
queries, so these figures are optimistic at a given AUC), and the curve sweeps its bar as `eval` does. Its
call reads the gate's prompt, the query and the answer (characters / 4 tokens) and writes 5 tokens, at the
verifier model's prices: the data README's tier prices for zeroeval (its costs are estimated with them),
list prices for routerbench's models (they reproduce its recorded MBPP costs; its ARC and Winogrande costs
also hold the five worked examples the query omits). Two verifiers: tier 1's model (the default) and the
tier above the answer's. The cascade starts at the per-lineup head's tier, over its tradeoff sweep, or
always at tier 1 (`cheapest+cascade`). About 45 minutes.
With --verifier-calibration: the same simulated verifier's bar and the head start's tradeoff calibrated
together for 95% on the dev part (as `tierwise calibrate --config` does), scored on the held-out part.
Usage: .venv/bin/python scripts/quality_probe.py [--calibration-check | --generalisation | --whole-file |
       --learning-curve | --other-signals | --live-sample | --promotion | --verifier | --verifier-calibration]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tierwise_tools.calibration import ALWAYS_TIER_3, TRADEOFFS, calibrate, cheapest_meeting  # noqa: E402
from classifier_service.encoder import Encoder  # noqa: E402
from classifier_service.heads import decide, success  # noqa: E402
from tierwise_tools.train import fit, fit_support, out_of_fold, relative_cost, route_unseen  # noqa: E402
from tierwise_tools.embeddings import embed_records  # noqa: E402
from tierwise.data import arrays, load, shared_files  # noqa: E402
from tierwise.metrics import QUALITY_TARGETS, routing_metrics, savings_at_quality  # noqa: E402


def curve(records, choices) -> str:
    points = [(m["quality_vs_frontier"], m["cost_savings"]) for m in (routing_metrics(records, t) for t in choices)]
    return "/".join(f"{s:.0%}" if s is not None else "none" for s in (savings_at_quality(points, q) for q in QUALITY_TARGETS))


def ordinal(p: np.ndarray, t2: float, t3: float) -> np.ndarray:
    return np.where(p[:, 2] >= t3, 3, np.where(p[:, 1] + p[:, 2] >= t2, 2, 1))


def multiclass_sweep(p: np.ndarray) -> list[np.ndarray]:
    grid = np.linspace(0, 1, 41)
    return [ordinal(p, a, b) for a in grid for b in grid]


TIER_2_BIASES = np.concatenate([-np.geomspace(0.01, 0.3, 7)[::-1], [0.0], np.geomspace(0.01, 0.3, 7)])


def biased(p: np.ndarray, cost, tradeoff: float, bias: float) -> np.ndarray:
    """tier = argmax_t P_t - tradeoff x cost_t + bias x [t = 2]; bias 0 is the shipped rule."""
    return np.argmax(p - tradeoff * np.asarray(cost) + [0.0, bias, 0.0], axis=1) + 1


def two_knobs(p: np.ndarray, cost):
    """((tradeoff, bias), tiers) for every pair; it contains the one-knob sweep (bias 0)."""
    for tradeoff in TRADEOFFS:
        for bias in TIER_2_BIASES:
            yield (tradeoff, bias), biased(p, cost, tradeoff, bias)


def interval(records, sweep: list[np.ndarray], target: float = 0.95, resamples: int = 300) -> str:
    """5-95% bootstrap interval of savings@target over `sweep`: how precisely `records` measure the curve."""
    ok, cost = arrays(records)
    rows = np.arange(len(records))
    chosen_ok = np.array([ok[rows, t - 1] for t in sweep]).T
    chosen_cost = np.array([cost[rows, t - 1] for t in sweep]).T
    weights = np.random.default_rng(0).poisson(1.0, size=(resamples, len(records))).astype(np.float64)
    quality = (weights @ chosen_ok) / (weights @ ok[:, 2])[:, None]
    savings = 1 - (weights @ chosen_cost) / (weights @ cost[:, 2])[:, None]
    best = np.where(quality >= target - 1e-12, savings, -np.inf).max(axis=1)
    low, high = np.quantile(best, [0.05, 0.95])
    return f"{low:.0%}..{high:.0%}"


def op(records, tiers, digits: int = 1) -> str:
    """'Q/S': quality vs frontier and savings of routing `records` to `tiers`."""
    m = routing_metrics(records, np.asarray(tiers))
    return f"{m['quality_vs_frontier']:.3f}/{m['cost_savings']:.{digits}%}"


def one_or_two_knobs(dev_records, oof, p, cost, test) -> str:
    """Held-out quality vs frontier / savings of one knob and of two knobs, each calibrated for 95% on `oof`."""
    tradeoff = calibrate(dev_records, oof, cost, 0.95)[0]
    (both, bias), _ = cheapest_meeting(dev_records, two_knobs(oof, cost), 0.95, (ALWAYS_TIER_3, 0.0))
    return (f"one knob {op(test, decide(p, cost, tradeoff))}, "
            f"two knobs {op(test, biased(p, cost, both, bias))} (bias {bias:+.3f})")


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


def calibration_check(records, x, ok, source, dev) -> None:
    for name in sorted(set(source)):
        idx = np.where(dev & (source == name))[0]
        part = [records[i] for i in idx]
        oof, cost = out_of_fold(x[idx], ok[idx], 0.5, 0), relative_cost(part)
        for window in (0, 500):
            cells = []
            for tr, va in KFold(5, shuffle=True, random_state=1).split(idx):
                tradeoff, _ = calibrate([part[i] for i in tr], oof[tr], cost, 0.95, window=window)
                m = routing_metrics([part[i] for i in va], decide(oof[va], cost, tradeoff))
                cells.append(f"{m['quality_vs_frontier']:.3f}/{m['cost_savings']:.0%}")
            print(f"{name} window {window}: quality vs frontier / savings per unseen dev fold: {', '.join(cells)}",
                  flush=True)


def with_and_without(records, plain, checked, digits: int = 0) -> str:
    """'without check Q/S, with Q/S' for both routings of `records`."""
    return f"without check {op(records, plain, digits)}, with {op(records, checked, digits)}"


def generalisation(records, x, source, dev) -> None:
    task = np.array([r.task for r in records])
    for name in sorted(set(source)):
        rows = np.where(source == name)[0]
        every, plain, checked = [], [], []
        for left_out in sorted(set(task[rows])):
            train = rows[dev[rows] & (task[rows] != left_out)]
            test = rows[task[rows] == left_out]
            a, b, outside = route_unseen([records[i] for i in train], x[train], x[test])
            every += list(test)
            plain += list(a)
            checked += list(b)
            print(f"  {name}/{left_out} (n={len(test)}): outside support {outside.mean():.0%}; quality vs frontier / "
                  f"savings {with_and_without([records[i] for i in test], a, b)}", flush=True)
        print(f"{name}, every task unseen (n={len(every)}): "
              f"{with_and_without([records[i] for i in every], plain, checked, 1)}", flush=True)
    for name in sorted(set(source)):
        train, test = np.where(dev & (source != name))[0], np.where(~dev & (source == name))[0]
        part = [records[i] for i in test]
        for by_lineup in (False, True):
            a, b, outside = route_unseen([records[i] for i in train], x[train], x[test], by_lineup=by_lineup)
            how = "leave-one-lineup-out" if by_lineup else "5-fold"
            print(f"{name} held out, lineup unseen, {how} calibration: outside support {outside.mean():.0%}; "
                  f"{with_and_without(part, a, b, 1)}", flush=True)


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
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

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


def live_sample(records, x, ok, source, dev, sizes=(400, 800), draws: int = 5) -> None:
    """Labels from live traffic, sampled two ways (decision 0014). A new deployment starts with the pooled
    head fitted on the other lineups (calibrated leave-one-lineup-out, support check on); its routing of the
    file's dev part stands for live traffic. A head is then trained on N labelled requests drawn uniformly
    (what `shadow.labels` does) or only from those routed below tier 3, and routes the held-out part."""
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


def promotion(records, x, ok, source, dev, sizes=(400, 800), draws: int = 5) -> None:
    """Does `tierwise promote`'s rule keep bad heads out (decision 0015)? As in --live-sample, a deployment starts
    with the cold-start head and labels N of its requests, uniformly or only below tier 3. A random fifth of the
    labels is the check part; the candidate is trained and calibrated on the rest, and `promote`'s own verdict
    weighs it against the cold-start head on the check part. Both heads are then scored on the file's held-out
    part, which neither saw: what the deployment would serve with and without the check."""
    from tierwise_tools.promote import summary, verdict

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


class SimulatedVerifier:
    """Stands in for tierwise_tools.live_gate.LiveGate in evaluate.cascade: the surface checks, then a verifier whose
    P(acceptable) ranks an acceptable answer above an unacceptable one with probability `auc` (a binormal
    score with independent errors), its call priced as the docstring above says."""

    def __init__(self, auc: float, tier_above: bool, seed: int = 0, free: bool = False):
        self.auc = auc
        self.tier_above = tier_above
        self.rng = np.random.default_rng(seed)
        self.free = free

    def judge(self, records):
        from scipy.stats import norm

        from router_service.gates import SurfaceGate

        surface = SurfaceGate()
        ok = arrays(records)[0][:, :2]
        passed = np.array([[surface.check(r.query, r.responses[t]).accept for t in (0, 1)] for r in records])
        noise = self.rng.standard_normal(ok.shape)
        if self.auc >= 1:  # perfectly ranked; ties within each kind broken at random
            score = np.where(ok, 0.75, 0.0) + 0.25 * norm.cdf(noise)
        else:
            separation = np.sqrt(2) * norm.ppf(self.auc)
            score = norm.cdf(separation * (ok - 0.5) + noise)
        score = np.where(passed, score, np.nan)
        cost = np.array([reading_cost(r, self.tier_above) for r in records])
        return passed & (score >= 0.5), score, np.where(passed & ~self.free, cost, 0.0), passed


# $ per 1M input / output tokens of each tier's model.
PRICES = {"routerbench": ((0.2, 0.2), (1.0, 2.0), (10.0, 30.0)),  # mistral-7b-chat, gpt-3.5-turbo-1106, gpt-4-1106
          "zeroeval": ((0.25, 1.25), (3.0, 15.0), (15.0, 75.0))}   # the data README's tier prices


def reading_cost(record, tier_above: bool) -> list[float]:
    """What the verifier pays to read tier t's answer (t = 1, 2) with the gate's prompt and write 5 tokens."""
    from router_service.gates import VERIFY

    prompt = (len(VERIFY) + len(record.query) + 40) / 4
    prices = PRICES[record.source]
    return [(prices[t + 1 if tier_above else 0][0] * (prompt + len(record.responses[t] or "") / 4)
             + prices[t + 1 if tier_above else 0][1] * 5) / 1e6 for t in (0, 1)]


def verifier(records, x, ok, source, dev) -> None:
    from tierwise_tools import evaluate

    for name in ("routerbench", "zeroeval"):
        part = dev & (source == name)
        idx = np.where(~dev & (source == name))[0]
        test = [records[i] for i in idx]
        cost = relative_cost([records[i] for i in np.where(part)[0]])
        own = success(x[idx], *fit(x[part], ok[part], 0.5))
        sweep = [evaluate.Outcome(decide(own, cost, t), np.zeros(len(idx))) for t in TRADEOFFS]

        def from_head(replayable):
            assert len(replayable) == len(test), "every held-out record here carries its answers"
            return evaluate.Replay("embedding", test, sweep[0], sweep, 0.0)

        def from_tier_1(replayable):
            return evaluate.baseline("always-1", replayable)

        def at_95(start, verifier) -> float:
            found = evaluate.cascade(test, start, "verify", live=verifier).result(0.95)["curve"]["savings_at_quality"]
            return np.nan if found["0.95"] is None else found["0.95"]

        print(f"{name} (n={len(idx)} held out): the head alone, savings@90/95/99 {curve(test, [o.tiers for o in sweep])}; "
              f"a perfect verifier that costs nothing, from tier 1, savings@95 "
              f"{at_95(from_tier_1, SimulatedVerifier(1.0, False, free=True)):.0%}; the oracle router "
              f"{op(test, np.array([r.oracle_tier for r in test]), 0)}", flush=True)
        for auc in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0):
            cells = {label: np.median([at_95(start, SimulatedVerifier(auc, above, seed)) for seed in range(5)])
                     for label, start, above in (("tier 1 verifies, head start", from_head, False),
                                                 ("tier 1 verifies, from tier 1", from_tier_1, False),
                                                 ("tier above verifies, head start", from_head, True))}
            print(f"  AUC {auc:g}, savings@95 (median of 5 draws): "
                  + "; ".join(f"{label} {v:.0%}" for label, v in cells.items()), flush=True)


def verifier_calibration(records, x, ok, source, dev) -> None:
    """The verifier's bar and the head start's tradeoff calibrated together for 95% on the dev part (out-of-fold
    head probabilities, a simulated verifier's scores), as `calibrate --config` does, then scored on the held-out
    part with the same kind of verifier (fresh draws). Without the support check, as calibration runs."""
    from tierwise_tools import evaluate

    for name in ("routerbench", "zeroeval"):
        part, held = np.where(dev & (source == name))[0], np.where(~dev & (source == name))[0]
        dev_records, test = [records[i] for i in part], [records[i] for i in held]
        cost = relative_cost(dev_records)
        oof = out_of_fold(x[part], ok[part], 0.5, 0)
        own = success(x[held], *fit(x[part], ok[part], 0.5))
        alone = decide(own, cost, calibrate(dev_records, oof, cost, 0.95)[0])
        print(f"{name}: the head alone, calibrated on dev, held out: {op(test, alone)}", flush=True)
        for auc in (0.75, 0.8, 0.85, 0.9):
            cells = []
            for seed in range(5):
                tuning = evaluate.gated(dev_records, "verify", SimulatedVerifier(auc, False, seed))
                scoring = evaluate.gated(test, "verify", SimulatedVerifier(auc, False, seed + 100))
                assert len(tuning.records) == len(part) and len(scoring.records) == len(held), "all carry answers"
                candidates = [((t, bar), o.tiers, o.paid) for t in TRADEOFFS for bar in evaluate.bars(tuning.scores)
                              for o in [tuning.run(decide(oof, cost, t), bar)]]
                (t, bar), _ = cheapest_meeting(dev_records, candidates, 0.95, (ALWAYS_TIER_3, np.inf))
                out = scoring.run(decide(own, cost, t), bar)
                m = routing_metrics(test, out.tiers, out.paid)
                cells.append(f"{m['quality_vs_frontier']:.3f}/{m['cost_savings']:.0%}")
            print(f"  AUC {auc:g}, held-out quality vs frontier/savings per draw: {', '.join(cells)}", flush=True)


def main() -> None:
    records = load(shared_files())
    x = embed_records(Encoder(ROOT / "build" / "encoder", "int8", 2), records, ROOT / "build" / "embeddings")
    ok = arrays(records)[0].astype(float)
    source = np.array([r.source for r in records])
    held = np.array([r.held_out for r in records])
    dev = ~held
    if "--calibration-check" in sys.argv:
        return calibration_check(records, x, ok, source, dev)
    if "--generalisation" in sys.argv:
        return generalisation(records, x, source, dev)
    if "--whole-file" in sys.argv:
        return whole_file(records, x, ok, source)
    if "--learning-curve" in sys.argv:
        return learning_curve(records, x, ok, source, dev)
    if "--other-signals" in sys.argv:
        return other_signals(records, x, ok, source, dev)
    if "--live-sample" in sys.argv:
        return live_sample(records, x, ok, source, dev)
    if "--promotion" in sys.argv:
        return promotion(records, x, ok, source, dev)
    if "--verifier-calibration" in sys.argv:
        return verifier_calibration(records, x, ok, source, dev)
    if "--verifier" in sys.argv:
        return verifier(records, x, ok, source, dev)
    oracle = np.array([r.oracle_tier for r in records])
    multiclass = LogisticRegression(C=1.0, max_iter=3000).fit(x[dev], oracle[dev]).predict_proba(x)
    pooled = success(x, *fit(x[dev], ok[dev], 0.5))
    for name in sorted(set(source)):
        part = dev & (source == name)
        idx = np.where(held & (source == name))[0]
        test = [records[i] for i in idx]
        dev_records = [records[i] for i in np.where(part)[0]]
        cost = relative_cost(dev_records)
        own = success(x[idx], *fit(x[part], ok[part], 0.5))
        outside = fit_support(x[part]).outside(x[idx])
        print(f"{name} (n={len(idx)} held out) savings@90/95/99: "
              f"multiclass {curve(test, multiclass_sweep(multiclass[idx]))}, "
              f"success pooled {curve(test, [decide(pooled[idx], cost, t) for t in TRADEOFFS])}, "
              f"success per lineup {curve(test, [decide(own, cost, t) for t in TRADEOFFS])}, "
              f"the same with the support check {curve(test, [decide(own, cost, t, outside) for t in TRADEOFFS])}, "
              f"two knobs {curve(test, [t for _, t in two_knobs(own, cost)])}", flush=True)
        oof = out_of_fold(x[part], ok[part], 0.5, 0)
        print(f"{name} calibrated for 95% on the dev part, held-out quality vs frontier/savings: "
              f"{one_or_two_knobs(dev_records, oof, own, cost, test)}; 5-95% bootstrap interval of the "
              f"per-lineup savings@95: {interval(test, [decide(own, cost, t) for t in TRADEOFFS])}", flush=True)


if __name__ == "__main__":
    main()
