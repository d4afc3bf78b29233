"""Dispatch to OpenAI-compatible providers through the official `openai` SDK.

A `Provider` is one endpoint and model with its own circuit breaker; each call is retried per
`retry.py` (the SDK's own retries are off, so every HTTP attempt is visible as an `Attempt`). A
`TierChain` tries a tier's providers in order and returns the first answer. A stream fails over only
before its first token: after that, a failure ends it with `StreamInterrupted`, never a mixed answer.

Deadlines are `time.monotonic()` values (the gRPC deadline); each attempt's timeout is the provider's
timeout capped by the time left. API keys are read from the environment at call time, never logged.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, AsyncGenerator, Awaitable, Callable, Iterator, Sequence, TypeVar

import openai
from openai import AsyncStream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.chat_completion import ChoiceLogprobs

from .breaker import CircuitBreaker, StateListener
from .retry import AttemptFailed, Failure, FailureKind, Retrier, RetryPolicy, classify

log = logging.getLogger("tierwise.router.providers")

T = TypeVar("T")
N = TypeVar("N", int, float)
Messages = Sequence[ChatCompletionMessageParam]
Events = AsyncGenerator["str | Completion", None]

# The SDK insists on a key; a provider that needs none (api_key_env = "") is sent this instead.
NO_KEY_NEEDED = "no-key-needed"

# What a failing provider call can raise. ValueError: a body that is not JSON or does not fit the schema.
PROVIDER_ERRORS = (openai.OpenAIError, TimeoutError, ValueError)


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    SKIPPED_BREAKER_OPEN = "skipped_breaker_open"
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True)
class Attempt:
    provider: str
    model: str
    outcome: Outcome
    error: str = ""
    status_code: int | None = None
    latency_ms: float = 0.0  # for a stream: until its end
    retry_after: float | None = None

    def describe(self) -> str:
        text = f"{self.provider}/{self.model}: {self.outcome}"
        return f"{text} ({self.error})" if self.error else text


OnAttempt = Callable[[Attempt], None]


@dataclass(frozen=True)
class Completion:
    content: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    attempts: list[Attempt] = field(default_factory=list)
    # True when the provider reported no usage and the token counts are len(text) / 4 estimates.
    usage_estimated: bool = False
    # Why the provider stopped: "stop", or "length" when the answer was cut off at max_tokens.
    finish_reason: str = "stop"
    # With `top_logprobs` asked for: each generated token and its likeliest alternatives with their log
    # probabilities, e.g. ((' true', ((' true', -0.1), (' false', -2.4))), ...); () when the provider sent none.
    tokens: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    base_url: str
    model: str
    api_key_env: str = ""  # the NAME of the environment variable holding the key; "" = no key needed
    timeout_s: float = 30.0
    max_retries: int = 2
    breaker_failure_threshold: int = 5
    breaker_cooldown_s: float = 30.0


class ProviderError(Exception):
    """Base of the errors below; `attempts` tells what was tried, in order."""

    def __init__(self, message: str, attempts: Sequence[Attempt]) -> None:
        super().__init__(message)
        self.attempts = list(attempts)


class ProviderNotConfigured(ProviderError):
    """No API key in the environment: a deployment problem (the router answers FAILED_PRECONDITION)."""

    def __init__(self, specs: Sequence[ProviderSpec], attempts: Sequence[Attempt]) -> None:
        self.missing_env = [spec.api_key_env for spec in specs]
        super().__init__("; ".join(f"provider {s.name!r} ({s.base_url}) is not configured: set the environment "
                                   f"variable {s.api_key_env} to its API key" for s in specs), attempts)


class ProviderFailed(ProviderError):
    """One provider gave up: its breaker is open, or its attempts failed."""


class DeadlineExceeded(ProviderError):
    """The caller's deadline passed before another provider could be tried."""

    def __init__(self, attempts: Sequence[Attempt]) -> None:
        super().__init__(f"deadline passed after {_describe(attempts)}", attempts)


class ChainExhausted(ProviderError):
    def __init__(self, attempts: Sequence[Attempt]) -> None:
        super().__init__(f"every provider failed: {_describe(attempts)}", attempts)


def _describe(attempts: Sequence[Attempt]) -> str:
    if not attempts:
        return "no attempt"
    return f"{len(attempts)} attempts: " + "; ".join(a.describe() for a in attempts)


