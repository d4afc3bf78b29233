"""The benches' open-loop pacer: every call started, none before its due time, in order, and none after a cancel."""
import asyncio
import time

import pytest

from bench.pacing import on_asyncio_timers, on_schedule


@pytest.mark.parametrize("pace", [on_schedule, on_asyncio_timers])
def test_every_call_starts_in_order_and_never_before_its_due_time(pace):
    started: list[tuple[int, float, float]] = []

    async def call(i: int, due: float) -> None:
        started.append((i, due, time.perf_counter()))
        await asyncio.sleep(0.01)  # replies slower than the schedule: calls overlap, as in the benches

    lags = asyncio.run(pace(40, 400.0, call))
    assert [i for i, _, _ in started] == list(range(40))
    assert all(at >= due for _, due, at in started)
    assert len(lags) == 40 and min(lags) >= 0
    dues = [due for _, due, _ in started]
    assert dues[-1] - dues[0] == pytest.approx(39 / 400.0)


def test_a_cancelled_schedule_starts_nothing_more():
    calls: list[int] = []

    async def call(i: int, due: float) -> None:
        calls.append(i)

    async def main() -> None:
        task = asyncio.create_task(on_schedule(1000, 50.0, call))  # 20 s if left alone
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen = len(calls)
        await asyncio.sleep(0.1)
        assert len(calls) == seen < 1000

    asyncio.run(main())
