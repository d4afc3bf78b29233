"""Complete calls named by the caller's idempotency key: a retry of a call whose connection dropped gets that
call's answer instead of paying the providers again.

The first call with a key runs its work in a task of its own, which goes on when its caller goes away (until the
call's deadline, as it would have). A call with the same key and the same request, while that work runs or for
`idempotency.ttl_s` after it ended well, waits for it and gets its answer. The same key with another request is
refused. A call that failed is forgotten when it ends, so its retry runs afresh. Keys are kept per API key, in this
process's memory: a retry that reaches another replica runs again.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Awaitable, Callable

import grpc
from opentelemetry import trace

from tierwise.serving import Rejected
from tierwise.v1 import router_pb2 as pb

from . import access_log
from .expiring import Expiring

log = logging.getLogger("tierwise.router")

HEADER = "idempotency-key"  # gRPC metadata key and HTTP header (case-insensitive there)
REPLAYED = "idempotent-replayed"  # set to "true" on an answer a call with the same key already got
MAX_LENGTH = 255
Work = Callable[["Carried"], Awaitable[pb.CompleteResponse]]


def checked(value: str | None) -> str:
    """The caller's idempotency key ("" for none), or INVALID_ARGUMENT naming it."""
    if value is None:
        return ""
    if not 0 < len(value) <= MAX_LENGTH or not all(" " < c <= "~" for c in value):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{HEADER}: must be 1 to {MAX_LENGTH} printable ASCII characters without spaces")
    return value


class Carried:
    """The span a call's work records on: its call's while the caller waits, then, once the caller is gone, a
    child span of the work that went on (an ended span takes no attributes)."""

    def __init__(self, span, tracer: trace.Tracer):
        self._span, self._tracer, self._own = span, tracer, None
        self.unattended = False

    def left(self) -> None:
        if self._own is None:
            self.unattended = True
            self._own = self._tracer.start_span("tierwise.complete.unattended",
                                                context=trace.set_span_in_context(self._span))
            self._span = self._own

    def ended(self, code: str) -> None:
        if self._own is not None:
            if code != "OK":
                self._own.set_status(trace.Status(trace.StatusCode.ERROR, code))
            self._own.end()

    def __getattr__(self, name: str):
        return getattr(self._span, name)


class _Call:
    def __init__(self, fingerprint: bytes, task: asyncio.Task, carried: Carried):
        self.fingerprint, self.task, self.carried = fingerprint, task, carried
        self.entry = access_log.current()  # the first caller's line; a second one if the work outlives it


class Once:
    def __init__(self, max_entries: int, ttl_s: float, tracer: trace.Tracer,
                 clock: Callable[[], float] = time.monotonic):
        self._calls: Expiring[_Call] = Expiring(max_entries, ttl_s, clock)
        self._running: set[_Call] = set()  # held here too: a task nobody awaits any more may be collected
        self._tracer = tracer

    async def run(self, key_id: str, key: str, request: pb.CompleteRequest, span,
                  work: Work) -> tuple[pb.CompleteResponse, bool]:
        """`work`'s answer for the call named `key` by API key `key_id`, and whether an earlier call with that key
        got it first; `work(span)` runs now only when `key` is "" or names no call that ran or runs."""
        if not key:
            return await work(span), False
        name = (key_id, key)
        fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
        earlier = self._calls.get(name)
        if earlier is not None:
            if earlier.fingerprint != fingerprint:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{HEADER}: already used with a different request; a retry must send the same one")
            answer = await asyncio.shield(earlier.task)
            access_log.current().replayed(answer)
            return answer, True
        carried = Carried(span, self._tracer)
        call = _Call(fingerprint, asyncio.create_task(work(carried)), carried)
        self._calls.put(name, call)
        self._running.add(call)
        call.task.add_done_callback(lambda task: self._ended(name, call))
        try:
            return await asyncio.shield(call.task), False
        except asyncio.CancelledError:
            if not call.task.done():  # the caller is gone; its work goes on for a retry to collect
                carried.left()
            raise

    def _ended(self, name: tuple[str, str], call: _Call) -> None:
        self._running.discard(call)
        error = None if call.task.cancelled() else call.task.exception()
        code = _code(call.task, error)
        call.carried.ended(code)
        if call.carried.unattended:  # nobody is there to hear how it ended
            call.entry.unattended(code)
            if error is not None and not isinstance(error, Rejected):
                log.error("unexpected error in Complete work its caller left", exc_info=error)
        if (call.task.cancelled() or error is not None) and self._calls.get(name) is call:
            self._calls.pop(name)  # nothing was answered: a retry asks again

    async def close(self) -> None:
        """Cancels the work whose callers left: at shutdown no retry can reach what this process keeps, and the
        drain need not wait for it."""
        left = [call.task for call in self._running if call.carried.unattended]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._calls)


def _code(task: asyncio.Task, error: BaseException | None) -> str:
    if task.cancelled():
        return "CANCELLED"
    if error is None:
        return "OK"
    return error.code.name if isinstance(error, Rejected) else "INTERNAL"