class StreamInterrupted(ProviderError):
    """A stream failed after `tokens_sent` text deltas were yielded; it was not (and must not be) resumed."""

    def __init__(self, provider: str, tokens_sent: int, cause: BaseException, attempts: Sequence[Attempt]) -> None:
        self.provider = provider
        self.tokens_sent = tokens_sent
        self.cause = cause
        error = attempts[-1].error if attempts else str(cause)
        super().__init__(f"stream from provider {provider!r} broke after {tokens_sent} text chunks: {error}",
                         attempts)


class IncompleteStream(ValueError):
    """The stream ended without a finish_reason: the provider cut it short."""


class _AttemptLog:
    """The attempts of one call, each also reported to the observability hook as it happens."""

    def __init__(self, on_attempt: OnAttempt | None) -> None:
        self.attempts: list[Attempt] = []
        self._on_attempt = on_attempt

    def add(self, attempt: Attempt) -> Attempt:
        self.attempts.append(attempt)
        if attempt.outcome is not Outcome.OK:
            log.warning("provider attempt did not succeed", extra={"fields": {
                "provider": attempt.provider, "model": attempt.model, "outcome": str(attempt.outcome),
                "status_code": attempt.status_code, "error": attempt.error}})
        if self._on_attempt is not None:
            try:
                self._on_attempt(attempt)
            except Exception:  # a broken metrics hook must not fail the call
                log.exception("on_attempt hook failed")
        return attempt


