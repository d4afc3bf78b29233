"""How a provider call fails; each error carries the attempts made, in order."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from .types import Attempt, ProviderConfig


class ProviderError(Exception):
    """Base of the errors below; `attempts` tells what was tried, in order."""

    def __init__(self, message: str, attempts: Sequence[Attempt]) -> None:
        super().__init__(message)
        self.attempts = list(attempts)

    def quiet(self) -> str:
        """The error without any provider's words, for logs and spans."""
        return f"{type(self).__name__}: {_describe(self.attempts, words=False)}"


class ProviderNotConfigured(ProviderError):
    """No API key in the environment: a deployment problem (the router answers FAILED_PRECONDITION)."""

    def __init__(self, configs: Sequence[ProviderConfig], attempts: Sequence[Attempt]) -> None:
        self.missing_env = [c.api_key_env for c in configs]
        super().__init__("; ".join(f"provider {c.name!r} ({c.base_url}) is not configured: set the environment "
                                   f"variable {c.api_key_env} to its API key" for c in configs), attempts)


class ProviderFailed(ProviderError):
    """One provider gave up: its breaker is open, or its attempts failed."""


class DeadlineExceeded(ProviderError):
    """The caller's deadline passed before another provider could be tried."""

    def __init__(self, attempts: Sequence[Attempt]) -> None:
        super().__init__(f"deadline passed after {_describe(attempts)}", attempts)


class ChainExhausted(ProviderError):
    def __init__(self, attempts: Sequence[Attempt]) -> None:
        super().__init__(f"every provider failed: {_describe(attempts)}", attempts)


def _describe(attempts: Sequence[Attempt], words: bool = True) -> str:
    if not attempts:
        return "no attempt"
    return f"{len(attempts)} attempts: " + "; ".join(a.describe(words) for a in attempts)


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


class MisshapenResponse(ValueError):
    """A provider's 200 whose body is not what the API promises (an HTML page, a null message, a chunk without its
    delta): a bad response, failed over and counted against the provider's breaker like any other."""


@contextmanager
def shaped(what: str) -> Iterator[None]:
    """Reading a `what` the SDK built without checking it: an attribute or type it lacks is MisshapenResponse."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, IndexError) as err:
        raise MisshapenResponse(f"{what} does not have the API's shape ({type(err).__name__})") from err
