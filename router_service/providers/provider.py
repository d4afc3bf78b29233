"""One OpenAI-compatible endpoint and model, with its own circuit breaker and retries."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import openai
from openai.types import CompletionUsage
from openai.types.chat.chat_completion import ChoiceLogprobs

from ..breaker import BreakerState, CircuitBreaker, StateListener
from ..retry import AttemptFailed, Failure, FailureKind, Retrier, RetryPolicy, classify
from ..tokens import estimate_tokens
from .errors import (DeadlineExceeded, MisshapenResponse, ProviderError, ProviderFailed, ProviderNotConfigured,
                     StreamInterrupted, shaped)
from .stream import LiveStream
from .types import (DEFAULT_SAMPLING, Attempt, Completion, Events, Messages, OnAttempt, Outcome, ProviderConfig,
                    Sampling, TokenLogprob, ToolCall, status_only, valid_text)

log = logging.getLogger("tierwise.router.providers")

T = TypeVar("T")

# The SDK insists on a key; a provider that needs none (api_key_env = "") is sent this instead.
NO_KEY_NEEDED = "no-key-needed"

# What a failing provider call can raise. ValueError: a body that is not JSON or does not fit the schema.
PROVIDER_ERRORS = (openai.OpenAIError, TimeoutError, ValueError, RecursionError)  # the last: JSON nested too deep
HEALTH_TIMEOUT_S = 10.0


class _AttemptLog:
    """The attempts of one call, each also reported to the observability hook as it happens."""

    def __init__(self, on_attempt: OnAttempt | None) -> None:
        self.attempts: list[Attempt] = []
        self._on_attempt = on_attempt

    def add(self, attempt: Attempt) -> Attempt:
        self.attempts.append(attempt)
        if attempt.outcome is not Outcome.OK:
            # A provider skipped (its breaker open, the request too big for it, ...) was not asked: a line a request
            # for it would flood an outage's log, and the breaker's changes are logged as they happen.
            level = logging.WARNING if attempt.outcome in (Outcome.ERROR, Outcome.NOT_CONFIGURED) else logging.DEBUG
            log.log(level, "provider attempt did not succeed", extra={"fields": {
                "provider": attempt.provider, "model": attempt.model, "outcome": str(attempt.outcome),
                # No provider's own words: they can quote the prompt, or part of a key.
                "status_code": attempt.status_code, "error": status_only(attempt.error)}})
        if self._on_attempt is not None:
            try:
                self._on_attempt(attempt)
            except Exception:  # a broken metrics hook must not fail the call
                log.exception("on_attempt hook failed")
        return attempt


class Provider:
    def __init__(self, config: ProviderConfig, *, breaker: CircuitBreaker | None = None,
                 retrier: Retrier | None = None, on_breaker_change: StateListener | None = None) -> None:
        self.config = config
        self.breaker = breaker or CircuitBreaker(config.name, failure_threshold=config.breaker_failures,
                                                 cooldown_s=config.breaker_cooldown_s,
                                                 on_state_change=on_breaker_change)
        self.retrier = retrier or Retrier(RetryPolicy.with_retries(config.max_retries))
        self._client: openai.AsyncOpenAI | None = None

    @property
    def name(self) -> str:
        return self.config.name

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, messages: Messages, *, max_tokens: int | None = None,
                       temperature: float | None = None, sampling: Sampling = DEFAULT_SAMPLING,
                       deadline: float | None = None, on_attempt: OnAttempt | None = None,
                       top_logprobs: int | None = None) -> Completion:
        attempts = _AttemptLog(on_attempt)
        client = self._admit(deadline, attempts)
        with _settling_breaker(self.breaker):
            completion, started = await self._with_retries(
                lambda timeout: self._request(client, messages, max_tokens, temperature, sampling, timeout,
                                              top_logprobs),
                deadline, attempts)
            return self._succeeded(completion, started, attempts)

    async def stream(self, messages: Messages, *, max_tokens: int | None = None,
                     temperature: float | None = None, sampling: Sampling = DEFAULT_SAMPLING,
                     deadline: float | None = None, on_attempt: OnAttempt | None = None) -> Events:
        """Yield text deltas, then one `Completion` with the whole content, usage and attempts.

        Failures before the first delta are retried; after it, `StreamInterrupted` is raised. Reading
        up to the first delta gets the attempt timeout; each later read, the same again.
        """
        attempts = _AttemptLog(on_attempt)
        client = self._admit(deadline, attempts)
        with _settling_breaker(self.breaker):
            (live, delta), started = await self._with_retries(
                lambda timeout: self._open_stream(client, messages, max_tokens, temperature, sampling, timeout),
                deadline, attempts)
            if self.breaker.state is BreakerState.HALF_OPEN:
                # A probe that streams is answered: closing now lets other calls in, rather than holding the
                # provider out (and them at a dearer tier) for as long as the stream runs.
                self.breaker.record_success()
            tokens_sent = 0
            try:
                while delta is not None:
                    yield delta
                    tokens_sent += 1
                    timeout = self._timeout_for(deadline)
                    try:
                        delta = await live.next_delta(timeout)
                    except PROVIDER_ERRORS as exc:
                        raise self._broken(exc, timeout, started, attempts, tokens_sent) from exc
            finally:
                await live.aclose()
            try:
                with shaped("the stream's end"):
                    completion = completion_of(self.config, messages, live.content, live.usage, live.finish_reason,
                                               live.tool_calls)
                    if sampling.logprobs:
                        completion = replace(completion, logprobs=_logprobs(live.logprobs))
            except MisshapenResponse as exc:  # a break, as one mid-stream is (if its text went out)
                raise self._broken(exc, self._timeout_for(deadline), started, attempts, tokens_sent) from exc
            yield self._succeeded(completion, started, attempts)

    async def check_health(self) -> bool | None:
        """One health check: GET {base_url}/models, which OpenAI-compatible servers answer without running the
        model, within the provider's timeout (at most HEALTH_TIMEOUT_S). A failing check counts against the
        breaker as a failed call does, and a passing one closes a half-open breaker as its probe. A passing check
        of a closed breaker clears nothing: a server can list its models and still fail its completions. None
        when no check was made: no key, the breaker open and cooling down, or its probe already out."""
        api_key = self._api_key()
        state = self.breaker.state
        if api_key is None or state is BreakerState.OPEN:
            return None
        probe = state is BreakerState.HALF_OPEN
        if probe and not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(min(self.config.timeout_s, HEALTH_TIMEOUT_S)):
                await self._client_for(api_key).models.list()
        except PROVIDER_ERRORS as exc:
            if classify(exc).provider_at_fault:
                self.breaker.record_failure()
            elif probe:
                self.breaker.record_abandoned()
            return False
        if probe:
            self.breaker.record_success()
        return True

    # -- one provider call --

    def _api_key(self) -> str | None:
        if not self.config.api_key_env:
            return NO_KEY_NEEDED
        return os.environ.get(self.config.api_key_env) or None

    def _client_for(self, api_key: str) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=api_key, max_retries=0,
                                              timeout=self.config.timeout_s)
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
                                       f"{self.config.api_key_env} is not set"))
            raise ProviderNotConfigured([self.config], attempts.attempts)
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
            raise self._gave_up(attempts) from None

    def _gave_up(self, attempts: _AttemptLog) -> ProviderFailed:
        return ProviderFailed(f"provider {self.name!r} failed: {status_only(attempts.attempts[-1].error)}",
                              attempts.attempts)

    def _succeeded(self, completion: Completion, started: float, attempts: _AttemptLog) -> Completion:
        """Settle the breaker and log the attempt that answered: the completion with every attempt made."""
        self.breaker.record_success()
        attempts.add(self._attempt(Outcome.OK, started))
        return replace(completion, attempts=attempts.attempts)

    def _broken(self, exc: BaseException, timeout: float, started: float, attempts: _AttemptLog,
                tokens_sent: int) -> StreamInterrupted | ProviderFailed:
        """A stream that failed after `tokens_sent` deltas went out: the failure recorded, and the error to raise.
        With none out (an answer of tool calls only), a failure before the first text: failed over."""
        self._record_failure(exc, timeout, started, attempts)
        if not tokens_sent:
            return self._gave_up(attempts)
        return StreamInterrupted(self.name, tokens_sent, exc, attempts.attempts)

    def _timeout_for(self, deadline: float | None) -> float:
        if deadline is None:
            return self.config.timeout_s
        return max(0.0, min(self.config.timeout_s, deadline - time.monotonic()))

    def _record_failure(self, exc: BaseException, timeout: float, started: float,
                        attempts: _AttemptLog) -> Failure:
        """Log a failed attempt and give the breaker its verdict."""
        failure = classify(exc)
        timed_out = failure.kind is FailureKind.TIMEOUT and failure.status_code is None
        if timed_out:
            failure = replace(failure, message=f"timed out after {timeout:.3g}s")
        if timed_out and timeout < self.config.timeout_s:
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
        return Attempt(self.name, self.config.model, outcome, latency_ms=latency_ms, **details)

    async def _request(self, client: openai.AsyncOpenAI, messages: Messages, max_tokens: int | None,
                       temperature: float | None, sampling: Sampling, timeout: float,
                       top_logprobs: int | None = None) -> Completion:
        # The router's own calls (the verifier) weigh a verdict by its tokens' alternatives.
        own = {"logprobs": True, "top_logprobs": top_logprobs} if top_logprobs else {}
        response = await self._create(client, messages, max_tokens, temperature, sampling, timeout, **own)
        with shaped("the response"):
            if not response.choices:
                raise ValueError("response has no choices")
            choice = response.choices[0]
            calls = tuple(ToolCall(*map(valid_text, (c.id or "", c.function.name or "", c.function.arguments or "")))
                          for c in choice.message.tool_calls or () if c.type == "function")
            content = choice.message.content or ""
            if not isinstance(content, str):
                raise TypeError("content")
            content = valid_text(content)
            completion = completion_of(self.config, messages, content, response.usage, choice.finish_reason, calls)
            if top_logprobs:
                completion = replace(completion, tokens=_tokens(choice.logprobs))
            if sampling.logprobs:
                completion = replace(completion, logprobs=_logprobs(choice.logprobs.content if choice.logprobs else ()))
        return completion

    def _create(self, client: openai.AsyncOpenAI, messages: Messages, max_tokens: int | None,
                temperature: float | None, sampling: Sampling, timeout: float, **options: Any) -> Awaitable[Any]:
        """The SDK call every request makes; `options` add streaming or log probabilities. The token limit goes in
        the field the model takes, what it refuses is left out, and so is whatever is unset; the provider's
        `extra_body` goes in last, over anything of the same name."""
        args = {self.config.max_tokens_field: max_tokens, "temperature": temperature, **sampling.sdk_args(), **options}
        for name in self.config.drop_options:
            args.pop(name, None)
            if name == "logprobs":
                args.pop("top_logprobs", None)
        return client.chat.completions.create(model=self.config.model, messages=[_wire(m) for m in messages],
                                              timeout=timeout,
                                              extra_body=self.config.extra_body or None,
                                              **{k: v for k, v in args.items() if v is not None})

    async def _open_stream(self, client: openai.AsyncOpenAI, messages: Messages, max_tokens: int | None,
                           temperature: float | None, sampling: Sampling,
                           timeout: float) -> tuple[LiveStream, str | None]:
        """Start the stream and read up to its first text delta, so that failures so far can be retried."""
        sdk_stream = await self._create(client, messages, max_tokens, temperature, sampling, timeout, stream=True,
                                        stream_options={"include_usage": True})
        live = LiveStream(sdk_stream)
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


def _wire(message: Any) -> Any:
    """A message as the provider takes it: one carrying images has OpenAI's list of parts for content, its text
    first, then each image; an assistant's tool calls and a tool result's call id go in OpenAI's fields."""
    images, calls, call_id = message.get("images"), message.get("tool_calls"), message.get("tool_call_id")
    if not (images or calls or call_id):
        return message
    wired = {"role": message["role"], "content": message["content"]}
    if images:
        parts = [{"type": "text", "text": message["content"]}] if message["content"] else []
        wired["content"] = parts + [{"type": "image_url", "image_url": {
            "url": image["url"], **({"detail": image["detail"]} if image["detail"] else {})}} for image in images]
    if calls:
        wired["tool_calls"] = [call.wire() for call in calls]
        wired["content"] = message["content"] or None  # OpenAI: an assistant message of calls alone has none
    if call_id:
        wired["tool_call_id"] = call_id
    return wired


