"""How a tier spreads its requests over its providers: which one a request asks first. The others stay its
fallbacks, in the same order, so balancing never costs a request its failover."""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Callable, Protocol

from .provider import Provider
from .types import Events

EXPLORE_EVERY = 20  # `fastest`: every this many requests go round the providers, so a slow one is measured again
SMOOTHING = 0.3  # `fastest`: the weight of the newest first-token time in a provider's running mean


class Balance(Protocol):
    """Orders a tier's providers for one request, and may watch each call to learn from it."""

    def order(self, providers: list[Provider]) -> list[Provider]:
        """The providers able to take the request, in the order to ask them."""

    def watch(self, provider: Provider, events: Events) -> Events:
        """`provider`'s events for one request, passed through unchanged."""


class InOrder:
    """The chain as configured: the first provider answers every request; the rest are its fallbacks."""

    def order(self, providers: list[Provider]) -> list[Provider]:
        return providers

    def watch(self, provider: Provider, events: Events) -> Events:
        return events


class RoundRobin(InOrder):
    """Each request starts one provider further along the chain; with weights, each provider starts its share of
    them, spread out (smooth weighted round robin: weights 3 and 1 give a, a, b, a, not a, a, a, b)."""

    def __init__(self) -> None:
        self._credit: dict[Provider, int] = {}

    def order(self, providers: list[Provider]) -> list[Provider]:
        if not providers:
            return providers
        for p in providers:
            self._credit[p] = self._credit.get(p, 0) + p.config.weight
        first = max(providers, key=lambda p: self._credit[p])
        self._credit[first] -= sum(p.config.weight for p in providers)
        return open_last(rotated(providers, providers.index(first)))


class LeastBusy(InOrder):
    """The provider with the fewest of this router's requests under way first; ties go round the chain."""

    def __init__(self) -> None:
        self._turns = itertools.count()
        self.busy: dict[Provider, int] = {}

    def order(self, providers: list[Provider]) -> list[Provider]:
        return open_last(sorted(rotated(providers, next(self._turns)), key=lambda p: self.busy.get(p, 0)))

    def watch(self, provider: Provider, events: Events) -> Events:
        return watched(provider, events, self.busy)


class Fastest(InOrder):
    """The provider with the shortest recent time to its first token first (a whole answer's: its full time).
    Providers not yet measured go first; every `explore_every`-th request goes round the chain instead."""

    def __init__(self, explore_every: int = EXPLORE_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.explore_every = explore_every
        self.clock = clock
        self.first_token_s: dict[Provider, float] = {}
        self._requests = itertools.count()

    def order(self, providers: list[Provider]) -> list[Provider]:
        n = next(self._requests)
        if n and n % self.explore_every == 0:
            return open_last(rotated(providers, n // self.explore_every))
        return open_last(sorted(providers, key=lambda p: self.first_token_s.get(p, -1.0)))

    def watch(self, provider: Provider, events: Events) -> Events:
        return watched(provider, events, first_token=self._measured, clock=self.clock)

    def _measured(self, provider: Provider, seconds: float) -> None:
        last = self.first_token_s.get(provider)
        self.first_token_s[provider] = seconds if last is None else last + SMOOTHING * (seconds - last)


BALANCES: dict[str, Callable[[], Balance]] = {"order": InOrder, "round_robin": RoundRobin,
                                              "least_busy": LeastBusy, "fastest": Fastest}


def balance(name: str) -> Balance:
    """A new balance of the kind `name` (one of BALANCES) for one tier."""
    return BALANCES[name]()


def rotated(providers: list[Provider], turn: int) -> list[Provider]:
    start = turn % len(providers) if providers else 0
    return providers[start:] + providers[:start]


def open_last(providers: list[Provider]) -> list[Provider]:
    """Providers whose breaker is cooling down moved behind the rest (they would refuse at once); one whose cooldown
    has passed keeps its place, so its probe goes out."""
    return sorted(providers, key=lambda p: p.breaker.cooling)


def preferred_first(providers: list[Provider], name: str) -> list[Provider]:
    """`providers` with the one called `name` first (the provider a conversation's earlier turns were answered by),
    unless its breaker is cooling down; the rest keep their order. "" prefers none."""
    chosen = next((p for p in providers if name and p.config.name == name and not p.breaker.cooling), None)
    return providers if chosen is None else [chosen, *(p for p in providers if p is not chosen)]


async def watched(provider: Provider, events: Events, busy: dict[Provider, int] | None = None,
                  first_token: Callable[[Provider, float], None] | None = None,
                  clock: Callable[[], float] = time.monotonic) -> Events:
    """`events`, counted in `busy` while under way, and the time to the first of them given to `first_token`. A call
    closed before its first event (a hedge that lost) gives the time it ran, which its first event would have taken
    at least; one that failed gives none, or failing fast would look fast."""
    if busy is not None:
        busy[provider] = busy.get(provider, 0) + 1
    started = clock()
    try:
        async for event in events:
            if first_token is not None:
                first_token(provider, clock() - started)
                first_token = None
            yield event
    except (GeneratorExit, asyncio.CancelledError):
        if first_token is not None:
            first_token(provider, clock() - started)
        raise
    finally:
        if busy is not None:
            busy[provider] -= 1
        await events.aclose()
