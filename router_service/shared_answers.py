"""Idempotency keys across router replicas: the work a keyed Complete claims, and the answer it got, kept as files in
a directory every replica mounts (`idempotency.shared_dir`), so that a retry reaching another replica waits for
that work, or gets its answer, instead of paying the providers again.

Per API key id and idempotency key, named by a hash of both:
- `<name>.claim`, created with O_EXCL by the replica that runs the work and removed when the work ends. It holds
  the request's fingerprint and a token of that replica's own. Its replica touches it every HEARTBEAT_S while the
  work runs; a claim untouched for STALE_S is a dead replica's, and is taken over.
- `<name>.answer`, written atomically when the work succeeds: the request's fingerprint, when it expires (wall
  clock) and the serialized answer. Mode 0600, as it holds the answer's text.
- `<name>.wait`, touched by a replica waiting for another's work, so that the work goes on past
  `retry_window_s` when its own caller left.
Files go through threads of their own: a network volume may block, and neither the event loop nor the threads
other work needs (name lookups for the providers) may wait on it. A look that takes longer than LOOK_TIMEOUT_S, or
fails, is the caller's to fall back from (Once runs the work as if there were no directory).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from google.protobuf.message import DecodeError

from tierwise.atomic import write_atomic
from tierwise.v1 import router_pb2 as pb

log = logging.getLogger("tierwise.router")
MAGIC = b"TWA1"
HEADER = struct.Struct(">4s32sd")  # magic, request fingerprint, expiry (wall clock)
HEARTBEAT_S = 5.0
STALE_S = 30.0  # a claim untouched this long is a dead replica's (allows for clock skew between nodes)
POLL_S = 0.1  # how often a waiting retry looks again
WAITING_S = 1.0  # how often it says it still waits
WANTED_S = 15.0  # how long the work's replica counts it as waiting since (the file's time is the volume's clock)
LOOK_TIMEOUT_S = 2.0
CLAIMED, HELD = "claimed", "held"


class SharedAnswers:
    def __init__(self, directory: Path, ttl_s: float, wall=time.time):
        self.directory, self.ttl_s, self._wall = directory, ttl_s, wall
        self._owned: dict[str, bytes] = {}  # this replica's claims: file name -> the token written in it
        self._said: dict[str, float] = {}  # name -> when this replica last touched its `.wait`
        self._threads = ThreadPoolExecutor(4, thread_name_prefix="shared-answers")
        self._closed = False

    @classmethod
    def at(cls, directory: str, ttl_s: float) -> "SharedAnswers | None":
        """The store in `directory` ("" for none; made if its parent exists), or ValueError naming the setting when
        this process cannot create files there: a retry would silently pay again."""
        if not directory:
            return None
        path = Path(directory)
        probe = path / f".probe.{socket.gethostname()}.{os.getpid()}"
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ValueError(f"idempotency.shared_dir: cannot create files in {path} ({err})") from None
        return cls(path, ttl_s)

    @staticmethod
    def name(key_id: str, key: str) -> str:
        return hashlib.sha256(f"{key_id}\0{key}".encode()).hexdigest()[:40]

    async def step(self, name: str, fingerprint: bytes) -> pb.CompleteResponse | str:
        """The answer another replica left for `name`, if it was for the same request; else CLAIMED when this
        replica now runs the work, or HELD when another one does. ValueError when the answer or the work under way
        is for another request; OSError or TimeoutError when the directory fails or is slow."""
        look = self._submit(self._step, name, fingerprint)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(look), LOOK_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            # Nobody will run the work for a claim this look may still make: give it up as soon as it is made.
            look.add_done_callback(lambda done: self._unclaimed(done, name, fingerprint))
            raise

    def _unclaimed(self, look, name: str, fingerprint: bytes) -> None:
        if not look.cancelled() and look.exception() is None and look.result() == CLAIMED:
            with contextlib.suppress(OSError):
                self._release(name, fingerprint, None)

    def _in_thread(self, work, *args):
        return asyncio.wrap_future(self._submit(work, *args))

    def _submit(self, work, *args):
        if self._closed:
            raise OSError("the shared directory's store is closed")  # the router is stopping: as a failed look
        return self._threads.submit(work, *args)

    async def waiting(self, name: str) -> None:
        """Tells the replica running `name`'s work that a retry here waits for it."""
        now = self._wall()
        if now - self._said.get(name, 0.0) < WAITING_S:
            return
        if len(self._said) > 10_000:
            self._said = {n: t for n, t in self._said.items() if now - t < 3 * WAITING_S}
        self._said[name] = now
        await asyncio.wait_for(self._in_thread(self._path(name, "wait").touch), LOOK_TIMEOUT_S)

    async def wanted(self, name: str) -> bool:
        """Whether a retry on another replica has waited for `name`'s work in the last WANTED_S."""
        try:
            return await asyncio.wait_for(self._in_thread(self._wanted, name), LOOK_TIMEOUT_S)
        except (OSError, TimeoutError):
            return False

    def _wanted(self, name: str) -> bool:
        try:
            return self._wall() - self._path(name, "wait").stat().st_mtime < WANTED_S
        except FileNotFoundError:
            return False

    async def release(self, name: str, fingerprint: bytes, answer: pb.CompleteResponse | None) -> None:
        """The work for `name` ended: its answer (None when it failed) left for other replicas, the claim given up."""
        await self._in_thread(self._release, name, fingerprint, answer)

    async def run(self) -> None:
        """Keep this replica's claims fresh, and every min(60 s, ttl_s / 4) remove what has expired, each on its
        own turn (a long sweep must not let a claim go stale). A failing directory is logged, and tried again at
        the next turn."""
        await asyncio.gather(self._every(HEARTBEAT_S, self._heartbeat), self._every(min(60.0, self.ttl_s / 4),
                                                                                     self._sweep))

    async def _every(self, seconds: float, work) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self._in_thread(work)
            except OSError as err:
                log.warning("idempotency.shared_dir: %s", err)

    def close(self) -> None:
        self._closed = True
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _path(self, name: str, kind: str) -> Path:
        return self.directory / f"{name}.{kind}"

    def _step(self, name: str, fingerprint: bytes) -> pb.CompleteResponse | str:
        kept = self._read_answer(name)
        if kept is not None:
            earlier, answer = kept
            if earlier != fingerprint:
                raise ValueError("already used with a different request")
            return answer
        claim = self._path(name, "claim")
        if self._create(claim, fingerprint):
            return CLAIMED
        try:
            stale = self._wall() - claim.stat().st_mtime > STALE_S
            held_for = claim.read_bytes()[:64]
        except FileNotFoundError:  # released meanwhile: its answer, or nothing, is there on the next look
            return HELD
        if not stale and len(held_for) == 64 and held_for != fingerprint.hex().encode():
            raise ValueError("already used with a different request")
        if stale:
            aside = claim.with_name(f"{claim.name}.{secrets.token_hex(4)}.stale")
            try:
                os.rename(claim, aside)  # one taker wins the rename; the others find the new claim held
            except FileNotFoundError:
                return HELD
            aside.unlink(missing_ok=True)
            if self._create(claim, fingerprint):
                return CLAIMED
        return HELD

    def _create(self, claim: Path, fingerprint: bytes) -> bool:
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        token = fingerprint.hex().encode() + f" {socket.gethostname()} {os.getpid()} {secrets.token_hex(8)}\n".encode()
        try:
            try:
                if os.write(fd, token) != len(token):
                    raise OSError(f"short write to {claim}")
            finally:
                os.close(fd)
        except OSError:  # a full volume: an empty claim nobody touched would hold every replica's retries
            claim.unlink(missing_ok=True)
            raise
        self._owned[claim.name] = token
        return True

    def _still_ours(self, claim: Path) -> bool:
        """Whether `claim` is the one this replica wrote: another replica may have taken it over as stale."""
        try:
            return claim.read_bytes() == self._owned.get(claim.name)
        except FileNotFoundError:
            return False

    def _read_answer(self, name: str) -> tuple[bytes, pb.CompleteResponse] | None:
        try:
            data = self._path(name, "answer").read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < HEADER.size or data[:4] != MAGIC:
            return None
        _, fingerprint, expires = HEADER.unpack_from(data)
        if expires < self._wall():
            return None
        try:
            return fingerprint, pb.CompleteResponse.FromString(data[HEADER.size:])
        except DecodeError:  # cut short by a crash before it reached the disk: no answer
            return None

    def _release(self, name: str, fingerprint: bytes, answer: pb.CompleteResponse | None) -> None:
        claim = self._path(name, "claim")
        try:
            if answer is not None:
                write_atomic(self._path(name, "answer"),
                             HEADER.pack(MAGIC, fingerprint, self._wall() + self.ttl_s) + answer.SerializeToString(),
                             mode=0o600, durable=False)  # a cache: a crash that loses it costs one paid retry
        finally:  # a claim left behind would hold the other replicas' retries until it went stale
            try:
                if self._still_ours(claim):
                    claim.unlink(missing_ok=True)
                    self._path(name, "wait").unlink(missing_ok=True)
            finally:  # never touched again, whatever failed: at worst it goes stale and is taken over
                self._owned.pop(claim.name, None)

    def _heartbeat(self) -> None:
        for name in list(self._owned):
            claim = self.directory / name
            if not self._still_ours(claim):  # taken over as stale: whatever this replica's work gets is still left
                self._owned.pop(name, None)
                continue
            with contextlib.suppress(FileNotFoundError):  # released by its work meanwhile
                os.utime(claim)

    def _sweep(self) -> None:
        """Removes answers past their time (an answer is written once, so its file's time says when), and what
        replicas that died left: claims, waits and half-written answers."""
        now = self._wall()
        left_for = max(self.ttl_s, 2 * STALE_S)  # never a claim whose replica still touches it
        for path in self.directory.iterdir():
            try:
                age = now - path.stat().st_mtime
                if (path.suffix == ".answer" and age > self.ttl_s
                        or path.suffix in (".claim", ".wait", ".stale", ".tmp") and age > left_for):
                    path.unlink(missing_ok=True)
            except OSError:
                continue

