"""Dispatch to OpenAI-compatible providers through the official `openai` SDK.

A `Provider` is one endpoint and model with its own circuit breaker; each call is retried per
`retry.py` (the SDK's own retries are off, so every HTTP attempt is visible as an `Attempt`). A
`TierChain` tries a tier's providers in order and returns the first answer. A stream fails over only
before its first token: after that, a failure ends it with `StreamInterrupted`, never a mixed answer.

Deadlines are `time.monotonic()` values (the gRPC deadline); each attempt's timeout is the provider's
timeout capped by the time left. API keys are read from the environment at call time, never logged.
"""
from .chain import TierChain
from .errors import (ChainExhausted, DeadlineExceeded, IncompleteStream, ProviderError, ProviderFailed,
                     ProviderNotConfigured, StreamInterrupted)
from .provider import NO_KEY_NEEDED, PROVIDER_ERRORS, Provider
from .types import (DEFAULT_SAMPLING, Attempt, Completion, Events, Messages, Needs, OnAttempt, Outcome,
                    ProviderConfig, Sampling, TokenLogprob, ToolCall, bound)

__all__ = ["DEFAULT_SAMPLING", "NO_KEY_NEEDED", "PROVIDER_ERRORS", "Attempt", "ChainExhausted", "Completion",
           "DeadlineExceeded", "Events", "IncompleteStream", "Messages", "Needs", "OnAttempt", "Outcome", "Provider",
           "ProviderError", "ProviderFailed", "ProviderConfig", "ProviderNotConfigured", "Sampling", "bound",
           "StreamInterrupted", "TierChain", "TokenLogprob", "ToolCall"]
