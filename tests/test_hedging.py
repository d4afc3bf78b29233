"""Hedged requests: a tier chain with `hedge_after_ms` also asks its next provider when the running one has sent
nothing for that long, and takes whichever answers first (real providers over the SDK against the test double on
127.0.0.1, as tests/test_providers.py; nothing mocked)."""
from __future__ import annotations

import time

import grpc
import pytest

from router_service.config import ConfigError, parse
from router_service.providers import ChainExhausted, Outcome, TierChain
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault, ProviderDouble
from .servers import KEY_ENV, router_config, running_router
from .test_providers import MESSAGES, api_key, collect, make_provider, outcomes, run, sleeps  # noqa: F401 (fixtures)
from .test_router_complete import ask

pytestmark = pytest.mark.timeout(30)
HEDGE_S = 0.15
SLOW_S = 2.0


@pytest.fixture
def double():
    with ProviderDouble() as running:
        yield running


def chain(double, sleeps, hedge_after_s: float = HEDGE_S, names=("a", "b")) -> TierChain:
    return TierChain([make_provider(double.base_url, name, sleeps, retries=0, timeout_s=5.0) for name in names],
                     hedge_after_s=hedge_after_s)


def timed(awaitable, *to_close):
    started = time.monotonic()
    result = run(awaitable, *to_close)
    return result, time.monotonic() - started


def test_a_slow_provider_is_hedged_and_the_first_answer_taken(double, sleeps):
    double.set_persistent("model-a", Fault.delay(SLOW_S))
    tier = chain(double, sleeps)
    completion, took = timed(tier.complete(MESSAGES), tier)
    assert completion.provider == "b" and completion.content.startswith("answer from model-b")
    assert took < SLOW_S / 2, "the hedge answered long before the slow provider would have"
    assert outcomes(completion.attempts) == [("a", "hedge_cancelled"), ("b", "ok")]
    assert completion.attempts[0].error == "cancelled: b answered first"
    assert HEDGE_S * 1e3 <= completion.attempts[0].latency_ms < SLOW_S * 1e3
    assert len(double.requests_for("model-a")) == 1 and len(double.requests_for("model-b")) == 1


def test_a_provider_that_answers_in_time_is_never_hedged(double, sleeps):
    tier = chain(double, sleeps, hedge_after_s=1.0)
    completion = run(tier.complete(MESSAGES), tier)
    assert completion.provider == "a" and outcomes(completion.attempts) == [("a", "ok")]
    assert double.requests_for("model-b") == []


def test_a_stream_is_hedged_on_its_first_token_and_comes_whole_from_one_provider(double, sleeps):
    double.set_persistent("model-a", Fault.delay(SLOW_S))
    tier = chain(double, sleeps)
    (deltas, completion), took = timed(collect(tier.stream(MESSAGES)), tier)
    assert completion.provider == "b" and "".join(deltas) == completion.content
    assert completion.content.startswith("answer from model-b") and took < SLOW_S / 2
    assert outcomes(completion.attempts) == [("a", "hedge_cancelled"), ("b", "ok")]


def test_the_first_provider_still_wins_when_the_hedge_fails(double, sleeps):
    double.set_persistent("model-a", Fault.delay(0.6))
    double.set_persistent("model-b", Fault.http_error(500))
    tier = chain(double, sleeps)
    completion = run(tier.complete(MESSAGES), tier)
    assert completion.provider == "a"
    assert outcomes(completion.attempts) == [("b", "error"), ("a", "ok")], "in the order they ended"


def test_a_failure_starts_the_next_provider_at_once_and_all_failing_exhausts_the_chain(double, sleeps):
    for name in ("a", "b", "c"):
        double.set_persistent(f"model-{name}", Fault.http_error(500))
    tier = chain(double, sleeps, hedge_after_s=5.0, names=("a", "b", "c"))
    started = time.monotonic()
    with pytest.raises(ChainExhausted) as err:
        run(tier.complete(MESSAGES), tier)
    assert time.monotonic() - started < 2.0, "a failed provider is not waited on for the hedge delay"
    assert outcomes(err.value.attempts) == [("a", "error"), ("b", "error"), ("c", "error")]


def test_a_hedge_that_fails_starts_the_next_at_once_while_the_first_still_runs(double, sleeps):
    double.set_persistent("model-a", Fault.delay(SLOW_S))
    double.set_persistent("model-b", Fault.http_error(500))
    tier = chain(double, sleeps, hedge_after_s=1.0, names=("a", "b", "c"))
    completion, took = timed(tier.complete(MESSAGES), tier)
    assert completion.provider == "c" and took < 1.0 + 0.7, "c asked when b failed, not a second delay later"


def test_hedging_goes_down_the_chain_one_provider_per_delay(double, sleeps):
    for name in ("a", "b"):
        double.set_persistent(f"model-{name}", Fault.delay(SLOW_S))
    tier = chain(double, sleeps, names=("a", "b", "c"))
    completion, took = timed(tier.complete(MESSAGES), tier)
    assert completion.provider == "c" and 2 * HEDGE_S <= took < SLOW_S
    assert sorted(outcomes(completion.attempts)) == [("a", "hedge_cancelled"), ("b", "hedge_cancelled"), ("c", "ok")]


def test_without_hedging_the_chain_waits_for_its_first_provider(double, sleeps):
    double.set_persistent("model-a", Fault.delay(0.5))
    tier = chain(double, sleeps, hedge_after_s=0.0)
    completion = run(tier.complete(MESSAGES), tier)
    assert completion.provider == "a" and double.requests_for("model-b") == []


def test_the_router_hedges_a_tier_configured_to_and_counts_the_cancelled_attempt(tmp_path):
    with ProviderDouble() as double:
        double.set_persistent("t1-a", Fault.delay(SLOW_S))
        doc = router_config(double.base_url, strategy="cheapest")
        doc["tiers"][0]["hedge_after_ms"] = HEDGE_S * 1e3
        with running_router(doc, "127.0.0.1:1", tmp_path, env={KEY_ENV: "k"}) as router, \
                grpc.insecure_channel(router.address) as channel:
            started = time.monotonic()
            answer = router_pb2_grpc.RouterServiceStub(channel).Complete(ask("hello", "cheapest"), timeout=10)
            took = time.monotonic() - started
    assert answer.provider == "t1-b" and answer.tier == 1 and took < SLOW_S / 2
    assert [(a.provider, a.outcome) for a in answer.attempts] == [("t1-a", "hedge_cancelled"), ("t1-b", "ok")]
    assert answer.cost_usd > 0, "the answer that was taken is billed"


@pytest.mark.parametrize("value", [-1, float("nan"), "fast"])
def test_a_bad_hedge_delay_is_a_config_error_naming_the_key(value):
    doc = router_config("http://127.0.0.1:9/v1")
    doc["tiers"][1]["hedge_after_ms"] = value
    with pytest.raises(ConfigError, match=r"tiers\[1\]\.hedge_after_ms"):
        parse(doc)
    assert Outcome.HEDGE_CANCELLED == "hedge_cancelled"
