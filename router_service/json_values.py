"""JSON a caller sends on to a provider, held to what every JSON encoder can write back.

Python's parser reads `1e999` as infinity and `"\\ud800"` as a lone surrogate, and goes as deep as its stack
allows. The SDK refuses to send such values, and that failure must be the request's 400, not a provider's error
(which would count against its breaker).
"""
from __future__ import annotations

import json
import math

MAX_DEPTH = 64  # objects and lists inside each other; JSON Schemas for tools nest far less


class Unsendable(ValueError):
    """A value no strict JSON encoder writes: `where` is its path below the checked value ("" for the value)."""

    def __init__(self, reason: str, keys: list[str | int], whole: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.keys, self.whole = reason, keys, whole  # whole: names the field, not the path in it

    def message(self, field: str = "") -> str:
        """What is wrong, where: the value's path below `field` (the body, for the value itself)."""
        return f"{self.where(field) or 'body'}: {self.reason}"

    def where(self, field: str = "") -> str:
        """The path as the request spells it, below `field`: `tools[0].function.parameters`."""
        path = field
        for key in list(reversed(self.keys))[:(0 if field else 1) if self.whole else None]:
            path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else key)
        return path


def loads(text: str | bytes):
    """`text` parsed, or ValueError (RecursionError too) for what is not JSON, Unsendable for what no strict
    encoder could send on."""
    doc = json.loads(text, parse_constant=_no_constant)
    check(doc)
    return doc


def check(value, depth: int = 0) -> None:
    """Unsendable, naming the path, for a non-finite number, a lone surrogate or nesting past MAX_DEPTH."""
    if isinstance(value, str):
        _text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Unsendable("a number too large for JSON", [])
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise Unsendable(f"JSON nested deeper than {MAX_DEPTH} levels", [], whole=True)
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            try:
                if isinstance(key, str):
                    _text(key)
                check(item, depth + 1)
            except Unsendable as err:
                err.keys.append(key if isinstance(key, int) else _printable(key))
                raise


def _text(value: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Unsendable("not valid Unicode (a lone surrogate escape such as \\ud800)", []) from None


def _printable(key: str) -> str:
    return key.encode("utf-8", "replace").decode("utf-8")[:64]


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
