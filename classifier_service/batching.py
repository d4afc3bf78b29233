"""Adaptive, length-bucketed micro-batching in front of the encoder.

Idle service: a request is embedded alone at once (no waiting window, so no added latency). With
`inline_max_tokens` set, a short text runs on the event loop itself, sparing the hand-off to a worker thread
and back; off by default, because a busy service cannot always tell it is busy (decision 0021).
Busy service: requests queue while every worker runs; a worker back from a run takes everything queued (up
to `max_batch`) itself, tokenises it, sorts it by length and runs it as buckets of similar length, so padding
stays small, each run holding at most `run_tokens` padded tokens (decision 0027). Requests whose caller
already gave up (deadline, cancel) are dropped before any work. Bulk texts (a ClassifyBatch's) wait behind
single calls: a worker takes them when no single call is queued, and one take in BULK_EVERY + 1 while both wait
(so bulk work is slowed by steady calls, never stopped); a big batch holds a router's call up for at most the runs
already going, not for the whole batch.
Quiet service: with `keep_warm_s` set, the first worker runs a one-word text whenever it has waited that long
for work, so the model's weights stay in the caches between sparse calls (decision 0032).
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .encoder import Encoder, Tokens

MAX_PAD_RATIO = 1.25  # the server's bucketing: padded tokens within this ratio of real ones
BULK_EVERY = 8  # takes of single calls' texts in a row, while bulk texts wait, before one take of theirs


@dataclass
class Embedded:
    vector: np.ndarray
    tokens: int
    truncated: bool


@dataclass
class _Pending:
    text: str
    future: asyncio.Future


def buckets(lengths: list[int], max_pad_ratio: float, max_size: int, max_tokens: int | None = None
            ) -> list[list[int]]:
    """Split indices into runs of similar length: padded tokens stay within max_pad_ratio of real ones, and a run
    holds at most `max_tokens` padded tokens (a longer text runs alone)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        grown_real = real + lengths[i]
        padded = lengths[i] * (len(current) + 1)  # sorted ascending: lengths[i] is the new width
        full = len(current) >= max_size or (max_tokens is not None and padded > max_tokens)
        if current and (full or padded > max_pad_ratio * grown_real):
            groups.append(current)
            current, grown_real = [], lengths[i]
        current.append(i)
        real = grown_real
    if current:
        groups.append(current)
    return groups


def embed_bucketed(encoder: Encoder, texts: list[str], max_pad_ratio: float, max_size: int,
                   max_tokens: int | None = None) -> list[Embedded]:
    """What a worker does with the texts it took from the queue: tokenise them, then embed them as buckets of
    similar length (`buckets`), one encoder run each. The benchmark's in-process ceiling runs this too."""
    tokens: list[Tokens] = encoder.tokenize(texts)
    out: list[Embedded | None] = [None] * len(texts)
    for group in buckets([len(t) for t in tokens], max_pad_ratio, max_size, max_tokens):
        vectors = encoder.embed_tokens([tokens[i] for i in group])
        for row, i in enumerate(group):
            out[i] = Embedded(vectors[row], len(tokens[i]), tokens[i].truncated)
    return out  # type: ignore[return-value]


