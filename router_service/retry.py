"""Retries of one provider call: which failures are worth another attempt, and how long to wait first.

Retried: HTTP 408, 429 and 5xx, timeouts and connection errors. Never retried: every other 4xx and
answers that could not be read (the same request would get the same answer). The wait is exponential
backoff with full jitter, unless the provider said how long with Retry-After.
"""
from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Awaitable, Callable, Mapping, TypeVar

import openai

T = TypeVar("T")

MAX_MESSAGE_CHARS = 300  # provider error bodies can be whole HTML pages

# The request itself was at fault: the provider was right to refuse it, so it does not count against it.
REQUEST_FAULT_STATUSES = frozenset({400, 413, 422})


class FailureKind(StrEnum):
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    BAD_RESPONSE = "bad_response"


RETRYABLE_KINDS = frozenset({FailureKind.TIMEOUT, FailureKind.CONNECTION, FailureKind.RATE_LIMITED,
                             FailureKind.SERVER_ERROR})


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    message: str
    status_code: int | None = None
    retry_after_s: float | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    @property
    def provider_at_fault(self) -> bool:
        """Should this count against the provider's circuit breaker?"""
        return self.status_code not in REQUEST_FAULT_STATUSES


class AttemptFailed(Exception):
    """One attempt failed; raised by the operation given to `Retrier.run`."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def classify(exc: BaseException) -> Failure:
    """What an exception from the `openai` SDK (or an asyncio timeout) means for retrying."""
    # APITimeoutError subclasses APIConnectionError, and asyncio.TimeoutError is TimeoutError: check first.
    if isinstance(exc, (openai.APITimeoutError, TimeoutError)):
        return Failure(FailureKind.TIMEOUT, "timed out")
    if isinstance(exc, openai.APIStatusError):
        return _from_status(exc.status_code, exc.response.headers, _provider_message(exc))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return Failure(FailureKind.CONNECTION, f"connection error: {cause or exc}" if cause else str(exc))
    # Its type alone: the text of an error event a provider streamed, or of a parse error, can quote the prompt or
    # the answer.
    return Failure(FailureKind.BAD_RESPONSE, f"unreadable response: {type(exc).__name__}")


PROVIDER_SAID = re.compile(r"^(HTTP \d{3}): .*", re.DOTALL)  # a refusal as _from_status words it


def status_only(error: str) -> str:
    """`error` without the provider's message, when it carries one (as _from_status words a refusal)."""
    return PROVIDER_SAID.sub(r"\1 (the provider's message is not passed on)", error)


def _from_status(status: int, headers: Mapping[str, str], message: str) -> Failure:
    if status == 429:
        kind = FailureKind.RATE_LIMITED
    elif status >= 500:
        kind = FailureKind.SERVER_ERROR
    elif status == 408:
        kind = FailureKind.TIMEOUT
    else:
        kind = FailureKind.CLIENT_ERROR
    return Failure(kind, f"HTTP {status}: {message}", status, retry_after_seconds(headers))


def _provider_message(exc: openai.APIStatusError) -> str:
    """The provider's own error message (the SDK's repeats the status and the whole body)."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = message if isinstance(message, str) and message else exc.message
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


MAX_RETRY_AFTER_S = 86_400.0  # a longer wait is read as this: past any retry, and a number a caller can hold


def retry_after_seconds(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds, at most MAX_RETRY_AFTER_S: `retry-after-ms`, or `retry-after` in seconds or as an
    HTTP date; None for none."""
    seconds = _asked_wait(headers, now)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)


def _asked_wait(headers: Mapping[str, str], now: Callable[[], float]) -> float | None:
    millis = _non_negative_float(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, OverflowError):
        return None


def _non_negative_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and 0 <= number < math.inf else None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay_s: float = 0.25
    max_delay_s: float = 4.0
    max_retry_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    @classmethod
    def with_retries(cls, retries: int, **overrides: float) -> RetryPolicy:
        return cls(max_attempts=retries + 1, **overrides)

    def delay_before_retry(self, failure: Failure, attempts_made: int,
                           random_fraction: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait before the next attempt, or None if there should be none."""
        if not failure.retryable or attempts_made >= self.max_attempts:
            return None
        if failure.retry_after_s is not None:
            # Asked to wait longer than a call can: fail over now rather than ask again too soon.
            return failure.retry_after_s if failure.retry_after_s <= self.max_retry_after_s else None
        return random_fraction() * min(self.max_delay_s, self.base_delay_s * 2 ** (attempts_made - 1))


class Retrier:
    """Runs an operation until it succeeds, the policy gives up, or the next wait would pass the deadline."""

    def __init__(self, policy: RetryPolicy, *, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 random_fraction: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._sleep = sleep
        self._random_fraction = random_fraction

    async def run(self, operation: Callable[[], Awaitable[T]], *, deadline: float | None = None,
                  may_retry: Callable[[], bool] = lambda: True) -> T:
        """`operation` raises AttemptFailed to ask for a retry; the last one propagates when we give up.

        `deadline` is a time.monotonic() value; `may_retry` is asked just before each retry (e.g. the breaker).
        """
        attempts_made = 0
        while True:
            attempts_made += 1
            try:
                return await operation()
            except AttemptFailed as failed:
                delay = self.policy.delay_before_retry(failed.failure, attempts_made, self._random_fraction)
                if delay is None or not _time_left_for(delay, deadline):
                    raise
                last_failure = failed
            await self._sleep(delay)
            if not may_retry():
                raise last_failure


def _time_left_for(delay: float, deadline: float | None) -> bool:
    return deadline is None or time.monotonic() + delay < deadline
