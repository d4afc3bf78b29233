"""The router's classifier client keeps the hop warm with health checks while idle, and only then."""
from __future__ import annotations

import asyncio

from router_service.classifier_client import ClassifierClient

from .servers import LONG_QUERY


def test_an_idle_client_checks_the_classifiers_health_and_a_busy_one_does_not(classifier):
    async def scenario() -> tuple[int, int, int]:
        client = ClassifierClient(classifier.address, timeout_ms=5000)
        warm = asyncio.create_task(client.keep_warm(0.02))
        try:
            await asyncio.sleep(0.3)
            idle = client.warm_checks
            for i in range(40):  # calls closer together than the period
                await client.classify(f"question {i} for a busy router", timeout_s=5)
                await asyncio.sleep(0.005)
            busy = client.warm_checks - idle
            await asyncio.sleep(0.3)
            return idle, busy, client.warm_checks
        finally:
            warm.cancel()
            await client.close()

    idle, busy, after = asyncio.run(scenario())
    assert idle >= 5, "idle for 0.3 s: a check about every 20 ms"
    assert busy <= 1, "no checks while calls keep coming"
    assert after >= idle + 5, "checks resume once the calls stop"


def test_no_check_goes_out_while_a_call_longer_than_the_period_is_under_way(classifier):
    async def scenario() -> int:
        client = ClassifierClient(classifier.address, timeout_ms=5000)
        warm = asyncio.create_task(client.keep_warm(0.002))
        try:
            await asyncio.sleep(0.05)
            before = client.warm_checks
            for i in range(5):  # a long text's encode takes tens of milliseconds: many periods each
                await client.classify(f"{i} {LONG_QUERY}", timeout_s=5)
            return client.warm_checks - before
        finally:
            warm.cancel()
            await client.close()

    assert asyncio.run(scenario()) <= 1, "a call under way is no idle time"


def test_an_unreachable_classifier_is_left_to_the_next_real_call():
    async def scenario() -> int:
        client = ClassifierClient("127.0.0.1:1", timeout_ms=50)
        warm = asyncio.create_task(client.keep_warm(0.01))
        await asyncio.sleep(0.2)
        assert not warm.done(), "a failed check does not end the task"
        warm.cancel()
        await client.close()
        return client.warm_checks

    assert asyncio.run(scenario()) == 0
