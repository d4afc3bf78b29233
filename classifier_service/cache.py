"""Exact-match decision cache, keyed by head version and a digest of the text.

Exact: a key folding case or whitespace in Python's way is not the tokenizer's (it deletes some control characters
Python splits on, and lowercases a final sigma otherwise), so one text could be answered with another's decision,
and anyone could set a common query's tier for every caller. A 16-byte digest keeps an entry small whatever the
text's length: entries are bounded by count, and a text may be 32 KiB.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class DecisionCache(Generic[V]):
    """A bounded LRU map; capacity 0 disables it. Used from the event loop thread only."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, bytes], V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(head_version: str, text: str) -> tuple[str, bytes]:
        return head_version, hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def get(self, key: tuple[str, bytes]) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: tuple[str, bytes], value: V) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
