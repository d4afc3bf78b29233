"""Complete calls named by the caller's idempotency key: a retry of a call whose connection dropped gets that
call's answer instead of paying the providers again.

The first call with a key runs its work in a task of its own. When its caller goes away the work goes on, for
`idempotency.retry_window_s` unless a retry joins it, and to the first call's deadline at most. A call with the
same key and request waits for the work, within its own deadline, or gets the answer it left, kept for
`idempotency.ttl_s` within `idempotency.max_mb`. The same key with another request is refused. Work that failed
is forgotten, so a later retry asks again, and a waiting one gets the failure; but work cut by its first caller's
deadline, or refused before any work for that caller's key or a full router, a waiting retry asks again itself.
Keys are kept per API key in this process's memory. With `idempotency.shared_dir` they are also kept in files every
replica reads (shared_answers.py), so a retry that reaches another replica waits for the work, or gets its answer,
there too; without it, such a retry runs again.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from tierwise.serving import Rejected, ThrottledLog
from tierwise.v1 import router_pb2 as pb

from . import access_log
from .expiring import Expiring
from .shared_answers import CLAIMED, POLL_S, SharedAnswers
from .unattended import Carried

log = logging.getLogger("tierwise.router")
HEADER = "idempotency-key"  # gRPC metadata key and HTTP header (case-insensitive there)
REPLAYED = "idempotent-replayed"  # set to "true" on an answer a call with the same key already got
MAX_LENGTH = 255
SETTLE_S = 2.0  # at close, for work just cut to end and give up its claims
Work = Callable[[Carried], Awaitable[pb.CompleteResponse]]
Name = tuple[str, str]  # (API key id, idempotency key)


def checked(value: str | None) -> str:
    """The caller's idempotency key ("" for none), or INVALID_ARGUMENT naming it."""
    if value is None:
        return ""
    if not 0 < len(value) <= MAX_LENGTH or not all(" " < c <= "~" for c in value):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{HEADER}: must be 1 to {MAX_LENGTH} printable ASCII characters, no spaces")
    return value


class _Call:
    """Work under way for a key."""

    def __init__(self, fingerprint: bytes, carried: Carried, work: Work, shared_name: str = ""):
        self.fingerprint, self.carried, self.shared_name = fingerprint, carried, shared_name
        self.entry = access_log.current()  # the first caller's line; a second one if the work outlives it
        self.task = asyncio.create_task(_under(carried, work))
        self.waiting = 0  # retries waiting for it
        self.abandon: asyncio.TimerHandle | None = None


# What one kept answer holds besides its text and its names, in bytes: the fingerprint, this record and the cache's
# own entry (measured with tracemalloc: about 350 for short answers and keys).
ENTRY_BYTES = 400


@dataclass
class _Kept:
    fingerprint: bytes
    answer: bytes  # serialized: as a message, one with log probabilities takes four times its size in memory
    held: int  # what it holds in all, counted against idempotency.max_mb: the caller's key is the caller's to size


