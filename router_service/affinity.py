"""Conversation affinity (`affinity.ttl_s`): a conversation's later turns are answered at no lower tier than its
earlier ones, and by the provider that answered them when it can take them.

A conversation that moves between models mid-way loses its provider's prompt cache, so the next turn pays the
full input price for the whole history again, and a weaker model may lose the thread a stronger one was keeping.
A conversation is known by its API key's id and its messages up to its first user message (the system prompt and
the opening question), which every later turn repeats; a turn continues it when an assistant message comes
before its last user message. Kept in this process's memory: each replica knows the conversations it served.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from .config import AffinityConfig
from .expiring import Expiring
from .messages import asked
from .strategies import Decision


@dataclass(frozen=True)
class Earlier:
    """Where a conversation's last turn was answered."""
    tier: int
    provider: str


class Affinity:
    def __init__(self, cfg: AffinityConfig, clock: Callable[[], float] = time.monotonic):
        self.on = cfg.ttl_s > 0
        self._turns: Expiring[Earlier] = Expiring(cfg.max_entries, cfg.ttl_s, clock)

    def key(self, messages: Sequence[Mapping], key_id: str) -> bytes | None:
        """The conversation `messages` belong to, for API key `key_id`; None when affinity is off."""
        if not self.on:
            return None
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages) - 1)
        opening = [(m["role"], m.get("content", "")) for m in messages[:first_user + 1]]
        return hashlib.sha256(json.dumps([key_id, opening], ensure_ascii=False).encode()).digest()

    def earlier(self, key: bytes | None, messages: Sequence[Mapping]) -> Earlier | None:
        """Where this conversation's last turn was answered, when `messages` continue it."""
        if key is None:
            return None
        continues = any(m["role"] == "assistant" for m in messages[:asked(messages)])
        return self._turns.get(key) if continues else None

    def answered(self, key: bytes | None, tier: int, provider: str) -> None:
        if key is not None:
            self._turns.put(key, Earlier(tier, provider))


def raised_to(earlier: Earlier, decision: Decision) -> Decision:
    """`decision`, raised to the tier the conversation's earlier turns were answered at."""
    if earlier.tier <= decision.tier:
        return decision
    return replace(decision, tier=earlier.tier, reason=f"{decision.reason}; kept at tier {earlier.tier}: the "
                                                       "conversation's earlier turns were answered there")
