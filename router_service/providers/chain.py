"""A tier's providers, tried in its balance's order until one answers."""
from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import replace
from typing import Callable, Sequence

from ..events import final, single
from .balance import Balance, InOrder, preferred_first
from .errors import (ChainExhausted, DeadlineExceeded, ProviderError, ProviderFailed, ProviderNotConfigured,
                     StreamInterrupted)
from .provider import Provider
from ..tokens import conversation_tokens
from .types import DEFAULT_SAMPLING, Attempt, Completion, Events, Messages, Needs, OnAttempt, Outcome, Sampling


class TierChain:
    """The providers of one tier, tried in the order `balance` gives (default: as listed) until one answers; with
    `hedge_after_s`, the next is also asked when the running one has sent nothing for that long, and the first to
    answer is taken."""

    def __init__(self, providers: Sequence[Provider], hedge_after_s: float = 0.0,
                 balance: Balance | None = None) -> None:
        if not providers:
            raise ValueError("a tier chain needs at least one provider")
        self.providers = tuple(providers)
        self.hedge_after_s = hedge_after_s
        self.balance = balance or InOrder()

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.aclose()

    async def complete(self, messages: Messages, *, max_tokens: int | None = None,
                       temperature: float | None = None, sampling: Sampling = DEFAULT_SAMPLING,
                       deadline: float | None = None, on_attempt: OnAttempt | None = None,
                       top_logprobs: int | None = None, prefer: str = "") -> Completion:
        """The first answer of the tier's providers in their order, the one called `prefer` (if any) first."""
        return await final(self._failover(lambda provider: single(provider.complete(
            messages, max_tokens=max_tokens, temperature=temperature, sampling=sampling, deadline=deadline,
            on_attempt=on_attempt, top_logprobs=top_logprobs)), needs_of(messages, max_tokens, sampling), on_attempt,
            prefer))

    def stream(self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None,
               sampling: Sampling = DEFAULT_SAMPLING, deadline: float | None = None,
               on_attempt: OnAttempt | None = None, prefer: str = "",
               on_streaming: Callable[[str], None] | None = None) -> Events:
        """Like `Provider.stream`, failing over to the next provider only while no delta was yielded;
        `on_streaming` is told the name of the provider whose text goes out, before its first delta."""
        return self._failover(lambda provider: provider.stream(
            messages, max_tokens=max_tokens, temperature=temperature, sampling=sampling, deadline=deadline,
            on_attempt=on_attempt), needs_of(messages, max_tokens, sampling), on_attempt, prefer, on_streaming)

    def refusals(self, needs: Needs) -> list[Outcome]:
        """Why each of the tier's providers cannot take such a request; [] when one of them can."""
        found = [p.config.refusal(needs) for p in self.providers]
        return [] if None in found else [outcome for outcome, _ in found]

    async def _failover(self, call: Callable[[Provider], Events], needs: Needs,
                        on_attempt: OnAttempt | None, prefer: str = "",
                        on_streaming: Callable[[str], None] | None = None) -> Events:
        """`call`'s events from each provider in turn, until one gives its Completion (with every attempt). A
        provider that cannot take the request (its context window, or images it does not read) is skipped, and
        the attempt says so."""
        attempts: list[Attempt] = []
        fitting = []
        for provider in self.providers:
            refusal = provider.config.refusal(needs)
            if refusal is None:
                fitting.append(provider)
                continue
            _noted(attempts, on_attempt, Attempt(provider.config.name, provider.config.model, *refusal))
        fitting = preferred_first(self.balance.order(fitting), prefer)
        watched = lambda provider: self.balance.watch(provider, call(provider))  # noqa: E731
        if self.hedge_after_s and len(fitting) > 1:
            async for event in self._hedged(watched, fitting, attempts, on_attempt, on_streaming):
                yield event
            return
        for provider in fitting:
            events = watched(provider)
            try:
                async with aclosing(_answer_of(events, attempts, provider, on_streaming)) as answer:
                    async for event in answer:
                        yield event
                return
            except (ProviderNotConfigured, ProviderFailed) as exc:
                attempts.extend(exc.attempts)
            finally:
                await events.aclose()
        raise self._exhausted(attempts)

    async def _hedged(self, call: Callable[[Provider], Events], providers: list[Provider], attempts: list[Attempt],
                      on_attempt: OnAttempt | None, on_streaming: Callable[[str], None] | None) -> Events:
        """`_failover` with hedging: while no provider has sent its first event (a delta, or a whole answer), the
        next one is started each `hedge_after_s`, and at once whenever a running one fails. The first to send
        one answers; the others are cancelled and their attempts say so."""
        running: dict[asyncio.Task, tuple[Provider, Events, float]] = {}
        waiting = list(providers)

        def start() -> None:
            provider = waiting.pop(0)
            events = call(provider)
            running[asyncio.ensure_future(anext(events))] = (provider, events, time.monotonic())

        start()
        try:
            while running:
                done, _ = await asyncio.wait(running, timeout=self.hedge_after_s if waiting else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    start()
                    continue
                for task in done:
                    provider, events, _ = running.pop(task)
                    try:
                        first = task.result()
                    except (ProviderNotConfigured, ProviderFailed) as exc:
                        attempts.extend(exc.attempts)
                        await events.aclose()
                        if waiting:  # a failure starts the next one at once, as without hedging
                            start()
                        continue
                    except DeadlineExceeded:
                        raise DeadlineExceeded(attempts) from None
                    await self._cancel(running, provider, attempts, on_attempt)
                    resumed = _resumed(first, events)
                    try:
                        async with aclosing(_answer_of(resumed, attempts, provider, on_streaming)) as answer:
                            async for event in answer:
                                yield event
                    finally:  # the winner's stream, closed now rather than when collected
                        await resumed.aclose()
                        await events.aclose()
                    return
            raise self._exhausted(attempts)
        finally:
            await self._cancel(running, None, attempts, on_attempt)

    @staticmethod
    async def _cancel(running: dict, winner: Provider | None, attempts: list[Attempt],
                      on_attempt: OnAttempt | None) -> None:
        """Stop the providers still running; with a `winner`, each one's attempt says it lost to it."""
        for task, (provider, events, started) in list(running.items()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await events.aclose()
            if winner is not None:
                _noted(attempts, on_attempt, Attempt(
                    provider.config.name, provider.config.model, Outcome.HEDGE_CANCELLED,
                    f"cancelled: {winner.config.name} answered first", latency_ms=(time.monotonic() - started) * 1e3))
        running.clear()

    def _exhausted(self, attempts: list[Attempt]) -> ProviderError:
        if all(a.outcome is Outcome.NOT_CONFIGURED for a in attempts):
            return ProviderNotConfigured([p.config for p in self.providers], attempts)
        return ChainExhausted(attempts)


async def _answer_of(events: Events, attempts: list[Attempt], provider: Provider,
                     on_streaming: Callable[[str], None] | None = None) -> Events:
    """One provider's events, its Completion carrying the chain's attempts so far; its errors likewise.
    `on_streaming` is told the provider's name before its first delta goes out."""
    told = on_streaming is None
    try:
        async for event in events:
            if isinstance(event, Completion):
                yield replace(event, attempts=attempts + event.attempts)
                return
            if not told:
                on_streaming(provider.config.name)
                told = True
            yield event
    except StreamInterrupted as exc:
        raise StreamInterrupted(exc.provider, exc.tokens_sent, exc.cause, attempts + exc.attempts) from exc.cause
    except DeadlineExceeded:
        raise DeadlineExceeded(attempts) from None


async def _resumed(first: str | Completion, events: Events) -> Events:
    """`events` with the `first` one, already read, put back in front (the caller closes `events`)."""
    yield first
    async for event in events:
        yield event


def _noted(attempts: list[Attempt], on_attempt: OnAttempt | None, attempt: Attempt) -> None:
    attempts.append(attempt)
    if on_attempt is not None:
        on_attempt(attempt)


def prompt_tokens(messages: Messages, sampling: Sampling = DEFAULT_SAMPLING) -> int:
    """About how many tokens a provider reads as the prompt: every message, and the tools offered."""
    return conversation_tokens(messages) + sampling.tool_tokens


def needs_of(messages: Messages, max_tokens: int | None, sampling: Sampling = DEFAULT_SAMPLING) -> Needs:
    """What a provider must take for this request: every message, the tools offered and the answer's budget in its
    context window; the images it carries; whether it offers tools."""
    return Needs(prompt_tokens(messages, sampling) + (max_tokens or 0),
                 any(m.get("images") for m in messages), bool(sampling.tools))
