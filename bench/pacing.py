"""Open-loop pacing: calls started on a fixed schedule, whatever the replies do.

asyncio's own timers wake late: the epoll selector rounds every timeout up to the next whole millisecond, so a
call meant for time t starts 0.6 ms late at the median (1.2 ms at p99) on an idle machine. Latency counted from
the due time then carries the load generator's slack. A thread sleeping with `time.sleep` (nanosecond timers)
and handing each call to the loop starts it about 0.1 ms late. Decision 0034 measured both.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable


async def on_schedule(count: int, rate: float, call: Callable[[int, float], Awaitable[None]]) -> list[float]:
    """Start call(i, due) for i in range(count), due = start + i / rate, and wait for all of them.

    Returns each call's send lag in ms (when it was started minus its due time)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task] = []
    lags: list[float] = []
    scheduled = loop.create_future()
    stop = threading.Event()

    def launch(i: int, due: float) -> None:
        if stop.is_set():  # handed over just before a cancel
            return
        lags.append((time.perf_counter() - due) * 1e3)
        tasks.append(loop.create_task(call(i, due)))

    def pace() -> None:
        started = time.perf_counter()
        for i in range(count):
            due = started + i / rate
            if stop.wait(max(0.0, due - time.perf_counter() - 0.002)):
                return
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            loop.call_soon_threadsafe(launch, i, due)
        loop.call_soon_threadsafe(scheduled.set_result, None)

    pacer = threading.Thread(target=pace, name="pacer", daemon=True)
    pacer.start()
    try:
        await scheduled
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        pacer.join()
    return lags


async def on_asyncio_timers(count: int, rate: float, call: Callable[[int, float], Awaitable[None]]) -> list[float]:
    """The same schedule kept with asyncio.sleep, as the benches did before decision 0034 (for comparison)."""
    tasks, lags = [], []
    started = time.perf_counter()
    for i in range(count):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        lags.append((time.perf_counter() - due) * 1e3)
        tasks.append(asyncio.create_task(call(i, due)))
    await asyncio.gather(*tasks)
    return lags
