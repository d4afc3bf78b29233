"""Token counts estimated from text, for when no provider reported usage and before any was asked."""
from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """About four characters a token, rounded up: 0 for no text, at least 1 for any."""
    return (len(text) + 3) // 4


MESSAGE_OVERHEAD = 4  # tokens a chat format adds around each message (role, separators)


def conversation_tokens(messages) -> int:
    """The prompt's size in tokens, every message counted: what a provider's context window must hold."""
    return sum(estimate_tokens(c) + MESSAGE_OVERHEAD for m in messages if isinstance(c := m.get("content"), str))