class Once:
    def __init__(self, max_mb: float, ttl_s: float, retry_window_s: float, tracer: trace.Tracer,
                 clock: Callable[[], float] = time.monotonic, shared: SharedAnswers | None = None):
        self.retry_window_s, self._tracer, self._shared = retry_window_s, tracer, shared
        self._chores: set[asyncio.Task] = set()  # answers being left for other replicas, abandonments being checked
        self._unshared = ThrottledLog(log)
        self._running: dict[Name, _Call] = {}  # never evicted: a retry must find the work it would pay for again
        self._kept: Expiring[_Kept] = Expiring(None, ttl_s, clock, max_bytes=int(max_mb * 1e6),
                                               size=lambda kept: kept.held)
        self._stopping = False

    async def run(self, key_id: str, key: str, request: pb.CompleteRequest, deadline: float | None, span,
                  work: Work) -> tuple[pb.CompleteResponse, bool]:
        """`work`'s answer for the call named `key` by API key `key_id`, and whether an earlier call with that key
        got it first; `work(span)` runs only when `key` is "" or when no call with it ran well or runs."""
        if not key:
            return await work(span), False
        name = (key_id, key)
        fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
        while True:
            if (kept := self._kept.get(name)) is not None:
                _same(kept.fingerprint, fingerprint)
                return pb.CompleteResponse.FromString(kept.answer), True
            if (running := self._running.get(name)) is not None:
                _same(running.fingerprint, fingerprint)
                if (answer := await self._join(running, deadline)) is not None:
                    return answer, True
                continue  # its work was cut short for its first caller: look again, another retry may have asked
            if self._shared is None:
                return await self._start(name, fingerprint, span, work), False
            found = await self._elsewhere(name, fingerprint, deadline, span, work)
            if isinstance(found, str):
                return await self._start(name, fingerprint, span, work, found), False
            if found is not None:
                return found, True
            # another replica's work goes on, or a call here started meanwhile: look again

    async def _elsewhere(self, name: Name, fingerprint: bytes, deadline: float | None, span, work: Work
                         ) -> pb.CompleteResponse | str | None:
        """What the other replicas know of `name`: the answer one of them left; or its shared name, when this
        replica has claimed the work ("" when the directory failed: the work runs as if there were none); or None,
        to look again (after a short wait, when another replica runs it)."""
        shared_name = SharedAnswers.name(*name)
        look = asyncio.ensure_future(self._shared.step(shared_name, fingerprint))
        try:
            step = await asyncio.shield(look)
        except asyncio.CancelledError:  # the work a claim won goes on for a retry, as when its caller leaves later
            look.add_done_callback(lambda done: self._left_during_look(done, name, shared_name, fingerprint, span,
                                                                       work))
            raise
        except ValueError:
            raise _mismatch() from None
        except (OSError, TimeoutError) as err:
            self._unshared.note("idempotency.shared_dir failed; keyed calls run as if it were not set",
                                error=str(err) or type(err).__name__)
            return None if self._known_here(name) else ""
        if self._known_here(name):  # a call here got there first meanwhile
            if step == CLAIMED:
                await self._give_up(shared_name, fingerprint)
            return None
        if isinstance(step, pb.CompleteResponse):
            self._keep(name, fingerprint, step)
            return step
        if step == CLAIMED:
            return shared_name
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise _waited_too_long()
        with contextlib.suppress(OSError, TimeoutError):  # the work's replica may then give up on it: the retry runs it
            await self._shared.waiting(shared_name)
        await asyncio.sleep(POLL_S if left is None else min(POLL_S, left))
        return None

    def _keep(self, name: Name, fingerprint: bytes, answer: pb.CompleteResponse) -> None:
        serialized = answer.SerializeToString()
        self._kept.put(name, _Kept(fingerprint, serialized,
                                   len(serialized) + len(name[0]) + len(name[1]) + ENTRY_BYTES))

    def _known_here(self, name: Name) -> bool:
        """Whether this replica runs work for `name`, or keeps its answer."""
        return name in self._running or self._kept.get(name) is not None

    def _left_during_look(self, look: asyncio.Future, name: Name, shared_name: str, fingerprint: bytes, span,
                          work: Work) -> None:
        if look.cancelled() or look.exception() is not None or look.result() != CLAIMED:
            return
        if self._known_here(name) or self._stopping:
            self._chore(self._give_up(shared_name, fingerprint))
            return
        self._left(self._begin(name, fingerprint, span, work, shared_name))

    async def _give_up(self, shared_name: str, fingerprint: bytes) -> None:
        """A claim for work this replica will not run; if it cannot be given up, it goes stale and is taken over."""
        with contextlib.suppress(OSError, TimeoutError):
            await self._shared.release(shared_name, fingerprint, None)

    def _begin(self, name: Name, fingerprint: bytes, span, work: Work, shared_name: str = "") -> _Call:
        call = _Call(fingerprint, Carried(span, self._tracer), work, shared_name)
        self._running[name] = call
        call.task.add_done_callback(lambda _: self._ended(name, call))
        return call

    async def _start(self, name: Name, fingerprint: bytes, span, work: Work,
                     shared_name: str = "") -> pb.CompleteResponse:
        call = self._begin(name, fingerprint, span, work, shared_name)
        try:
            return await asyncio.shield(call.task)
        except asyncio.CancelledError:
            if not call.task.done():
                self._left(call)
            raise

    def _left(self, call: _Call) -> None:
        """Its caller is gone: the work goes on for a retry to collect."""
        call.carried.left()
        self._unless_joined(call)

    async def _join(self, call: _Call, deadline: float | None) -> pb.CompleteResponse | None:
        """The answer of `call`, waited for within `deadline`; None when its work ended for what was the first
        caller's alone (its deadline; its key's spend or rate, or a full router, refused it before any work): this
        call then asks again, and is refused, counted and given back to its key's rate as its own."""
        call.waiting += 1
        if call.abandon is not None:
            call.abandon.cancel()
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return await asyncio.wait_for(asyncio.shield(call.task), left)
        except TimeoutError:
            raise _waited_too_long() from None
        except asyncio.CancelledError:
            if call.task.cancelled() and not asyncio.current_task().cancelling():
                return None
            raise
        except Rejected as err:
            if err.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                return None
            raise
        finally:
            call.waiting -= 1
            self._unless_joined(call)

    def _unless_joined(self, call: _Call) -> None:
        """Cancels `call`'s work in retry_window_s unless a retry comes for it: a caller that left on purpose (a
        cancelled call, a hedge that lost) sends none. Once the router is stopping, at once."""
        if call.carried.unattended and not call.waiting and not call.task.done():
            if self._stopping:
                call.task.cancel()
            else:
                call.abandon = asyncio.get_running_loop().call_later(self.retry_window_s, self._abandon, call)

    def _abandon(self, call: _Call) -> None:
        """Cancels the work nobody here came back for, unless a retry on another replica waits for it."""
        if not call.shared_name or self._stopping:
            call.task.cancel()
            return

        async def unless_wanted() -> None:
            if call.task.done() or not call.carried.unattended or call.waiting:
                return
            if await self._shared.wanted(call.shared_name) and not self._stopping:
                call.abandon = asyncio.get_running_loop().call_later(self.retry_window_s, self._abandon, call)
            else:
                call.task.cancel()
        self._chore(unless_wanted())

    def _chore(self, work) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _ended(self, name: Name, call: _Call) -> None:
        if self._running.get(name) is call:
            del self._running[name]
        if call.abandon is not None:
            call.abandon.cancel()
        error = None if call.task.cancelled() else call.task.exception()
        code = _code(call.task, error)
        call.carried.ended(error)
        if call.carried.unattended:  # nobody is there to hear how it ended
            call.entry.unattended(code)
            if error is not None and not isinstance(error, Rejected):
                log.error("unexpected error in Complete work its caller left", exc_info=error)
        if code == "OK":
            self._keep(name, call.fingerprint, call.task.result())
        if call.shared_name:
            self._chore(self._leave(call, call.task.result() if code == "OK" else None))

    async def _leave(self, call: _Call, answer: pb.CompleteResponse | None) -> None:
        try:
            await self._shared.release(call.shared_name, call.fingerprint, answer)
        except OSError as err:  # this replica still has it; a retry reaching another one pays again
            log.warning("could not leave a Complete's answer for the other replicas: %s", err)

    def stop(self) -> None:
        """The router is cutting its calls: work their callers leave now is cut with them (they are told to retry
        elsewhere), as is the work left earlier."""
        self._stopping = True
        for call in list(self._running.values()):
            self._unless_joined(call)

    async def close(self, until: float | None = None) -> None:
        """Cuts the work whose callers left and that no retry here waits for: once the router takes no more calls,
        no retry can reach what this process keeps, except one on another replica, through the shared directory.
        Such work goes on until `until` (monotonic) as it would have: for `retry_window_s`, and for as long as a
        retry elsewhere waits for it. Calls cut at the grace that unwind meanwhile are cut with it; it returns once
        they have ended and their claims are given up, or SETTLE_S after."""
        kept_for_others = [c.task for c in self._running.values() if c.shared_name and c.carried.unattended]
        if kept_for_others and until is not None and until > time.monotonic():
            await asyncio.wait(kept_for_others, timeout=until - time.monotonic())
        self._stopping = True  # from now on, a call whose caller leaves is cut at once
        give_up = time.monotonic() + SETTLE_S
        while self._running or self._chores:
            for call in list(self._running.values()):
                if call.carried.unattended and not call.waiting:
                    call.task.cancel()
            if time.monotonic() >= give_up:
                break
            await asyncio.sleep(0.01)

    @property
    def kept_bytes(self) -> int:
        return self._kept.bytes

    def __len__(self) -> int:
        return len(self._running) + len(self._kept)


async def _under(carried: Carried, work: Work) -> pb.CompleteResponse:
    """`work` with `carried` as the current span, so the spans it starts (provider attempts) are children of the
    unattended span once its caller has left."""
    token = otel_context.attach(trace.set_span_in_context(carried))
    try:
        return await work(carried)
    finally:
        otel_context.detach(token)


def _same(earlier: bytes, fingerprint: bytes) -> None:
    if earlier != fingerprint:
        raise _mismatch()


def _mismatch() -> Rejected:
    return Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                    f"{HEADER}: already used with a different request; a retry must send the same one")


def _waited_too_long() -> Rejected:
    return Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                    "deadline passed while waiting for the earlier call with this idempotency-key")


def _code(task: asyncio.Task, error: BaseException | None) -> str:
    if task.cancelled():
        return "CANCELLED"
    if error is None:
        return "OK"
    return error.code.name if isinstance(error, Rejected) else "INTERNAL"