class Provider:
    def __init__(self, spec: ProviderSpec, *, breaker: CircuitBreaker | None = None,
                 retrier: Retrier | None = None, on_breaker_change: StateListener | None = None) -> None:
        self.spec = spec
        self.breaker = breaker or CircuitBreaker(spec.name, failure_threshold=spec.breaker_failure_threshold,
                                                 cooldown_s=spec.breaker_cooldown_s,
                                                 on_state_change=on_breaker_change)
        self.retrier = retrier or Retrier(RetryPolicy.with_retries(spec.max_retries))
        self._client: openai.AsyncOpenAI | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, messages: Messages, *, max_tokens: int | None = None,
                       temperature: float | None = None, deadline: float | None = None,
                       on_attempt: OnAttempt | None = None, top_logprobs: int | None = None) -> Completion:
        attempts = _AttemptLog(on_attempt)
        client = self._admit(deadline, attempts)
        with _settling_breaker(self.breaker):
            completion, started = await self._with_retries(
                lambda timeout: self._request(client, messages, max_tokens, temperature, timeout, top_logprobs),
                deadline, attempts)
            self.breaker.record_success()
            attempts.add(self._attempt(Outcome.OK, started))
            return replace(completion, attempts=attempts.attempts)

    async def stream(self, messages: Messages, *, max_tokens: int | None = None,
                     temperature: float | None = None, deadline: float | None = None,
                     on_attempt: OnAttempt | None = None) -> Events:
        """Yield text deltas, then one `Completion` with the whole content, usage and attempts.

        Failures before the first delta are retried; after it, `StreamInterrupted` is raised. Reading
        up to the first delta gets the attempt timeout; each later read, the same again.
        """
        attempts = _AttemptLog(on_attempt)
        client = self._admit(deadline, attempts)
        with _settling_breaker(self.breaker):
            (live, delta), started = await self._with_retries(
                lambda timeout: self._open_stream(client, messages, max_tokens, temperature, timeout),
                deadline, attempts)
            tokens_sent = 0
            try:
                while delta is not None:
                    yield delta
                    tokens_sent += 1
                    timeout = self._timeout_for(deadline)
                    try:
                        delta = await live.next_delta(timeout)
                    except PROVIDER_ERRORS as exc:
                        self._record_failure(exc, timeout, started, attempts)
                        raise StreamInterrupted(self.name, tokens_sent, exc, attempts.attempts) from exc
            finally:
                await live.aclose()
            self.breaker.record_success()
            attempts.add(self._attempt(Outcome.OK, started))
            yield replace(_completion(self.spec, messages, live.content, live.usage, live.finish_reason),
                          attempts=attempts.attempts)

    # -- one provider call --

    def _api_key(self) -> str | None:
        if not self.spec.api_key_env:
            return NO_KEY_NEEDED
        return os.environ.get(self.spec.api_key_env) or None

    def _client_for(self, api_key: str) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.spec.base_url, api_key=api_key, max_retries=0,
                                              timeout=self.spec.timeout_s)
        elif self._client.api_key != api_key:
            # A rotated key. The copy shares the connection pool, so calls in flight on the old one go on
            # and nothing is left open.
            self._client = self._client.with_options(api_key=api_key)
        return self._client

    def _admit(self, deadline: float | None, attempts: _AttemptLog) -> openai.AsyncOpenAI:
        """The client for this call, or the error saying why there is no call to make."""
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded([])
        api_key = self._api_key()
        if api_key is None:
            attempts.add(self._attempt(Outcome.NOT_CONFIGURED, error=f"environment variable "
                                       f"{self.spec.api_key_env} is not set"))
            raise ProviderNotConfigured([self.spec], attempts.attempts)
        if not self.breaker.allow():
            attempts.add(self._attempt(Outcome.SKIPPED_BREAKER_OPEN, error="circuit breaker open"))
            raise ProviderFailed(f"provider {self.name!r}: circuit breaker open", attempts.attempts)
        return self._client_for(api_key)

    async def _with_retries(self, call: Callable[[float], Awaitable[T]], deadline: float | None,
                            attempts: _AttemptLog) -> tuple[T, float]:
        """`call(timeout_s)` retried per the policy: (its result, when the successful attempt started).

        Failed attempts are logged and fed to the breaker here; the caller settles success.
        """
        async def one_attempt() -> tuple[T, float]:
            timeout = self._timeout_for(deadline)
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    return await call(timeout), started
            except PROVIDER_ERRORS as exc:
                raise AttemptFailed(self._record_failure(exc, timeout, started, attempts)) from exc

        try:
            return await self.retrier.run(one_attempt, deadline=deadline, may_retry=self.breaker.allow)
        except AttemptFailed:
            raise ProviderFailed(f"provider {self.name!r} failed: {attempts.attempts[-1].error}",
                                 attempts.attempts) from None

    def _timeout_for(self, deadline: float | None) -> float:
        if deadline is None:
            return self.spec.timeout_s
        return max(0.0, min(self.spec.timeout_s, deadline - time.monotonic()))

    def _record_failure(self, exc: BaseException, timeout: float, started: float,
                        attempts: _AttemptLog) -> Failure:
        """Log a failed attempt and give the breaker its verdict."""
        failure = classify(exc)
        timed_out = failure.kind is FailureKind.TIMEOUT and failure.status_code is None
        if timed_out:
            failure = replace(failure, message=f"timed out after {timeout:.3g}s")
        if timed_out and timeout < self.spec.timeout_s:
            self.breaker.record_abandoned()  # the caller's deadline cut it short: no verdict on the provider
        elif failure.provider_at_fault:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()  # it answered, rightly refusing a bad request
        attempts.add(self._attempt(Outcome.ERROR, started, error=failure.message, status_code=failure.status_code,
                                   retry_after=failure.retry_after_s))
        return failure

    def _attempt(self, outcome: Outcome, started: float | None = None, **details: Any) -> Attempt:
        latency_ms = (time.monotonic() - started) * 1000 if started is not None else 0.0
        return Attempt(self.name, self.spec.model, outcome, latency_ms=latency_ms, **details)

    async def _request(self, client: openai.AsyncOpenAI, messages: Messages, max_tokens: int | None,
                       temperature: float | None, timeout: float, top_logprobs: int | None = None) -> Completion:
        response = await client.chat.completions.create(
            model=self.spec.model, messages=list(messages), max_tokens=_set_or_omit(max_tokens),
            temperature=_set_or_omit(temperature), timeout=timeout,
            logprobs=_set_or_omit(True if top_logprobs else None), top_logprobs=_set_or_omit(top_logprobs or None))
        if not response.choices:
            raise ValueError("response has no choices")
        choice = response.choices[0]
        completion = _completion(self.spec, messages, choice.message.content or "", response.usage, choice.finish_reason)
        return replace(completion, tokens=_tokens(choice.logprobs)) if top_logprobs else completion

    async def _open_stream(self, client: openai.AsyncOpenAI, messages: Messages, max_tokens: int | None,
                           temperature: float | None, timeout: float) -> tuple[_LiveStream, str | None]:
        """Start the stream and read up to its first text delta, so that failures so far can be retried."""
        sdk_stream = await client.chat.completions.create(
            model=self.spec.model, messages=list(messages), max_tokens=_set_or_omit(max_tokens),
            temperature=_set_or_omit(temperature), stream=True, stream_options={"include_usage": True},
            timeout=timeout)
        live = _LiveStream(sdk_stream)
        try:
            return live, await live.next_delta(timeout)
        except BaseException:
            await live.aclose()
            raise


