"""Reading a model's short JSON verdict (the judge's tier, a grade, a verifier's yes or no) out of its reply."""
from __future__ import annotations

import json
import re

_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_json_field(content: str, key: str, kind: type | tuple[type, ...], valid=lambda v: True):
    """The first `{"key": value}` in a model's reply with a value of `kind` that is `valid`; else ValueError."""
    for match in _OBJECT.finditer(content):
        try:
            value = json.loads(match.group(0)).get(key)
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) and valid(value):
            return value
    raise ValueError(f"no {{\"{key}\": ...}} object in the reply ({len(content)} chars)")
