"""What the HTTP API tells its load balancer and its calls as the router shuts down."""
from __future__ import annotations

import asyncio
from contextlib import contextmanager

from .errors import ShuttingDown


class Health:
    """Whether the HTTP API takes new calls, as GET /health tells a load balancer: from the router's shutdown on,
    while the calls under way finish, it answers 503 so that no new ones are sent here. At the end of the grace,
    the calls still under way are cut: each answers 503 (or ends its stream with an error event) as it unwinds."""

    def __init__(self) -> None:
        self.draining = False
        self.cutting = False
        self.calls: set[asyncio.Task] = set()  # the endpoints' calls under way

    def drain(self) -> None:
        self.draining = True

    def cut(self) -> None:
        self.cutting = True
        for call in self.calls:
            call.cancel()

    @contextmanager
    def under_way(self):
        """The current task is a call under way, which the drain waits for and the cut ends, until this exits."""
        self.calls.add(task := asyncio.current_task())
        try:
            yield
        finally:
            self.calls.discard(task)

    async def unless_cut(self, work, quiet: bool = False):
        """`work`'s result; cut at the end of shutdown's grace, ShuttingDown (a 503), or, `quiet`, nothing (writing
        out a refusal to a client too slow to read it)."""
        try:
            return await work
        except asyncio.CancelledError:
            if not self.cutting:
                raise
            asyncio.current_task().uncancel()
            if not quiet:
                raise ShuttingDown() from None
