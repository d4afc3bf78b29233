"""Token counts estimated from text, for when no provider reported usage and before any was asked."""
from __future__ import annotations

import json


def estimate_tokens(text: str) -> int:
    """About four characters a token, rounded up: 0 for no text, at least 1 for any."""
    return (len(text) + 3) // 4


MESSAGE_OVERHEAD = 4  # tokens a chat format adds around each message (role, separators)


# What OpenAI's models count for an image: 85 tokens at low detail; at high (or auto) detail, 765 for a 1024 x 1024
# image (85 plus 170 per 512-pixel tile). The size is not known before the provider reads it, so a typical one.
IMAGE_TOKENS = {"low": 85}
DEFAULT_IMAGE_TOKENS = 765


def conversation_tokens(messages) -> int:
    """The prompt's size in tokens, every message counted (with its images and tool calls): what a provider's context
    window must hold."""
    text = sum(estimate_tokens(c) + MESSAGE_OVERHEAD for m in messages if isinstance(c := m.get("content"), str))
    calls = sum(estimate_tokens(call.name + call.arguments) + MESSAGE_OVERHEAD
                for m in messages for call in m.get("tool_calls", ()))
    return text + calls + sum(IMAGE_TOKENS.get(image.get("detail", ""), DEFAULT_IMAGE_TOKENS)
                              for m in messages for image in m.get("images", ()))


def tools_tokens(tools) -> int:
    """What the tools offered take of the prompt: their definitions as JSON, as the model is shown them."""
    return estimate_tokens(json.dumps(list(tools), separators=(",", ":"))) if tools else 0
