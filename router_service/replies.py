"""Reading a model's short JSON verdict (the judge's tier, a grade, a verifier's yes or no) out of its reply, and
how sure the model was of a yes or no, from its tokens' log probabilities."""
from __future__ import annotations

import json
import math
import re
from typing import Sequence

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


Tokens = Sequence[tuple[str, Sequence[tuple[str, float]]]]  # providers.Completion.tokens


def true_probability(content: str, tokens: Tokens, key: str) -> float | None:
    """P(`key` is true) as the model weighed it where it wrote the value: p(true) / (p(true) + p(false)) over the
    alternatives of the token holding the value's first character. None without usable log probabilities there."""
    match = re.search(r'"%s"\s*:\s*' % re.escape(key), content)
    if match is None or "".join(token for token, _ in tokens) != content:
        return None
    start = 0
    for token, alternatives in tokens:
        if start + len(token) > match.end():
            lead = content[start:match.end()]  # e.g. the space in a ' true' token
            odds = {"t": 0.0, "f": 0.0}
            for text, logprob in alternatives:
                first = text[len(lead):].lstrip()[:1].lower() if text.startswith(lead) else ""
                if first in odds:
                    odds[first] += math.exp(logprob)
            total = odds["t"] + odds["f"]
            return odds["t"] / total if total > 0 else None
        start += len(token)
    return None
