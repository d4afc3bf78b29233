"""Config fields that carry their documentation, from which the configuration reference is generated."""
from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def doc(text: str, default: Any = MISSING, *, key: str | None = None, nested: type | None = None,
        many: bool = False, factory: Any = MISSING) -> Any:
    """A config field with its documentation (the configuration reference is generated from these)."""
    meta = {"doc": text, "key": key, "nested": nested, "many": many}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
