"""The router's classifier client keeps the hop warm with health checks while idle, and only then."""
from __future__ import annotations

import asyncio

from router_service.classifier_client import ClassifierClient


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
