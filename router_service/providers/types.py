"""A provider's configuration, what a call to it is given and what it returns."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, AsyncGenerator, Callable, Sequence
from urllib.parse import urlsplit

from openai.types.chat import ChatCompletionMessageParam
from pydantic import AfterValidator, Strict

from ..config_doc import AtLeastOne, AtLeastZero, Dollars, Flag, Name, Positive, doc, must, refuse, schema
from ..retry import REQUEST_FAULT_STATUSES, status_only
from ..tokens import tools_tokens

Messages = Sequence[ChatCompletionMessageParam]
Events = AsyncGenerator["str | Completion", None]
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with each lone surrogate, which a provider's JSON can hold as an escape ("\\ud800"), as U+FFFD: no UTF-8
    encoder writes one, protobuf's and the next provider's included, so it would fail the call after it was paid
    for, or a judge's call as if that provider had failed."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", text)


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"
    SKIPPED_BREAKER_OPEN = "skipped_breaker_open"
    SKIPPED_CONTEXT_WINDOW = "skipped_context_window"
    SKIPPED_NO_VISION = "skipped_no_vision"  # the request carries images; the model does not read them
    SKIPPED_NO_TOOLS = "skipped_no_tools"  # the request offers tools; the model does not call them
    NOT_CONFIGURED = "not_configured"
    HEDGE_CANCELLED = "hedge_cancelled"  # asked beside another provider, which answered first


@dataclass(frozen=True)
class Attempt:
    provider: str
    model: str
    outcome: Outcome
    error: str = ""
    status_code: int | None = None
    latency_ms: float = 0.0  # for a stream: until its end
    retry_after: float | None = None

    def describe(self, words: bool = True) -> str:
        """The attempt in a line: with the provider's words where callers may see them (`public_error`), or
        without any (`words=False`, for logs and spans: a refusal can quote the prompt)."""
        text = f"{self.provider}/{self.model}: {self.outcome}"
        if not self.error:
            return text
        return f"{text} ({self.public_error if words else status_only(self.error)})"

    @property
    def public_error(self) -> str:
        """The error as callers and spans see it. A provider's own words are kept when it refused the request itself
        (400, 413, 422: they tell the caller what to fix); otherwise its status alone, since what a provider says
        about the operator's account can quote part of a key ("Incorrect API key provided: sk-...abcd")."""
        return self.error if self.status_code in REQUEST_FAULT_STATUSES else status_only(self.error)


OnAttempt = Callable[[Attempt], None]


def bound(on_attempt: Callable[[int, Attempt, str], None] | None, tier: int, purpose: str) -> OnAttempt | None:
    """A caller's `on_attempt(tier, attempt, purpose)` as a provider chain calls it, with the attempt alone: for an
    answer, a verdict or a judge's rating at `tier`."""
    return None if on_attempt is None else (lambda attempt: on_attempt(tier, attempt, purpose))


@dataclass(frozen=True)
class Needs:
    """What a provider must take to answer a request: its size in tokens (every message, the tools offered and the
    answer's budget), whether it carries images and whether it offers tools."""
    tokens: int
    images: bool = False
    tools: bool = False


@dataclass(frozen=True)
class ToolCall:
    """A model's call to one of the caller's functions; `arguments` is JSON text as the model wrote it."""
    id: str
    name: str
    arguments: str

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class TokenLogprob:
    """A token of an answer and its log probability, with its likeliest alternatives when they were asked for."""
    token: str
    logprob: float
    raw: bytes = b""  # the token's UTF-8 bytes: a token can hold part of a character
    top: tuple["TokenLogprob", ...] = ()


