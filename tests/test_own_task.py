"""own_task.in_own_task, which runs a streaming handler's body in a task of its own: it hands over every event and
however the body ends, and neither side can be left waiting on the other."""
from __future__ import annotations

import asyncio
import contextvars

import pytest

from tierwise.own_task import in_own_task

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


def run(coroutine, seconds: float = 5.0):
    async def bounded():
        return await asyncio.wait_for(coroutine, seconds)  # a hang fails the test instead of stalling it
    return asyncio.run(bounded())


def test_events_and_the_callers_context_reach_the_task():
    async def produce(send) -> None:
        for i in range(3):
            await asyncio.sleep(0)
            send(f"{SEEN.get()}{i}")

    async def consume() -> list[str]:
        SEEN.set("k")
        return [event async for event in in_own_task(produce)]

    assert run(consume()) == ["k0", "k1", "k2"]


@pytest.mark.parametrize("error", [ValueError("bad"), asyncio.CancelledError()], ids=["error", "cancelled"])
def test_however_the_body_ends_the_caller_hears_of_it(error):
    async def produce(send) -> None:
        send("first")
        await asyncio.sleep(0)
        raise error

    async def consume() -> list[str]:
        got = []
        with pytest.raises(type(error)):
            async for event in in_own_task(produce):
                got.append(event)
        return got

    assert run(consume()) == ["first"]


def test_a_caller_that_goes_away_cancels_the_body_and_leaves_no_task_waiting():
    ended: list[str] = []

    async def produce(send) -> None:
        try:
            while True:
                send("tick")
                await asyncio.sleep(0.001)
        finally:
            ended.append("cleaned up")
            raise RuntimeError("a cleanup that fails")  # must not leave the task stuck handing it over

    async def consume() -> int:
        events = in_own_task(produce)
        assert await anext(events) == "tick"
        await events.aclose()
        for _ in range(100):
            await asyncio.sleep(0.001)
        return len([t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").startswith("in_own_task")])

    assert run(consume()) == 0 and ended == ["cleaned up"]


def test_flushed_returns_once_the_caller_has_taken_every_event():
    taken: list[str] = []

    async def produce(send) -> None:
        for i in range(3):
            send(str(i))
        await send.flushed()
        send(f"after {len(taken)}")

    async def consume() -> None:
        async for event in in_own_task(produce):
            await asyncio.sleep(0.01)  # a slow caller
            taken.append(event)

    run(consume())
    assert taken == ["0", "1", "2", "after 3"]
