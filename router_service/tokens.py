"""Token counts estimated from text, for when no provider reported usage and before any was asked."""
from __future__ import annotations

import json

# Counted in quarter tokens, from the text's UTF-8 bytes. Latin text (accents, punctuation and symbols too) at four
# characters a token. A Chinese, Japanese or Korean character is about a token of its own in BPE tokenizers (often
# more), so it counts one whole. Any other character counts its bytes, as byte-level tokenizers start from: two
# quarters for Cyrillic, Greek, Hebrew or Arabic, three for Devanagari or Thai, four for an emoji. A character's
# first byte says which it is (a continuation byte is never one of these), and bytes.translate and bytes.count
# read the bytes in C.
_LATIN_2 = bytes(range(0xC2, 0xCE))  # U+0080-U+037F: Latin-1, Latin Extended A and B, IPA, diacritics (2 bytes)
_LATIN_3 = b"\xe1\xba", b"\xe1\xbb", b"\xe2"  # U+1E80-U+1EFF Vietnamese; U+2000-U+2FFF punctuation, symbols (3 bytes)
_CJK = bytes([*range(0xE3, 0xEE), 0xEF])  # U+3000-U+DFFF kana, ideographs, Hangul; U+F000-U+FFFF fullwidth forms


def estimate_tokens(text: str) -> int:
    """About four characters a token for Latin text, one a token for Chinese, Japanese and Korean, four UTF-8 bytes
    a token otherwise; rounded up: 0 for no text, at least 1 for any. Linear in the text's length."""
    if text.isascii():
        return (len(text) + 3) // 4
    utf8 = text.encode("utf-8", "surrogatepass")
    quarters = (len(utf8) - _count(utf8, _LATIN_2) - 2 * sum(map(utf8.count, _LATIN_3))  # one quarter each
                + _count(utf8, _CJK))  # four each
    return (quarters + 3) // 4


def _count(utf8: bytes, first: bytes) -> int:
    """How many bytes of `utf8` are one of `first`'s."""
    return len(utf8) - len(utf8.translate(None, first))


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