@dataclass(frozen=True)
class Sampling:
    """The caller's generation options besides max_tokens and temperature, for whichever provider answers, as
    given; unset ones are left out of the call, so each provider uses its own default."""
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None  # OpenAI's response_format object, parsed once
    # The caller's tools (OpenAI's list of function tools, parsed once), and how the model may use them.
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # The answer's tokens with their log probabilities, and how many alternatives for each (0 to 20).
    logprobs: bool = False
    top_logprobs: int = 0

    @cached_property
    def tool_tokens(self) -> int:
        """What the tools' definitions take of a provider's context window: counted once a request, not at every
        tier and fallback asked."""
        return tools_tokens(self.tools)

    def sdk_args(self) -> dict[str, Any]:
        args = {name: value for name in ("top_p", "seed", "presence_penalty", "frequency_penalty", "response_format",
                                         "tool_choice", "parallel_tool_calls")
                if (value := getattr(self, name)) is not None}
        if self.stop:
            args["stop"] = list(self.stop)
        if self.tools:
            args["tools"] = list(self.tools)
        if self.logprobs:
            args["logprobs"] = True
            args["top_logprobs"] = self.top_logprobs or None
        return args


DEFAULT_SAMPLING = Sampling()


@dataclass(frozen=True)
class Completion:
    content: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    attempts: list[Attempt] = field(default_factory=list)
    # Of the input tokens, those the provider read from its prompt cache (billed at `cached_input`).
    cached_input_tokens: int = 0
    # True when the provider reported no usage and the token counts are len(text) / 4 estimates.
    usage_estimated: bool = False
    # Why the provider stopped: "stop", "length" when the answer was cut off at max_tokens, "tool_calls".
    finish_reason: str = "stop"
    # The calls the answer makes to the caller's tools (finish_reason "tool_calls").
    tool_calls: tuple[ToolCall, ...] = ()
    # With the caller's `logprobs` asked for: the answer's tokens as the provider gave them; () when it gave none.
    logprobs: tuple[TokenLogprob, ...] = ()
    # With `top_logprobs` asked for: each generated token and its likeliest alternatives with their log
    # probabilities, e.g. ((' true', ((' true', -0.1), (' false', -2.4))), ...); () when the provider sent none.
    tokens: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()


@schema
class Price:
    input: Dollars = doc("USD per million input tokens")
    output: Dollars = doc("USD per million output tokens")
    cached_input: Dollars | None = doc("USD per million input tokens the provider read from its prompt cache, as its "
                                       "usage reports them (prompt_tokens_details.cached_tokens); null = the input "
                                       "price", None)

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """USD for an answer whose prompt held `input_tokens`, `cached_tokens` of them read from the prompt cache."""
        cached = min(cached_tokens, input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((input_tokens - cached) * self.input + cached * cached_price + output_tokens * self.output) / 1e6


def _http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - ValueError for a port that is no number
        return value.startswith(("http://", "https://")) and bool(parts.hostname) and \
            not any(c.isspace() for c in value)
    except ValueError:  # a port that is no number or out of range, a bad IPv6 literal
        return False


Url = Annotated[str, Strict(), must(_http_url, "must be an http:// or https:// URL with a host")]
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str) -> str:
    """An environment variable's name, or "". What else is set here is most likely a key pasted in by mistake: it is
    refused without being shown, as every error naming the variable would show it to callers and logs."""
    if value and not ENV_NAME.fullmatch(value):
        refuse([((), "must be the NAME of an environment variable (letters, digits and _, not starting with a "
                     "digit) that holds the key, never the key itself; the value given is not shown")])
    return value


EnvName = Annotated[str, Strict(), AfterValidator(_env_name)]


MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
# Request options a model may refuse; `logprobs` takes `top_logprobs` with it.
DROPPABLE = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "response_format",
             "logprobs", "parallel_tool_calls")
Droppable = Annotated[str, Strict(), must(lambda v: v in DROPPABLE, "must be one of " + ", ".join(DROPPABLE))]
# What the router itself decides in every request body; a provider's extra_body may set anything else.
RESERVED_BODY_KEYS = ("model", "messages", "stream", "stream_options", "n", "tools", "functions", "tool_choice")


