"""Exact-match decision cache, keyed by head version and normalised text."""
from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


def normalise(text: str) -> str:
    # The encoder's tokenizer is uncased BERT and splits on whitespace, so case and runs of
    # whitespace never change the embedding: folding them widens hits without changing answers.
    return " ".join(text.split()).lower()


class DecisionCache(Generic[V]):
    """A bounded LRU map; capacity 0 disables it. Used from the event loop thread only."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(head_version: str, text: str) -> tuple[str, str]:
        return head_version, normalise(text)

    def get(self, key: tuple[str, str]) -> V | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: tuple[str, str], value: V) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
