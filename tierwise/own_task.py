"""A streaming gRPC handler's body in a task of its own."""
from __future__ import annotations

import asyncio
import contextvars
from typing import AsyncIterator, Awaitable, Callable

ENDING_S = 1.0  # the most a closed stream waits for its producer's cancellation to run its course


class Sender:
    """How `in_own_task`'s producer hands over events: `send(event)`, and `await send.flushed()` until every event
    sent so far has been taken up by the caller's stream (before ending the call with an error, say, which would
    otherwise drop them)."""

    def __init__(self, queue: asyncio.Queue):
        self._queue = queue

    def __call__(self, event: object) -> None:
        self._queue.put_nowait(event)

    async def flushed(self) -> None:
        await self._queue.join()


async def in_own_task(produce: Callable[[Sender], Awaitable[None]]) -> AsyncIterator[object]:
    """What `produce(send)` sends, yielded as it comes, while `produce` runs in a task of its own (with a copy of
    this context). A streaming handler whose caller goes away is closed by grpc from another context; spans and
    context variables opened across its yields could not be reset there. Opened in `produce`, they end in the task
    that opened them, which is cancelled when this generator is closed.

    The queue is unbounded, so that neither side can wait on the other for ever: however `produce` ends (its
    error, a cancellation it did not ask for, or after this generator is gone), it hands over how without
    waiting. A stream's text is bounded by its answer's max_tokens."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def run() -> None:
        try:
            await produce(Sender(queue))
        except BaseException as err:  # the handler's error (an abort, a cancellation) is the caller's to raise
            queue.put_nowait(err)
            if isinstance(err, asyncio.CancelledError):
                raise
            return
        queue.put_nowait(done)

    task = asyncio.create_task(run(), context=contextvars.copy_context())
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, BaseException):  # events are messages, never exceptions
                raise item
            yield item
            queue.task_done()  # once the caller's stream asks for the next: this one is on its way
    finally:
        task.cancel()
        # Its ending (what it paid, written to the call's access-log entry, say) is over before the call's is.
        await asyncio.wait({task}, timeout=ENDING_S)