def _json_text(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


ExtraBody = Annotated[dict[str, Any], must(lambda v: not set(v) & set(RESERVED_BODY_KEYS),
                                           "must not set " + ", ".join(RESERVED_BODY_KEYS)),
                      must(_json_text, "must hold JSON values only (strings, numbers, booleans, lists, mappings)")]


@schema
class ProviderConfig:
    name: Name = doc("provider name, shown in attempts, metrics and logs")
    base_url: Url = doc("OpenAI-compatible base URL (http:// or https://)")
    model: Name = doc("model name sent to the provider")
    api_key_env: EnvName = doc("NAME of the environment variable holding the key (\"\" = no key needed)", "")
    timeout_s: Positive = doc("per-call timeout, capped by the caller's deadline", 30.0)
    max_retries: Annotated[int, Strict(), must(lambda v: v >= 0, "must be 0 or more")] = doc(
        "retries on retryable errors (429, 408, 5xx, timeouts, connection errors)", 2)
    breaker_failures: AtLeastOne = doc("consecutive failures that open the circuit breaker", 5)
    breaker_cooldown_s: AtLeastZero = doc("seconds an open breaker waits before one half-open probe", 30.0)
    context_window: Annotated[int, Strict(), must(lambda v: v >= 0, "must be 0 (not checked) or a number of "
                                                  "tokens")] = doc(
        "tokens the model holds, prompt and answer together; a request that cannot fit (every message counted, plus "
        "max_tokens) skips this provider, and a tier none of whose providers fits it is skipped upwards (0 = not "
        "checked)", 0)
    vision: Flag = doc("the model reads images: a request carrying images skips providers without it, and a tier none "
                       "of whose providers reads them is skipped upwards", False)
    tools: Flag = doc("the model calls tools (OpenAI's function calling): a request offering tools skips providers "
                      "without it, and a tier none of whose providers calls them is skipped upwards", True)
    max_tokens_field: Annotated[str, Strict(), must(lambda v: v in MAX_TOKENS_FIELDS, "must be max_tokens or "
                                                    "max_completion_tokens")] = doc(
        "the request field that carries the answer's token limit: OpenAI's reasoning models (o1, o3, o4-mini, gpt-5) "
        "take only `max_completion_tokens`", "max_tokens")
    drop_options: tuple[Droppable, ...] = doc(
        "request options this model refuses, left out of its calls so that it answers at its own default instead of "
        "failing: some of " + ", ".join(DROPPABLE) + " (OpenAI's reasoning models: [temperature, top_p, "
        "presence_penalty, frequency_penalty, logprobs, parallel_tool_calls])", ())
    extra_body: ExtraBody = doc(
        "fields added to every request body sent to this provider, as given: settings the model takes that the caller "
        "does not send, such as {reasoning_effort: low} for an OpenAI reasoning model or {top_k: 20} for vLLM; a "
        "field the caller sent too is replaced by this one", factory=dict)
    health_check_s: Annotated[float, Strict(), must(lambda v: v == 0 or 1 <= v < float("inf"),
                                                     "must be 0 (off) or at least 1 second")] = doc(
        "how often the router asks the provider for its model list (GET /models, no tokens spent): failing checks "
        "count against its breaker as failed calls do, so a dead provider is taken out before a request finds it, "
        "and once its cooldown passes a check is the probe that brings it back; no check while the breaker is open "
        "and cooling down. Only for servers that list their models, as OpenAI, vLLM, llama.cpp and Ollama do "
        "(0 = off)", 0.0)
    weight: AtLeastOne = doc("under the tier's `balance: round_robin`, this provider's share of the requests against "
                             "the others' weights (a canary: 1 against 9)", 1)
    price_per_mtok: Price | None = doc("what this provider costs, when it differs from its tier's `price_per_mtok`: "
                                       "an answer is billed at the price of the provider that gave it (null = the "
                                       "tier's)", None, nested=Price)

    def refusal(self, needs: Needs) -> tuple[Outcome, str] | None:
        """Why this provider cannot take such a request, or None when it can."""
        if self.context_window and needs.tokens > self.context_window:
            return (Outcome.SKIPPED_CONTEXT_WINDOW,
                    f"the request needs about {needs.tokens} tokens; the context window holds {self.context_window}")
        if needs.images and not self.vision:
            return Outcome.SKIPPED_NO_VISION, "the request carries images; this model does not read them"
        if needs.tools and not self.tools:
            return Outcome.SKIPPED_NO_TOOLS, "the request offers tools; this model does not call them"
        return None
