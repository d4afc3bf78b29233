"""A head for a new lineup built on the shipped heads (decision 0019): the prior folds into one linear head, is
used only where it predicts the user's own labels better, and its support joins the head's own."""
from __future__ import annotations

import numpy as np

from classifier_service.heads import Support, TierHead, success, unit
from tierwise_tools.fitting import fit, fit_support, select
from tierwise_tools.prior import Prior, joined_support, usable

rng = np.random.default_rng(0)


def prior_head(name: str, coef: np.ndarray, models=("a", "b", "c"), support: Support | None = None) -> TierHead:
    return TierHead(name=name, version="v", coef=coef.astype(np.float32), intercept=np.zeros(3, np.float32),
                    models=models, support=support)


def test_a_model_fitted_on_prior_logits_folds_into_the_same_linear_head():
    x = unit(rng.normal(size=(200, 16)))
    ok = (rng.random((200, 3)) < 0.5).astype(float)
    prior = Prior.from_heads([prior_head("p1", rng.normal(size=(3, 16))), prior_head("p2", rng.normal(size=(3, 16)))])
    from sklearn.linear_model import LogisticRegression

    for scale in (0.0, 0.25, 1.0):
        coef, intercept = fit(x, ok, 1.0, prior, scale)
        direct = np.column_stack([LogisticRegression(C=1.0, max_iter=3000).fit(prior.features(x, scale), ok[:, t])
                                  .predict_proba(prior.features(x, scale))[:, 1] for t in range(3)])
        np.testing.assert_allclose(success(x, coef, intercept), direct, atol=1e-4)


def test_a_prior_that_knows_the_labels_is_chosen_and_one_that_does_not_is_left_out():
    x = unit(rng.normal(size=(300, 16)))
    truth = rng.normal(size=(3, 16)) * 8
    ok = (rng.random((300, 3)) < success(x, truth, np.zeros(3))).astype(float)
    knowing = Prior.from_heads([prior_head("knows", truth)])
    assert select(x, ok, 0, prior=knowing).prior is knowing
    clueless = Prior.from_heads([prior_head("noise", rng.normal(size=(3, 16)) * 8)])
    chosen = select(x, ok, 0, prior=clueless)
    assert chosen.prior is None or chosen.scale > 0, "a prior that predicts nothing is not taken alone"


def test_a_head_is_not_built_on_a_head_of_its_own_lineup_or_another_embedding():
    mine, other, wide = (prior_head("mine", np.zeros((3, 16))), prior_head("other", np.zeros((3, 16)), ("d", "e", "f")),
                         prior_head("wide", np.zeros((3, 32)), ("d", "e", "f")))
    assert [h.name for h in usable([mine, other, wide], 16, ("a", "b", "c"))] == ["other"]


def test_a_pooled_head_that_saw_this_lineups_records_is_no_prior_for_it(tmp_path):
    """A pooled head trained on this lineup's records among others would leak their outcomes into the out-of-fold
    predictions that choose and calibrate the new head; one pooled over other lineups stays a prior."""
    pooled = TierHead(name="pooled", version="v", coef=np.zeros((3, 16), np.float32), intercept=np.zeros(3, np.float32),
                      trained_on=(("a", "b", "c"), ("d", "e", "f")))
    pooled.save(tmp_path / "head.json")
    pooled = TierHead.load(tmp_path / "head.json")
    assert pooled.models == () and pooled.trained_on == (("a", "b", "c"), ("d", "e", "f"))
    assert usable([pooled], 16, ("a", "b", "c")) == []
    assert usable([pooled], 16, ("x", "y", "z")) == [pooled]
    assert usable([pooled], 16, ()) == [pooled], "records that name no lineup: nothing to match"


def test_the_joined_support_holds_the_users_queries_and_the_prior_heads():
    axes = np.eye(8, 16)
    near = lambda a, n: axes[a] + 0.1 * rng.normal(size=(n, 16))  # noqa: E731
    own, theirs = fit_support(near(0, 300)), fit_support(near(1, 300))
    joined = joined_support(own, [prior_head("p", np.zeros((3, 16)), support=theirs)])
    assert not own.outside(near(0, 50)).mean() > 0.2 and own.outside(near(1, 50)).all()
    assert joined.outside(near(0, 50)).mean() < 0.2 and joined.outside(near(1, 50)).mean() < 0.2
    assert joined.outside(near(5, 50)).all(), "what neither saw stays outside"


def test_a_few_queries_make_a_wide_support_not_a_tight_one():
    queries = unit(rng.normal(size=(160, 16)) + 3 * np.eye(16)[0])
    support = fit_support(queries)
    assert len(support.bars) == 1, "fewer than 200 queries: one centroid, its bar from all of them"
    like_them = unit(rng.normal(size=(500, 16)) + 3 * np.eye(16)[0])
    assert support.outside(like_them).mean() < 0.15
