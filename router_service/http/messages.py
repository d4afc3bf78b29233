"""POST /v1/messages: Anthropic's Messages API, as one message object or as a stream of its events (message_start,
the content blocks with their text and tool input deltas, message_delta with the stop reason and usage,
message_stop). Errors come in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, and the key may
come as `x-api-key`, as Anthropic's SDKs send it, or as a bearer token (`auth.api_key`)."""
from __future__ import annotations

import json
import secrets

from tierwise.serving import Rejected
from tierwise.v1 import router_pb2 as pb

from ..auth import api_key
from ..model_names import ModelNames
from . import messages_request, sse
from .errors import as_json, status_of
from .request import ChatRequest

ROUTE = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"  # an estimate of the prompt's tokens: RouterCore.count_tokens
STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error"}


class MessagesApi:
    route = ROUTE
    method = "Messages"

    def parse(self, body: bytes, names: ModelNames) -> ChatRequest:
        return messages_request.parse(body, names)

    def key(self, headers) -> str:
        return api_key(headers)

    def error(self, err: Rejected) -> dict:
        return error_body(str(err), status_of(err))

    def whole(self, chat: ChatRequest, summary: pb.CompleteResponse) -> dict:
        content = [{"type": "text", "text": summary.content}] if summary.content or not summary.tool_calls else []
        content += [_tool_use(call) for call in summary.tool_calls]
        return {**_message(_id(), summary.model, content, _stop_reason(summary)), "usage": _usage(summary),
                "tierwise": sse.extension(summary)}

    def events(self, chat: ChatRequest, route: pb.RouteResponse) -> "Events":
        return Events(route.model)


class Events:
    """One streamed message's events, each as `event: <type>` and its JSON."""

    def __init__(self, model: str):
        self.model, self.mid = model, _id()
        self.blocks = 0  # content blocks opened so far
        self.text_open = False

    def opening(self) -> bytes:
        start = {**_message(self.mid, self.model, [], None), "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _event("message_start", message=start)

    def text(self, delta: str) -> bytes:
        out = b""
        if not self.text_open:
            self.text_open = True
            out = self._block({"type": "text", "text": ""})
        return out + _event("content_block_delta", index=0, delta={"type": "text_delta", "text": delta})

    def end(self, summary: pb.CompleteResponse) -> bytes:
        out = _event("content_block_stop", index=0) if self.text_open else b""
        for call in summary.tool_calls:
            index = self.blocks
            block = _tool_use(call)
            arguments = json.dumps(block["input"], ensure_ascii=False)
            out += (self._block({**block, "input": {}})
                    + _event("content_block_delta", index=index,
                             delta={"type": "input_json_delta", "partial_json": arguments})
                    + _event("content_block_stop", index=index))
        return (out + _event("message_delta", delta={"stop_reason": _stop_reason(summary), "stop_sequence": None},
                             usage=_usage(summary), tierwise=sse.extension(summary))
                + _event("message_stop"))

    def failure(self, body: dict) -> bytes:
        return _event("error", error=body["error"])

    def _block(self, block: dict) -> bytes:
        self.blocks += 1
        return _event("content_block_start", index=self.blocks - 1, content_block=block)


def error_body(message: str, status: int) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def _event(kind: str, **body) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + as_json({"type": kind, **body}) + b"\n\n"


def _id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def _message(mid: str, model: str, content: list, stop_reason: str | None) -> dict:
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": None}


def _stop_reason(summary: pb.CompleteResponse) -> str:
    """OpenAI's finish reason in Anthropic's words. A stop sequence the provider hit reads as end_turn: OpenAI's
    answer does not say which sequence, or whether it was one."""
    return STOP_REASONS.get(summary.finish_reason, "end_turn")


def _tool_use(call: pb.ToolCall) -> dict:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}


def _input(arguments: str) -> dict:
    """A call's arguments as the object Anthropic's `input` is; arguments that are not a JSON object (a model's
    mistake) are kept whole under `arguments` rather than lost."""
    try:
        value = json.loads(arguments) if arguments else {}
    except (ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else {"arguments": arguments}


def _usage(summary: pb.CompleteResponse) -> dict:
    """Anthropic counts the tokens read from the prompt cache apart from `input_tokens`; OpenAI within them."""
    u = summary.usage
    return {"input_tokens": u.input_tokens - u.cached_input_tokens, "output_tokens": u.output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": u.cached_input_tokens}