@contextmanager
def _settling_breaker(breaker: CircuitBreaker) -> Iterator[None]:
    """Free the breaker's probe slot if a call ends with no verdict (cancelled, or a bug).

    ProviderErrors pass untouched: the breaker was told the outcome before they were raised."""
    try:
        yield
    except ProviderError:
        raise
    except BaseException:
        breaker.record_abandoned()
        raise


class _LiveStream:
    """An open SDK stream and what has been read from it."""

    def __init__(self, sdk_stream: AsyncStream[ChatCompletionChunk]) -> None:
        self._sdk_stream = sdk_stream
        self._chunks = sdk_stream.__aiter__()
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: CompletionUsage | None = None

    async def next_delta(self, timeout: float) -> str | None:
        """The next non-empty text delta, or None once the stream has properly ended."""
        while True:
            try:
                async with asyncio.timeout(timeout):
                    chunk = await anext(self._chunks)
            except StopAsyncIteration:
                if self._finish_reason is None:
                    raise IncompleteStream("stream ended without a finish_reason") from None
                return None
            if chunk.usage is not None:
                self._usage = chunk.usage
            for choice in chunk.choices[:1]:
                self._finish_reason = choice.finish_reason or self._finish_reason
                if choice.delta.content:
                    self._parts.append(choice.delta.content)
                    return choice.delta.content

    async def aclose(self) -> None:
        await self._sdk_stream.close()

    @property
    def content(self) -> str:
        return "".join(self._parts)

    @property
    def usage(self) -> CompletionUsage | None:
        return self._usage

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason


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
        attempts: list[Attempt] = []
        for provider in self.providers:
            try:
                completion = await provider.complete(messages, max_tokens=max_tokens, temperature=temperature,
                                                     deadline=deadline, on_attempt=on_attempt,
                                                     top_logprobs=top_logprobs)
            except DeadlineExceeded:
                raise DeadlineExceeded(attempts) from None
            except (ProviderNotConfigured, ProviderFailed) as exc:
                attempts.extend(exc.attempts)
                continue
            return replace(completion, attempts=attempts + completion.attempts)
        raise self._exhausted(attempts)

    async def stream(self, messages: Messages, *, max_tokens: int | None = None,
                     temperature: float | None = None, deadline: float | None = None,
                     on_attempt: OnAttempt | None = None) -> Events:
        """Like `Provider.stream`, failing over to the next provider only while no delta was yielded."""
        attempts: list[Attempt] = []
        for provider in self.providers:
            events = provider.stream(messages, max_tokens=max_tokens, temperature=temperature,
                                     deadline=deadline, on_attempt=on_attempt)
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
            return ProviderNotConfigured([p.spec for p in self.providers], attempts)
        return ChainExhausted(attempts)


def _set_or_omit(value: N | None) -> N | openai.Omit:
    """Send only what the caller set (not null): the provider applies its own defaults to the rest."""
    return openai.omit if value is None else value


def _completion(spec: ProviderSpec, messages: Messages, content: str, usage: CompletionUsage | None,
                finish_reason: str | None) -> Completion:
    finish_reason = finish_reason or "stop"
    if usage is None:
        return Completion(content, spec.name, spec.model, _estimate_tokens(_prompt_text(messages)),
                          _estimate_tokens(content), usage_estimated=True, finish_reason=finish_reason)
    return Completion(content, spec.name, spec.model, usage.prompt_tokens, usage.completion_tokens,
                      finish_reason=finish_reason)


def _tokens(logprobs: ChoiceLogprobs | None) -> tuple[tuple[str, tuple[tuple[str, float], ...]], ...]:
    """The reply's tokens with their alternatives (the token itself among them), if the provider sent them."""
    if logprobs is None or not logprobs.content:
        return ()
    return tuple((t.token, tuple((a.token, a.logprob) for a in t.top_logprobs or ()) or ((t.token, t.logprob),))
                 for t in logprobs.content)


def _prompt_text(messages: Messages) -> str:
    return "".join(content for m in messages if isinstance(content := m.get("content"), str))


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4
