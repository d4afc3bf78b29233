"""The model names the HTTP APIs take, and the strategy each routes with.

`tierwise` routes with the configured strategy and `tierwise/<strategy>` with the one it names. A deployment can
list more names in `http.models`, for clients that send a model name of their own and cannot be told another: an
app with `gpt-4o` written into it, or a tool built on Anthropic's SDK that sends Claude model names. Each entry is an
exact name or a pattern in which `*` stands for any run of characters; the first entry that matches decides.
"""
from __future__ import annotations

import re

from .strategies import known, registered

MODEL = "tierwise"


def reserved(name: str) -> bool:
    """Whether `name` is one of the names the router gives meaning to itself."""
    return name == MODEL or name.startswith(MODEL + "/")


def pattern(name: str) -> re.Pattern[str]:
    """`name` as a regular expression: `*` matches any run of characters, everything else only itself."""
    return re.compile(".*".join(map(re.escape, name.split("*"))), re.DOTALL)


class ModelNames:
    def __init__(self, aliases: tuple[tuple[str, str, float | None], ...] = ()):
        """`aliases`: (name or pattern, strategy: "" for the configured one, quality target: None for the head's
        default), in the order they are tried."""
        self.aliases = aliases
        self._patterns = tuple((pattern(name), (strategy, target)) for name, strategy, target in aliases)

    def route_of(self, model: str) -> tuple[str, float | None] | None:
        """(strategy, quality target) `model` routes with ("" and None: the configured strategy, the head's default
        target), or None when the router has no such model."""
        if model == MODEL:
            return "", None
        if model.startswith(MODEL + "/"):
            name = model[len(MODEL) + 1:]
            return (name, None) if known(name) else None
        return next((route for regex, route in self._patterns if regex.fullmatch(model)), None)

    def strategy_of(self, model: str) -> str | None:
        """The strategy `model` routes with ("" for the configured one), or None when the router has no such model."""
        route = self.route_of(model)
        return None if route is None else route[0]

    def listed(self) -> list[str]:
        """The names a models list shows: the router's own and every exact name configured (not the patterns)."""
        return [MODEL, *(f"{MODEL}/{name}" for name in registered()),
                *(name for name, *_ in self.aliases if "*" not in name)]

    def hint(self) -> str:
        """What a caller may send instead, for an error message."""
        extra = ", a name the router's configuration lists" if self.aliases else ""
        return f"use {MODEL!r} (the configured strategy), '{MODEL}/<strategy>'{extra} (GET /v1/models lists them)"
