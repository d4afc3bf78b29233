"""What the HTTP API tells its load balancer and its calls as the router shuts down."""
from __future__ import annotations

import asyncio


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
