"""Token counts estimated from text, for when no provider reported usage and before any was asked."""
from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """About four characters a token, rounded up: 0 for no text, at least 1 for any."""
    return (len(text) + 3) // 4
