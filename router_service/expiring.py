"""Values kept by key in this process's memory for a while: each for `ttl_s` from when it was last put, at most
`max_entries` of them (and, given a `size`, at most `max_bytes` in all), the least recently used out first. The
answer cache, conversation affinity and idempotent answers keep theirs here."""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class Expiring(Generic[V]):
    def __init__(self, max_entries: int | None, ttl_s: float, clock: Callable[[], float] = time.monotonic, *,
                 max_bytes: int | None = None, size: Callable[[V], int] = lambda value: 0):
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self.max_bytes, self.size = max_bytes, size
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[float, V, int]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        if (entry := self._entries.get(key)) is None:
            return None
        if self._expired(entry):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: Hashable, value: V) -> None:
        self._drop(key)
        size = self.size(value)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # it would push out every other value, then itself
        self._entries[key] = (self.clock(), value, size)
        self.bytes += size
        while self._entries and (self._over() or self._expired(next(iter(self._entries.values())))):
            self._drop(next(iter(self._entries)))

    def _over(self) -> bool:
        return ((self.max_entries is not None and len(self._entries) > self.max_entries)
                or (self.max_bytes is not None and self.bytes > self.max_bytes))

    def _expired(self, entry: tuple[float, V, int]) -> bool:
        return self.clock() - entry[0] > self.ttl_s

    def _drop(self, key: Hashable) -> None:
        if (entry := self._entries.pop(key, None)) is not None:
            self.bytes -= entry[2]

    def __len__(self) -> int:
        return len(self._entries)
