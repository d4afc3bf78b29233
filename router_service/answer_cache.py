"""Answers kept for requests asked again: the same conversation, options and strategy from the same API key, within
`cache.ttl_s`. Only requests that ask for a deterministic answer (temperature 0, or a seed) are kept or served, so
a caller sampling several answers still gets several. In this process's memory, least recently used out first."""
from __future__ import annotations

import hashlib
import time
from typing import Callable

from tierwise.v1 import router_pb2 as pb

from .config import CacheConfig
from .expiring import Expiring


class AnswerCache:
    def __init__(self, cfg: CacheConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self._entries: Expiring[pb.CompleteResponse] = Expiring(cfg.max_entries, cfg.ttl_s, clock)

    def key(self, request: pb.CompleteRequest, key_id: str, max_tier: int, quality_target: float | None
            ) -> bytes | None:
        """The cache key of `request` from API key `key_id`, held by that key's settings now (`max_tier`, its
        `quality_target`): an answer given under others is not this key's to serve once they change. None when it
        is not to be cached (the cache is off, or the request asks for a sampled answer)."""
        if not self.cfg.max_entries:
            return None
        deterministic = (request.HasField("temperature") and request.temperature == 0) or request.HasField("seed")
        if not deterministic:
            return None
        digest = hashlib.sha256(f"{key_id}\0{max_tier}\0{quality_target!r}\0".encode())
        digest.update(request.SerializeToString(deterministic=True))
        return digest.digest()

    def get(self, key: bytes | None) -> pb.CompleteResponse | None:
        return None if key is None else self._entries.get(key)

    def put(self, key: bytes | None, answer: pb.CompleteResponse) -> None:
        if key is not None:
            self._entries.put(key, answer)

    def __len__(self) -> int:
        return len(self._entries)


def served(answer: pb.CompleteResponse) -> pb.CompleteResponse:
    """A kept answer as a hit returns it: nothing was asked of a provider, so nothing cost or was attempted."""
    hit = pb.CompleteResponse()
    hit.CopyFrom(answer)
    hit.cost_usd, hit.escalations, hit.cache_hit = 0.0, 0, True
    del hit.attempts[:]
    return hit
