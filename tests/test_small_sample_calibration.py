"""The shipped calibration on a new lineup's first ~160 labels (decision 0022): it refuses a cheap tier that the
head rates as good as tier 3 when the labels say it is much worse, saves where a cheap tier really is as good,
and scores the same through the records and through their matrices (what the research probe calls)."""
from __future__ import annotations

import numpy as np

from classifier_service.heads import decide
from tierwise.data import Record, arrays
from tierwise.metrics import quality_bounds
from tierwise_tools.calibration import calibrate, calibrate_arrays, meeting

COSTS = (1.0, 10.0, 100.0)
RELATIVE_COST = (0.01, 0.1, 1.0)
N = 160  # the development part of K = 200 labels


def records(ok: np.ndarray) -> list[Record]:
    return [Record(id=f"s/{i}", source="s", task="s", query=f"question {i}", scores=tuple(float(v) for v in row),
                   costs=COSTS, responses=("a", "b", "c")) for i, row in enumerate(ok)]


def test_a_cheap_tier_the_head_overrates_is_refused_on_few_labels():
    rng = np.random.default_rng(7)
    frontier = rng.random(N) < 0.9
    ok = np.column_stack([rng.random(N) < 0.1, rng.random(N) < 0.55, frontier])  # tier 2 keeps ~0.6 of tier 3
    # The head believes tier 2 is as good as tier 3 everywhere (and a shade likelier on half the queries).
    p = np.column_stack([np.full(N, 0.1), 0.9 + 0.02 * (np.arange(N) % 2), np.full(N, 0.9)])
    tradeoff, facts = calibrate(records(ok), p, RELATIVE_COST, 0.95)
    tiers = decide(p, RELATIVE_COST, tradeoff)
    sample_quality = ok[np.arange(N), tiers - 1].mean() / ok[:, 2].mean()
    assert (tiers == 2).mean() < 0.2, facts  # ~0.6 of tier 3's quality: a fifth of the traffic there costs 0.08
    assert sample_quality >= 0.95


def test_a_cheap_tier_as_good_as_tier_3_is_shipped_on_few_labels():
    rng = np.random.default_rng(8)
    frontier = rng.random(N) < 0.8
    ok = np.column_stack([frontier, frontier, frontier])  # tier 1 answers exactly what tier 3 answers
    p = np.clip(0.8 + 0.05 * rng.standard_normal((N, 3)), 0, 1)
    tradeoff, facts = calibrate(records(ok), p, RELATIVE_COST, 0.95)
    assert facts["cost_savings"] > 0.5 and facts["quality_vs_frontier_lower_bound"] >= 0.95
    assert (decide(p, RELATIVE_COST, tradeoff) == 1).mean() > 0.5


def test_records_and_their_matrices_calibrate_alike():
    rng = np.random.default_rng(9)
    ok = rng.random((N, 3)) < np.array([0.5, 0.7, 0.85])
    p = rng.random((N, 3))
    given = records(ok)
    assert calibrate(given, p, RELATIVE_COST, 0.95) == calibrate_arrays(*arrays(given), p, RELATIVE_COST, 0.95)


def test_a_fixed_sequence_stops_at_the_first_tradeoff_that_misses():
    """Past a setting that misses the target, a cheaper one that passes (here by construction: it sends the
    records tier 1 happens to answer to tier 1) is not taken: picking it among many would spend the bound."""
    rng = np.random.default_rng(10)
    ok = np.column_stack([rng.random(N) < 0.5, rng.random(N) < 0.5, np.ones(N, dtype=bool)]).astype(float)
    cost = np.tile(COSTS, (N, 1))
    safe = np.full(N, 3)
    missing = np.where(np.arange(N) < N // 2, 2, 3)  # half the traffic to a tier that fails half of it
    lucky = np.where(ok[:, 0] == 1, 1, 3)  # tier 1 exactly where it succeeds: quality 1, cheapest
    candidates = [("safe", safe), ("missing", missing), ("lucky", lucky)]
    assert meeting(ok, cost, candidates, 0.95, "fallback", sequential=True)[0] == "safe"
    assert meeting(ok, cost, candidates, 0.95, "fallback")[0] == "lucky"


def test_a_record_given_twice_counts_once_in_the_bound_and_the_folds():
    """The same records twice (a file given twice, say) calibrate exactly as once: a repeated id is resampled as
    one observation, so it cannot narrow the bound; and cross-validation keeps its copies in one fold, so no model
    is scored on a row it was fitted on."""
    from tierwise.data import repeats
    from tierwise_tools.fitting import out_of_fold

    rng = np.random.default_rng(11)
    ok = rng.random((N, 3)) < np.array([0.6, 0.75, 0.85])
    p = rng.random((N, 3))
    once, twice = records(ok), records(ok) * 2
    assert repeats(once) is None and list(repeats(twice)) == list(range(N)) * 2
    assert calibrate(twice, np.vstack([p, p]), RELATIVE_COST, 0.95) == calibrate(once, p, RELATIVE_COST, 0.95)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    oof = out_of_fold(np.vstack([x, x]), np.vstack([ok, ok]).astype(float), 1.0, 0, same=repeats(twice))
    assert np.array_equal(oof[:N], oof[N:]), "each copy predicted by the same model, one that saw neither"
    apart = out_of_fold(np.vstack([x, x]), np.vstack([ok, ok]).astype(float), 1.0, 0)
    assert not np.array_equal(apart[:N], apart[N:]), "(without it, copies fall in different folds)"
    tiers = rng.integers(1, 4, N)
    assert quality_bounds(twice, np.concatenate([tiers, tiers])) == quality_bounds(once, tiers), \
        "promote's, eval's and simulate's bounds too"