class MicroBatcher:
    """Worker threads that take from the queue themselves: a worker back from a run takes what queued meanwhile
    at once, without waiting for the event loop to hand it over (decision 0028). Results go back to the loop in
    one wake-up per take."""

    def __init__(self, encoder: Encoder, workers: int = 2, max_batch: int = 32, max_pad_ratio: float = MAX_PAD_RATIO,
                 on_batch: Callable[[int], object] | None = None, inline_max_tokens: int = 0,
                 run_tokens: int | None = None, keep_warm_s: float = 0.0):
        self.encoder = encoder
        self.workers = workers
        self.max_batch = max_batch
        self.max_pad_ratio = max_pad_ratio
        self.run_tokens = run_tokens
        self.inline_max_tokens = inline_max_tokens
        self.keep_warm_s = keep_warm_s
        self._warm_tokens = encoder.tokenize(["warm"]) if keep_warm_s else []
        self.warm_runs = 0
        self._on_batch = on_batch or (lambda size: None)  # told how many texts each take holds
        self._ready = threading.Condition()
        self._queue: deque[_Pending] = deque()  # guarded by _ready
        self._bulk: deque[_Pending] = deque()  # guarded by _ready; see _pop
        self._bulk_passed_over = 0  # takes of _queue in a row while _bulk waited
        self._busy = 0  # workers running a take
        self._closed = False
        self._deciding = 0  # calls between their two looks in _alone
        self._threads = [threading.Thread(target=self._work, args=(i == 0 and keep_warm_s > 0,),
                                          name=f"encoder_{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    async def embed(self, texts: list[str], bulk: bool = False) -> list[Embedded]:
        """The texts' embeddings; `bulk` texts are taken only when no other text is queued."""
        if len(texts) == 1 and not bulk and self.inline_max_tokens and await self._alone():
            tokens = self.encoder.tokenize(texts)
            if len(tokens[0]) <= self.inline_max_tokens:
                self._on_batch(1)
                return [Embedded(self.encoder.embed_tokens(tokens)[0], len(tokens[0]), tokens[0].truncated)]
        loop = asyncio.get_running_loop()
        pending = [_Pending(t, loop.create_future()) for t in texts]
        self._submit(pending, bulk)
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except asyncio.CancelledError:
            for p in pending:
                p.future.cancel()
            if bulk:  # out of the queue now, not when a worker next looks at it: steady single calls may defer that
                with self._ready:
                    self._bulk = deque(p for p in self._bulk if not p.future.done())
            raise

    async def _alone(self) -> bool:
        """Whether this call may run on the event loop: no worker busy, nothing queued, and no other call
        arriving. Calls that reached the server while the loop was busy get one turn to come this far first;
        if one does, neither runs here and the workers batch them. Calls that are still inside gRPC when the
        loop looks are not seen: under many callers a share of calls runs here, holding up the rest (decision
        0021), which is why this is off unless configured."""
        if self._busy or self.queued:
            return False
        self._deciding += 1
        try:
            await asyncio.sleep(0)
        finally:
            self._deciding -= 1
        return self._deciding == 0 and not self._busy and not self.queued

    def _submit(self, pending: list[_Pending], bulk: bool = False) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("the encoder workers are closed")
            (self._bulk if bulk else self._queue).extend(pending)
            self._ready.notify(len(pending))  # a ClassifyBatch's texts wake every waiting worker

    def _take(self, keeps_warm: bool = False) -> list[_Pending] | None:
        """The next take, waiting for one; None once closed; [] when `keeps_warm` and `keep_warm_s` passed with
        nothing queued."""
        with self._ready:
            while True:
                if take := self._pop():
                    self._busy += 1
                    return take
                if self._closed:
                    return None
                if not self._ready.wait(self.keep_warm_s if keeps_warm else None):
                    return []

    def _pop(self) -> list[_Pending]:
        """Up to `max_batch` queued texts, skipping any whose caller gave up: single calls' if any are queued (but
        for one take in BULK_EVERY + 1 while bulk texts wait too), else bulk ones; never both, so a single call does
        not wait for bulk texts in its own run. The caller holds `_ready`."""
        take: list[_Pending] = []
        order = (self._bulk, self._queue) if self._bulk_passed_over >= BULK_EVERY else (self._queue, self._bulk)
        for queue in order:
            while queue and len(take) < self.max_batch:
                p = queue.popleft()
                if not p.future.done():
                    take.append(p)
            if take:
                passed_over = queue is self._queue and bool(self._bulk)
                self._bulk_passed_over = self._bulk_passed_over + 1 if passed_over else 0
                break
        return take

    def _work(self, keeps_warm: bool = False) -> None:
        while (take := self._take(keeps_warm)) is not None:
            if not take:
                self._warm()
                continue
            try:
                self._on_batch(len(take))
                result: list[Embedded] | BaseException = embed_bucketed(
                    self.encoder, [p.text for p in take], self.max_pad_ratio, self.max_batch, self.run_tokens)
            except Exception as error:  # handed to the take's callers; the worker carries on
                result = error
            with self._ready:
                self._busy -= 1
            deliver(take, result)

    def _warm(self) -> None:
        """One run of a one-word text, its result dropped: a call arriving meanwhile goes to another worker."""
        try:
            self.encoder.embed_tokens(self._warm_tokens)
        except Exception:  # noqa: BLE001 - a failing encoder fails the next real call, which says why
            return
        self.warm_runs += 1

    @property
    def queued(self) -> int:
        """Texts waiting for a worker (a call cancelled meanwhile counts until a worker skips it)."""
        return len(self._queue) + len(self._bulk)

    def close(self) -> None:
        """Stop the workers once their current runs end; texts still queued are cancelled."""
        with self._ready:
            self._closed = True
            left = [*self._queue, *self._bulk]
            self._queue.clear()
            self._bulk.clear()
            self._ready.notify_all()
        for p in left:
            with contextlib.suppress(RuntimeError):
                p.future.get_loop().call_soon_threadsafe(p.future.cancel)
        for t in self._threads:
            t.join()


def deliver(take: list[_Pending], result: list[Embedded] | BaseException) -> None:
    """From a worker: hand a take's result (row i for take[i]) or its error to the callers' event loops, one
    wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, int]]] = {}
    for row, p in enumerate(take):
        by_loop.setdefault(p.future.get_loop(), []).append((p, row))
    for loop, rows in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits on these
            loop.call_soon_threadsafe(settle, rows, result)


def settle(rows: list[tuple[_Pending, int]], result: list[Embedded] | BaseException) -> None:
    """On the callers' event loop: each caller still waiting gets its row of a take's result, or the take's
    error."""
    for p, row in rows:
        if p.future.done():
            continue
        if isinstance(result, BaseException):
            p.future.set_exception(result)
        else:
            p.future.set_result(result[row])
