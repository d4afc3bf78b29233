"""Which classifier head the router asks for when its config names none: the head trained on its own tier lineup.

A head records the models it learned from (`models`); the router's lineup is each tier's first provider's
model. The router asks the classifier which heads it serves at start-up and every `classifier.head_refresh_s`,
in the background, so a head promoted into the classifier's directory (docs/decisions/0015) is used with no
restart and no config change. Until one matches, or while the classifier cannot say, requests name no head
and get the classifier's default.
"""
from __future__ import annotations

import asyncio
import logging

import grpc

log = logging.getLogger("tierwise.router")
LIST_TIMEOUT_S = 2.0  # off the request path: a slow answer only delays the switch


class LineupHead:
    def __init__(self, classifier, lineup: tuple[str, ...], refresh_s: float):
        self.classifier = classifier
        self.lineup = tuple(lineup)
        self.refresh_s = refresh_s
        self.name = ""  # "" = the classifier's default head

    async def refresh(self) -> None:
        try:
            reply = await self.classifier.list_heads(LIST_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            log.debug("could not list the classifier's heads: %s", err.code().name)
            return
        found = next((h.name for h in reply.heads if tuple(h.models) == self.lineup), "")
        if found != self.name:
            log.info("classifier head for this lineup: %s", found or "none; the classifier's default",
                     extra={"fields": {"lineup": list(self.lineup), "head": found}})
            self.name = found

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()
