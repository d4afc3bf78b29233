"""A call's events: text deltas as they come, then one final value (a Completion, a Result).

A call that does not stream is the same with no deltas, so one failover or escalation loop serves
both `complete` and `stream`.
"""
from __future__ import annotations

from typing import AsyncGenerator, AsyncIterator, Awaitable, TypeVar

T = TypeVar("T")


async def single(call: Awaitable[T]) -> AsyncGenerator[T, None]:
    """The events of a call that does not stream: its final value alone."""
    yield await call


async def final(events: AsyncIterator[str | T]) -> T:
    """The last event, read to the end so the call finishes: its final value, any deltas before it passed over."""
    async for event in events:
        value = event
    return value
