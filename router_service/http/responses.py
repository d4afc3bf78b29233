"""POST /v1/responses: OpenAI's Responses API, as one response object or as a stream of its events
(response.created, the output items with their text deltas and function calls, then response.completed, or
response.incomplete when the answer was cut at max_output_tokens). Log probabilities, when included, come with the
whole text (output_text.done and the message), not with each delta. The router keeps no responses (`store` is always
false), so every request carries its whole conversation."""
from __future__ import annotations

import secrets
import time

from tierwise.v1 import router_pb2 as pb

from ..model_names import ModelNames
from . import responses_request, sse
from .errors import OpenAIShapes, as_json
from .request import ChatRequest

ROUTE = "/v1/responses"


class ResponsesApi(OpenAIShapes):
    route = ROUTE
    method = "Responses"

    def parse(self, body: bytes, names: ModelNames) -> ChatRequest:
        return responses_request.parse(body, names)

    def whole(self, chat: ChatRequest, summary: pb.CompleteResponse) -> dict:
        status = _status(summary)
        output = ([_message(_id("msg"), summary.content, status, sse.tokens(summary))]
                  if summary.content or not summary.tool_calls else [])
        output += [_call(_id("fc"), call, "completed") for call in summary.tool_calls]
        return _response(chat, _id("resp"), int(time.time()), summary.model, status, output, summary)

    def events(self, chat: ChatRequest, route: pb.RouteResponse) -> "Events":
        return Events(chat, route.model)


class Events:
    """One streamed response's events, numbered in order, each as `event: <type>` and its JSON."""

    def __init__(self, chat: ChatRequest, model: str):
        self.chat, self.model = chat, model
        self.rid, self.mid, self.created = _id("resp"), _id("msg"), int(time.time())
        self.seq = 0
        self.parts: list[str] | None = None  # the message's text so far, once its item is open

    def opening(self) -> bytes:
        skeleton = _response(self.chat, self.rid, self.created, self.model, "in_progress", [])
        return self._event("response.created", response=skeleton) + self._event("response.in_progress",
                                                                                  response=skeleton)

    def text(self, delta: str) -> bytes:
        out = self._open() if self.parts is None else b""
        self.parts.append(delta)
        return out + self._event("response.output_text.delta", item_id=self.mid, output_index=0, content_index=0,
                                 delta=delta, logprobs=[])

    def end(self, summary: pb.CompleteResponse) -> bytes:
        status, out, output = _status(summary), b"", []
        if self.parts is None and not summary.tool_calls:
            out += self._open()  # an empty answer is still a message
        if self.parts is not None:
            text, logprobs = "".join(self.parts), sse.tokens(summary)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
            output.append(_message(self.mid, text, status, logprobs))
            out += (self._event("response.output_text.done", item_id=self.mid, output_index=0, content_index=0,
                                text=text, logprobs=logprobs)
                    + self._event("response.content_part.done", item_id=self.mid, output_index=0, content_index=0,
                                  part=part)
                    + self._event("response.output_item.done", output_index=0, item=output[-1]))
        for call in summary.tool_calls:
            index, fid = len(output), _id("fc")
            output.append(_call(fid, call, "completed"))
            out += (self._event("response.output_item.added", output_index=index,
                                item={**_call(fid, call, "in_progress"), "arguments": ""})
                    + self._event("response.function_call_arguments.delta", item_id=fid, output_index=index,
                                  delta=call.arguments)
                    + self._event("response.function_call_arguments.done", item_id=fid, output_index=index,
                                  name=call.name, arguments=call.arguments)
                    + self._event("response.output_item.done", output_index=index, item=output[-1]))
        final = _response(self.chat, self.rid, self.created, summary.model, status, output, summary)
        return out + self._event(f"response.{status}", response=final)

    def failure(self, body: dict) -> bytes:
        error = body["error"]
        return self._event("error", code=error["code"], message=error["message"], param=error["param"])

    def _open(self) -> bytes:
        self.parts = []
        item = {"type": "message", "id": self.mid, "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return (self._event("response.output_item.added", output_index=0, item=item)
                + self._event("response.content_part.added", item_id=self.mid, output_index=0, content_index=0,
                              part=part))

    def _event(self, kind: str, **body) -> bytes:
        data = as_json({"type": kind, "sequence_number": self.seq, **body})
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _status(summary: pb.CompleteResponse) -> str:
    return "incomplete" if summary.finish_reason == "length" else "completed"


def _message(mid: str, text: str, status: str, logprobs: list) -> dict:
    return {"type": "message", "id": mid, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}]}


def _call(fid: str, call: pb.ToolCall, status: str) -> dict:
    return {"type": "function_call", "id": fid, "call_id": call.id, "name": call.name, "arguments": call.arguments,
            "status": status}


def _response(chat: ChatRequest, rid: str, created: int, model: str, status: str, output: list,
              summary: pb.CompleteResponse | None = None) -> dict:
    """The response object; with the summary once the answer is whole (usage, Tierwise's account)."""
    echo = chat.echo
    response = {
        "id": rid, "object": "response", "created_at": created, "status": status, "background": False, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": echo.get("instructions"), "max_output_tokens": echo.get("max_output_tokens"),
        "model": model, "output": output, "store": False,
        "parallel_tool_calls": True if echo.get("parallel_tool_calls") is None else echo["parallel_tool_calls"],
        "temperature": echo.get("temperature"), "top_p": echo.get("top_p"),
        "text": echo.get("text") or {"format": {"type": "text"}}, "tool_choice": echo.get("tool_choice") or "auto",
        "tools": echo.get("tools") or [], "metadata": echo.get("metadata") or {}, "usage": None}
    if summary is not None:
        u = summary.usage
        response["usage"] = {"input_tokens": u.input_tokens,
                             "input_tokens_details": {"cached_tokens": u.cached_input_tokens},
                             "output_tokens": u.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": u.input_tokens + u.output_tokens}
        response["tierwise"] = sse.extension(summary)
    return response
