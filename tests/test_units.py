"""Unit tests of the pieces behind the classifier: heads, decisions, cache, bucketing, metrics."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier_service.batching import buckets
from classifier_service.cache import DecisionCache
from classifier_service.heads import HeadRegistry, Support, TierHead, decide
from tierwise.data import Record
from tierwise.metrics import routing_metrics


def make_head(name="h", tradeoff=0.5, models=()) -> TierHead:
    rng = np.random.default_rng(0)
    return TierHead(name=name, version=f"{name}-1", coef=rng.normal(size=(3, 8)).astype(np.float32),
                    intercept=np.zeros(3, np.float32), relative_cost=(0.01, 0.1, 1.0), tradeoff=tradeoff,
                    models=models)


def test_probabilities_are_per_tier_success_probabilities():
    head = make_head()
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    p = head.probabilities(x)
    assert p.shape == (5, 3) and ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(x @ head.coef.T))), rtol=1e-5)


def test_decide_maximises_success_net_of_cost():
    probs = np.array([[0.9, 0.9, 0.9], [0.2, 0.8, 0.85], [0.1, 0.2, 0.9], [0.1, 0.1, 0.1]])
    cost = (0.01, 0.1, 1.0)
    # tradeoff 0: best expected quality, cheaper tier on ties; unsolvable rows go to tier 1
    assert decide(probs, cost, 0.0).tolist() == [1, 3, 3, 1]
    # 0.1: row 1 gives up 0.05 of P to save 0.09 of cost (worth 0.009) -> tier 2; row 2 keeps tier 3
    assert decide(probs, cost, 0.1).tolist() == [1, 2, 3, 1]
    assert decide(probs, cost, 20.0).tolist() == [1, 1, 1, 1]
    assert decide(probs, cost, -1e3).tolist() == [3, 3, 3, 3], "a large negative tradeoff means always tier 3"


def test_rows_outside_the_support_go_to_tier_3_whatever_the_probabilities():
    probs = np.array([[0.9, 0.9, 0.9], [0.1, 0.1, 0.1]])
    assert decide(probs, (0.01, 0.1, 1.0), 0.5, outside=np.array([True, True])).tolist() == [3, 3]
    assert decide(probs, (0.01, 0.1, 1.0), 0.5, outside=np.array([False, True])).tolist() == [1, 3]


def test_support_margin_is_the_best_similarity_over_each_centroids_own_bar():
    centroids = np.eye(3, 8, dtype=np.float32)  # unit vectors along axes 0, 1, 2
    support = Support(centroids, np.array([0.9, 0.5, 0.99], np.float32))
    x = np.array([[2, 0, 0, 0, 0, 0, 0, 0],  # on centroid 0: cos 1 - 0.9
                  [0, 1, 0, 1, 0, 0, 0, 0],  # cos 0.707 to centroid 1, bar 0.5
                  [0, 0, 1, 1, 0, 0, 0, 0],  # cos 0.707 to centroid 2, bar 0.99: short of it
                  [0, 0, 0, 0, 0, 0, 0, 1]], np.float32)  # orthogonal to all
    np.testing.assert_allclose(support.margin(x), [0.1, 0.7071 - 0.5, 0.7071 - 0.99, -0.5], atol=1e-3)
    head = replace(make_head(), support=support)
    assert head.outside(x).tolist() == [False, False, True, True]
    assert make_head().outside(x).tolist() == [False] * 4, "a head without support checks nothing"


def test_fitted_support_holds_its_training_clusters_and_not_a_new_one():
    from tierwise_tools.fitting import fit_support

    rng = np.random.default_rng(0)
    axes = np.eye(16, 32)
    def cluster(axis, n):
        return axes[axis] + 0.15 * rng.normal(size=(n, 32))
    train = np.vstack([cluster(a, 400) for a in range(8)])
    support = fit_support(train)
    assert len(support.bars) == 32, "one centroid per 100 training queries"
    seen = np.vstack([cluster(a, 100) for a in range(8)])
    assert (support.margin(seen) < 0).mean() < 0.12, "new queries like the training ones stay inside"
    assert (support.margin(cluster(12, 200)) < 0).all(), "a kind of query never trained on is outside"


def test_head_round_trips_through_json(tmp_path):
    head = make_head(tradeoff=0.3, models=("a", "b", "c"))
    head.save(tmp_path / "h" / "head.json")
    loaded = TierHead.load(tmp_path / "h" / "head.json")
    assert loaded.version == head.version and loaded.tradeoff == 0.3 and loaded.models == ("a", "b", "c")
    assert loaded.relative_cost == (0.01, 0.1, 1.0)
    np.testing.assert_allclose(loaded.coef, head.coef, atol=1e-5)
    assert loaded.support is None
    centroids = np.eye(2, 8, dtype=np.float32)
    supported = replace(head, support=Support(centroids, np.array([0.5, 0.25], np.float32))).versioned("2026-01-01")
    assert supported.version != head.versioned("2026-01-01").version, "the version covers the support"
    supported.save(tmp_path / "supported.json")
    back = TierHead.load(tmp_path / "supported.json")
    np.testing.assert_allclose(back.support.centroids, centroids, atol=1e-3)
    assert back.support.bars.tolist() == [0.5, 0.25] and back.version == supported.version
    registry = HeadRegistry.from_dir(tmp_path)
    assert registry.names == ["h"] and registry.get("").name == "h" and registry.get("other") is None


def test_registry_picks_the_head_trained_on_a_lineup():
    registry = HeadRegistry([make_head("default"), make_head("abc", models=("a", "b", "c"))], "default")
    assert registry.for_lineup(("a", "b", "c")).name == "abc"
    assert registry.for_lineup(("a", "b", "x")).name == "default"


def test_old_head_format_is_refused_with_a_way_out(tmp_path):
    (tmp_path / "head.json").write_text('{"format": "tierwise.head/v1", "tiers": [1, 2, 3]}')
    with pytest.raises(ValueError, match="retrain it with `tierwise train`"):
        TierHead.load(tmp_path / "head.json")


def test_registry_rejects_bad_defaults_and_names():
    with pytest.raises(ValueError, match="default head"):
        HeadRegistry([make_head("a")], default="b")
    with pytest.raises(ValueError, match="must match"):
        make_head("Bad Name")


def test_shipped_default_head_loads():
    from classifier_service.config import Config

    registry = HeadRegistry.from_dir(Config().heads_dir)
    head = registry.get("")
    assert head.name == "default" and head.dimension == 384
    assert "held_out_quality_vs_frontier" in head.card


def test_cache_is_a_bounded_lru_of_exact_texts():
    cache: DecisionCache[int] = DecisionCache(2)
    assert len(cache.key("v1", "x" * 32768)[1]) == 16, "an entry's key is a digest, whatever the text"
    cache.put(cache.key("v1", "a"), 1)
    cache.put(cache.key("v1", "b"), 2)
    assert cache.get(cache.key("v1", " A ")) is None, "only the exact text hits"
    assert cache.get(cache.key("v1", "a")) == 1  # touch a: b is now the oldest
    cache.put(cache.key("v1", "c"), 3)
    assert cache.get(cache.key("v1", "b")) is None
    assert cache.get(cache.key("v2", "a")) is None, "another head version must miss"
    assert len(cache) == 2 and cache.hits == 1 and cache.misses == 3
    off: DecisionCache[int] = DecisionCache(0)
    off.put(off.key("v", "x"), 1)
    assert len(off) == 0


def test_buckets_group_similar_lengths_and_cover_everything():
    lengths = [5, 200, 6, 7, 190, 50, 5, 256]
    groups = buckets(lengths, max_pad_ratio=1.25, max_size=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) <= 3
        widths = [lengths[i] for i in g]
        assert max(widths) * len(widths) <= 1.25 * sum(widths) or len(g) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 256), max_size=40), st.integers(1, 32), st.one_of(st.none(), st.integers(1, 2048)))
def test_buckets_keep_every_limit_and_lose_no_text(lengths, max_size, max_tokens):
    groups = buckets(lengths, max_pad_ratio=1.25, max_size=max_size, max_tokens=max_tokens)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        widths = [lengths[i] for i in g]
        assert len(g) <= max_size
        if len(g) > 1:  # one text always runs, however long
            assert max(widths) * len(g) <= 1.25 * sum(widths)
            assert max_tokens is None or max(widths) * len(g) <= max_tokens


def test_a_token_cap_splits_a_bucket_of_long_texts_but_not_of_short_ones():
    long, short = [150] * 8, [12] * 8
    assert [len(g) for g in buckets(long, 1.25, 32)] == [8]
    assert [len(g) for g in buckets(long, 1.25, 32, max_tokens=300)] == [2, 2, 2, 2]
    assert [len(g) for g in buckets(short, 1.25, 32, max_tokens=300)] == [8]
    assert [len(g) for g in buckets([400], 1.25, 32, max_tokens=300)] == [1]


def rec(i, scores, costs=(1.0, 10.0, 100.0)) -> Record:
    return Record(id=str(i), source="t", task="t", query=f"q{i}", scores=scores, costs=costs, responses=(None,) * 3)


def test_routing_metrics_against_hand_computed_values():
    records = [rec(0, (1, 1, 1)), rec(1, (0, 1, 1)), rec(2, (0, 0, 1)), rec(3, (0, 0, 0))]
    # oracle tiers: 1, 2, 3, 1 (unsolvable counts as 1)
    m = routing_metrics(records, np.array([1, 1, 3, 2]))
    assert m["accuracy"] == pytest.approx(2 / 4)  # records 0 and 2
    assert m["quality_preserved"] == pytest.approx(3 / 4)  # all but record 1
    assert m["cost_savings"] == pytest.approx(1 - (1 + 1 + 100 + 10) / 400)
    assert m["answer_quality"] == pytest.approx(2 / 4)  # records 0 and 2 answered acceptably
    assert m["quality_vs_frontier"] == pytest.approx((2 / 4) / (3 / 4))
    assert m["tier_mix"] == pytest.approx([0.5, 0.25, 0.25])
