"""A tier's providers, tried in order until one answers."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from ..events import final, single
from .errors import (ChainExhausted, DeadlineExceeded, ProviderError, ProviderFailed, ProviderNotConfigured,
                     StreamInterrupted)
from .provider import Provider
from ..tokens import conversation_tokens
from .types import Attempt, Completion, Events, Messages, OnAttempt, Outcome


class TierChain:
    """The providers of one tier, tried in order until one answers."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        if not providers:
            raise ValueError("a tier chain needs at least one provider")
        self.providers = tuple(providers)

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.aclose()

    async def complete(self, messages: Messages, *, max_tokens: int | None = None,
                       temperature: float | None = None, deadline: float | None = None,
                       on_attempt: OnAttempt | None = None, top_logprobs: int | None = None) -> Completion:
        return await final(self._failover(lambda provider: single(provider.complete(
            messages, max_tokens=max_tokens, temperature=temperature, deadline=deadline, on_attempt=on_attempt,
            top_logprobs=top_logprobs)), request_tokens(messages, max_tokens), on_attempt))

    def stream(self, messages: Messages, *, max_tokens: int | None = None, temperature: float | None = None,
               deadline: float | None = None, on_attempt: OnAttempt | None = None) -> Events:
        """Like `Provider.stream`, failing over to the next provider only while no delta was yielded."""
        return self._failover(lambda provider: provider.stream(
            messages, max_tokens=max_tokens, temperature=temperature, deadline=deadline, on_attempt=on_attempt),
            request_tokens(messages, max_tokens), on_attempt)

    def fits(self, tokens: int) -> bool:
        """Whether any of the tier's providers can hold a request of `tokens`."""
        return any(p.config.fits(tokens) for p in self.providers)

    async def _failover(self, call: Callable[[Provider], Events], tokens: int,
                        on_attempt: OnAttempt | None) -> Events:
        """`call`'s events from each provider in turn, until one gives its Completion (with every attempt). A
        provider whose context window cannot hold the request's `tokens` is skipped, and the attempt says so."""
        attempts: list[Attempt] = []
        for provider in self.providers:
            if not provider.config.fits(tokens):
                skipped = Attempt(provider.config.name, provider.config.model, Outcome.SKIPPED_CONTEXT_WINDOW,
                                  f"the request needs about {tokens} tokens; the context window holds "
                                  f"{provider.config.context_window}")
                attempts.append(skipped)
                if on_attempt is not None:
                    on_attempt(skipped)
                continue
            events = call(provider)
            try:
                async for event in events:
                    if isinstance(event, Completion):
                        yield replace(event, attempts=attempts + event.attempts)
                        return
                    yield event
            except StreamInterrupted as exc:
                raise StreamInterrupted(exc.provider, exc.tokens_sent, exc.cause,
                                        attempts + exc.attempts) from exc.cause
            except DeadlineExceeded:
                raise DeadlineExceeded(attempts) from None
            except (ProviderNotConfigured, ProviderFailed) as exc:
                attempts.extend(exc.attempts)
            finally:
                await events.aclose()
        raise self._exhausted(attempts)

    def _exhausted(self, attempts: list[Attempt]) -> ProviderError:
        if all(a.outcome is Outcome.NOT_CONFIGURED for a in attempts):
            return ProviderNotConfigured([p.config for p in self.providers], attempts)
        return ChainExhausted(attempts)


def request_tokens(messages: Messages, max_tokens: int | None) -> int:
    """What a provider's context window must hold for this request: every message, and the answer's budget."""
    return conversation_tokens(messages) + (max_tokens or 0)