def completion_of(config: ProviderConfig, messages: Messages, content: str, usage: CompletionUsage | None,
                  finish_reason: str | None, tool_calls: tuple[ToolCall, ...] = ()) -> Completion:
    """What a provider answered, as the router keeps it: usage estimated where it sent none."""
    finish_reason = finish_reason or ("tool_calls" if tool_calls else "stop")
    if not isinstance(finish_reason, str):
        raise TypeError("finish_reason")  # read inside `shaped`: a bad response
    # Some OpenAI-compatible servers send calls without ids; the caller's tool message must name one.
    tool_calls = tuple(replace(c, id=c.id or f"call_{secrets.token_hex(12)}") for c in tool_calls)
    # The SDK builds usage without checking it: counts that are missing, null, negative or not numbers at all
    # are estimated instead.
    prompt, written = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    if not (_count(prompt) and _count(written)):
        text = content + "".join(call.name + call.arguments for call in tool_calls)
        return Completion(content, config.name, config.model, estimate_tokens(_prompt_text(messages)),
                          estimate_tokens(text), usage_estimated=True, finish_reason=finish_reason,
                          tool_calls=tool_calls)
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0)
    return Completion(content, config.name, config.model, prompt, written,
                      cached_input_tokens=min(cached, prompt) if _count(cached) else 0,
                      finish_reason=finish_reason, tool_calls=tool_calls)


MAX_COUNT = 2**31 - 1  # the contract's usage fields are int32; a count past them is no count a model produced


def _count(value: Any) -> bool:
    """Whether a provider's token count can be billed: null, negative or impossibly large usage is estimated
    instead."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _tokens(logprobs: ChoiceLogprobs | None) -> tuple[tuple[str, tuple[tuple[str, float], ...]], ...]:
    """The reply's tokens with their alternatives (the token itself among them), if the provider sent them."""
    if logprobs is None or not logprobs.content:
        return ()
    return tuple((t.token, tuple((a.token, a.logprob) for a in t.top_logprobs or ()) or ((t.token, t.logprob),))
                 for t in logprobs.content)


def _logprobs(tokens) -> tuple[TokenLogprob, ...]:
    """The answer's tokens as the caller asked for them (`logprobs`), from the SDK's; () when the provider sent none."""
    def token(t, top=()) -> TokenLogprob:
        return TokenLogprob(valid_text(t.token), t.logprob, bytes(t.bytes or ()), top)
    return tuple(token(t, tuple(token(a) for a in t.top_logprobs or ())) for t in tokens or ())


def _prompt_text(messages: Messages) -> str:
    return "".join(content for m in messages if isinstance(content := m.get("content"), str))
