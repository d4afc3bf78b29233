"""Taking up changed files without a restart: what identifies a file's contents on disk, and a loop that checks
every so often and at once on SIGHUP."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger("tierwise.watching")


def file_signature(*paths: Path | None) -> tuple:
    """Each file's inode, size and mtime (None for a missing one), stat'ed through symlinks, so that a Kubernetes
    ConfigMap or Secret update (an atomic swap of its `..data` link) shows as a change."""
    found = []
    for path in paths:
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            found.append((str(path), None))
            continue
        found.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


_held: list[bool] = []  # a SIGHUP that came while no reload loop ran: the next loop checks at once


def hold_sighup() -> None:
    """From now on SIGHUP is remembered for the reload loop, not fatal: its default action ends the process at once,
    undrained. For a service starting up (before its loop runs) and stopping (after it ended)."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _held.append, True)


async def every_or_sighup(every: float | None, check: Callable[[], Awaitable[None]]) -> None:
    """Await `check()` every `every` seconds (None: never by time) and at once on SIGHUP, until cancelled. One such
    loop per process: SIGHUP has one handler."""
    loop = asyncio.get_running_loop()
    now = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, now.set)
    if _held:
        _held.clear()
        now.set()
    try:
        while True:
            try:
                await asyncio.wait_for(now.wait(), every)
            except asyncio.TimeoutError:
                pass
            now.clear()
            try:
                await check()
            except Exception:  # a check that failed once must not end the loop (nor leave SIGHUP unhandled)
                log.exception("a reload check failed; it runs again at the next")
    finally:
        hold_sighup()
