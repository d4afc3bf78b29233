"""Refusals in OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status that
matches the gRPC status the core refused with."""
from __future__ import annotations

import json
import math
import re

import grpc

from tierwise.serving import Rejected, invalid, pushback_ms

from ..auth import KeyRefused, bearer

# gRPC status -> (HTTP status, OpenAI error type, code)
STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "overloaded"),
    grpc.StatusCode.FAILED_PRECONDITION: (503, "service_unavailable", "tier_not_configured"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable", "no_provider_available"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout", "deadline_exceeded"),
    grpc.StatusCode.ABORTED: (502, "upstream_error", "stream_interrupted"),
}
INTERNAL = (500, "server_error", "internal_error")
# The field a message starts with: `messages[2].content: ...`, `model: ...`, a header's name.
FIELD = re.compile(r"([a-z_][a-z0-9_-]*(?:\[\d+\])*(?:\.[a-z_]+(?:\[\d+\])*)*): ")
# Names the core uses that the HTTP request spells differently.
RENAMED = {"strategy": "model", "body": None}  # the body as a whole: OpenAI names no param


class OpenAIShapes:
    """How OpenAI's APIs take the key (a bearer token) and tell an error: what chat completions and responses share."""

    def key(self, headers) -> str:
        return bearer(headers)

    def error(self, err: Rejected) -> dict:
        return error_body(err)


def bad_request(message: str) -> Rejected:
    """A 400 naming the field `message` starts with."""
    return invalid(message)


def status_of(err: Rejected) -> int:
    return getattr(err, "http_status", None) or STATUSES.get(err.code, INTERNAL)[0]


def unknown_model(message: str) -> Rejected:
    """A 404, as OpenAI and Anthropic answer a model they do not serve."""
    return Rejected(grpc.StatusCode.NOT_FOUND, message)


class BodyStalled(Rejected):
    """A body that stopped arriving (http.body_timeout_s): a 408."""
    error_code, http_status = "request_timeout", 408

    def __init__(self, waited_s: float) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, f"body: nothing more of it arrived for {waited_s:g} s")


class ShuttingDown(Rejected):
    """A call still under way when the router's shutdown grace ran out: a 503 a client may retry elsewhere."""
    error_code = "shutting_down"

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, "the router is shutting down and cut this call at the end of "
                         "its grace (shutdown.grace_s); retry it")


def error_body(err: Rejected) -> dict:
    _, kind, code = STATUSES.get(err.code, INTERNAL)
    code = getattr(err, "error_code", None) or code  # a refusal that names itself more closely than its status
    field = FIELD.match(str(err))
    param = RENAMED.get(field.group(1), field.group(1)) if field and status_of(err) in (400, 404) else None
    return {"error": {"message": str(err), "type": kind, "param": param, "code": code}}


def error_headers(err: Rejected) -> dict[str, str]:
    """Retry-After on a 429: the key's wait, or a second when the router was full; x-should-retry: false (which the
    OpenAI and Anthropic SDKs heed) on a refusal gRPC's would tell not to retry (a negative retry pushback)."""
    if (pushback := pushback_ms(err.trailing)) is not None:
        # never, or when the providers said they could answer again
        return {"x-should-retry": "false"} if pushback < 0 else {"retry-after": str(math.ceil(pushback / 1000))}
    if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return {}
    wait = err.retry_after_s if isinstance(err, KeyRefused) and err.retry_after_s is not None else 1
    return {"retry-after": str(wait)}


def id_headers(request_id: str) -> dict[str, str]:
    """The request's id under both names SDKs read it by: OpenAI's `x-request-id` and Anthropic's `request-id`."""
    return {"x-request-id": request_id, "request-id": request_id}


def internal_error() -> Rejected:
    return Rejected(grpc.StatusCode.INTERNAL, "internal error; see the router's log")


def as_json(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()  # ASCII: valid whatever the text holds
