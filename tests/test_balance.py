"""Balancing a tier: which provider a request asks first (`tiers[].balance`), the others staying its fallbacks
(real providers over the SDK against the test double on 127.0.0.1, as tests/test_hedging.py; nothing mocked)."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest

from router_service.breaker import BreakerState, CircuitBreaker
from router_service.config import ConfigError, parse
from router_service.providers import TierChain
from router_service.providers.balance import BALANCES, Fastest, balance
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault
from .servers import KEY_ENV, router_config, running_router
from .test_providers import MESSAGES, api_key, collect, make_provider, outcomes, run, sleeps  # noqa: F401 (fixtures)
from .test_router_complete import ask

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def fresh(double):
    double.reset()


def chain(double, sleeps, kind: str, names=("a", "b"), **providers) -> TierChain:
    return TierChain([make_provider(double.base_url, name, sleeps, retries=0, timeout_s=5.0, **providers)
                      for name in names], balance=balance(kind) if isinstance(kind, str) else kind)


def answered(tier: TierChain, requests: int, stream: bool = False) -> list[str]:
    """The providers that answered `requests` requests sent one after another."""
    async def ask_all() -> list[str]:
        out = []
        for _ in range(requests):
            completion = (await collect(tier.stream(MESSAGES)))[1] if stream else await tier.complete(MESSAGES)
            out.append(completion.provider)
        return out
    return run(ask_all(), tier)


def test_order_keeps_the_chain_as_configured(double, sleeps):
    assert answered(chain(double, sleeps, "order"), 4) == ["a"] * 4
    assert double.requests_for("model-b") == []


def test_round_robin_starts_each_request_one_provider_further(double, sleeps):
    assert answered(chain(double, sleeps, "round_robin", names=("a", "b", "c")), 6) == ["a", "b", "c"] * 2
    assert all(len(double.requests_for(f"model-{n}")) == 2 for n in "abc")


def test_round_robin_gives_each_provider_its_weights_share_spread_out(double, sleeps):
    tier = chain(double, sleeps, "round_robin")
    tier.providers[0].config = replace(tier.providers[0].config, weight=3)
    assert answered(tier, 8) == ["a", "a", "b", "a"] * 2


def test_a_failing_provider_in_turn_fails_over_to_the_next(double, sleeps):
    double.set_persistent("model-b", Fault.http_error(500))
    tier = chain(double, sleeps, "round_robin")

    async def two():
        return [await tier.complete(MESSAGES) for _ in range(2)]
    first, second = run(two(), tier)
    assert outcomes(first.attempts) == [("a", "ok")]
    assert outcomes(second.attempts) == [("b", "error"), ("a", "ok")], "b's turn still gets its answer from a"


def test_a_provider_with_an_open_breaker_is_asked_last(double, sleeps):
    breaker = CircuitBreaker("b", failure_threshold=1, cooldown_s=60.0)
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    tier = TierChain([make_provider(double.base_url, "a", sleeps, retries=0),
                      make_provider(double.base_url, "b", sleeps, retries=0, breaker=breaker)],
                     balance=balance("round_robin"))

    async def four():
        return [await tier.complete(MESSAGES) for _ in range(4)]
    assert [outcomes(c.attempts) for c in run(four(), tier)] == [[("a", "ok")]] * 4, \
        "no request pays an attempt on a provider whose breaker would refuse it"


def test_least_busy_sends_a_request_to_the_provider_not_already_answering(double, sleeps):
    double.set_persistent("model-a", Fault.delay(0.5))
    tier = chain(double, sleeps, "least_busy")

    async def overlapping():
        slow = asyncio.create_task(tier.complete(MESSAGES))
        while not double.requests_for("model-a"):
            await asyncio.sleep(0.01)
        fast = await tier.complete(MESSAGES)
        return (await slow).provider, fast.provider, tier.balance.busy
    slow, fast, busy = run(overlapping(), tier)
    assert (slow, fast) == ("a", "b")
    assert all(count == 0 for count in busy.values()), "every finished request leaves its provider's count"


def test_fastest_learns_which_provider_answers_first_and_measures_again_in_turn(double, sleeps):
    double.set_persistent("model-a", Fault.delay(0.3))
    tier = chain(double, sleeps, Fastest(explore_every=4))
    # Unmeasured providers first (a, then b), then the faster one, and every 4th request in turn.
    assert answered(tier, 9) == ["a", "b", "b", "b", "b", "b", "b", "b", "a"]
    seconds = {p.name: s for p, s in tier.balance.first_token_s.items()}
    assert seconds["a"] > 0.25 > seconds["b"]


def test_fastest_learns_from_a_hedge_that_lost(double, sleeps):
    """The unmeasured slow provider goes first and loses the hedge; the time it ran counts against it, so the next
    request goes to the fast one and needs no hedge."""
    double.set_persistent("model-a", Fault.delay(2.0))
    tier = TierChain([make_provider(double.base_url, n, sleeps, retries=0, timeout_s=5.0) for n in ("a", "b")],
                     hedge_after_s=0.1, balance=balance("fastest"))

    async def two():
        return [await tier.complete(MESSAGES) for _ in range(2)]
    first, second = run(two(), tier)
    assert outcomes(first.attempts) == [("a", "hedge_cancelled"), ("b", "ok")]
    assert outcomes(second.attempts) == [("b", "ok")]


def test_fastest_times_a_stream_to_its_first_token(double, sleeps):
    double.set_persistent("model-b", Fault.delay(0.3))
    tier = chain(double, sleeps, "fastest")
    assert answered(tier, 4, stream=True) == ["a", "b", "a", "a"]


def test_the_router_balances_a_tier_configured_to(tmp_path, double):
    doc = router_config(double.base_url, strategy="cheapest")
    doc["tiers"][0]["balance"] = "round_robin"
    with running_router(doc, "127.0.0.1:1", tmp_path, env={KEY_ENV: "k"}) as router, \
            grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        providers = [stub.Complete(ask(f"hello {i}", "cheapest"), timeout=10).provider for i in range(4)]
    assert providers == ["t1-a", "t1-b", "t1-a", "t1-b"]


@pytest.mark.parametrize("value", ["random", "", 3, None])
def test_an_unknown_balance_is_a_config_error_naming_the_key_and_the_choices(value):
    doc = router_config("http://127.0.0.1:9/v1")
    doc["tiers"][0]["balance"] = value
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.balance") as err:
        parse(doc)
    if isinstance(value, str):
        assert all(name in str(err.value) for name in BALANCES)


@pytest.mark.parametrize("value", [0, -1, 1.5, "9"])
def test_a_bad_weight_is_a_config_error_naming_the_provider(value):
    doc = router_config("http://127.0.0.1:9/v1")
    doc["tiers"][0]["providers"][1]["weight"] = value
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.providers\[1\]\.weight"):
        parse(doc)


def test_every_tier_balances_in_order_unless_configured():
    assert all(t.balance == "order" for t in parse(router_config("http://127.0.0.1:9/v1")).tiers.values())
