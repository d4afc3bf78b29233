"""Provider health checks (`health_check_s`): failing checks open a dead provider's breaker before a request finds
it, a passing check is the probe that closes a half-open one, and a passing check never clears a closed breaker's
failures. Real providers over the SDK against the test double, or a port nobody listens on; a real router end to
end."""
from __future__ import annotations

import time

import grpc
import pytest

from router_service.breaker import BreakerState, CircuitBreaker
from router_service.config import ConfigError, parse
from tierwise.v1 import router_pb2_grpc

from .provider_double import refused_base_url
from .servers import KEY_ENV, router_config, running_router
from .test_providers import api_key, make_provider, run, sleeps  # noqa: F401 (fixtures)
from .test_router_complete import ask

pytestmark = pytest.mark.timeout(30)


def test_failing_checks_open_a_dead_providers_breaker(sleeps):
    provider = make_provider(refused_base_url(), "dead", sleeps, breaker=CircuitBreaker("dead", failure_threshold=2))

    async def checks():
        return [await provider.check_health() for _ in range(3)]
    assert run(checks(), provider) == [False, False, None], "no check while the breaker cools down"
    assert provider.breaker.state is BreakerState.OPEN


def test_a_passing_check_is_the_probe_that_closes_a_half_open_breaker(double, sleeps):
    breaker = CircuitBreaker("a", failure_threshold=1, cooldown_s=0.05)
    breaker.record_failure()
    provider = make_provider(double.base_url, "a", sleeps, breaker=breaker)
    time.sleep(0.06)
    assert breaker.state is BreakerState.HALF_OPEN
    assert run(provider.check_health(), provider) is True
    assert breaker.state is BreakerState.CLOSED
    assert [r.path for r in double.requests if r.method == "GET"][-1].rstrip("/") == "/v1/models"


def test_a_passing_check_does_not_clear_a_closed_breakers_failures(double, sleeps):
    """A server can list its models and still fail its completions: only answers clear those failures."""
    breaker = CircuitBreaker("a", failure_threshold=3)
    for _ in range(2):
        breaker.record_failure()
    provider = make_provider(double.base_url, "a", sleeps, breaker=breaker)
    assert run(provider.check_health(), provider) is True
    assert breaker.consecutive_failures == 2 and breaker.state is BreakerState.CLOSED


def test_the_router_takes_a_dead_provider_out_before_a_request_finds_it(tmp_path, double):
    doc = router_config(double.base_url, strategy="cheapest")
    dead = doc["tiers"][0]["providers"][0]
    dead.update(base_url=refused_base_url(), health_check_s=1.0, breaker_failures=1, breaker_cooldown_s=60.0)
    with running_router(doc, "127.0.0.1:1", tmp_path, env={KEY_ENV: "k"}) as router, \
            grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for _ in range(100):  # bounded: the first check runs at start; 100 x 50 ms is far more than it takes
            answer = stub.Complete(ask("hello", "cheapest"), timeout=10)
            if answer.attempts[0].outcome == "skipped_breaker_open":
                break
            time.sleep(0.05)
    assert [(a.provider, a.outcome) for a in answer.attempts] == [("t1-a", "skipped_breaker_open"), ("t1-b", "ok")]


@pytest.mark.parametrize("value", [-1, 0.5, float("inf"), "often"])
def test_a_bad_health_check_interval_is_a_config_error_naming_it(value):
    doc = router_config("http://127.0.0.1:9/v1")
    doc["tiers"][2]["providers"][0]["health_check_s"] = value
    with pytest.raises(ConfigError, match=r"tiers\[2\]\.providers\[0\]\.health_check_s"):
        parse(doc)
