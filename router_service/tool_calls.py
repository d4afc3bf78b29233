"""The tool calls of a conversation: an assistant message's calls and a tool message's answer to one, checked once
for gRPC and HTTP (each naming its own field). The tools offered are checked with the generation options
(sampling.py); the tier is still decided from the text."""
from __future__ import annotations

from tierwise.serving import invalid
from tierwise.v1 import router_pb2 as pb

from .providers import ToolCall

MAX_ID_BYTES = 256


def tool_fields(message: pb.Message, into: dict, field: str) -> int:
    """`message`'s tool calls (an assistant's) or call id (a tool's) put in `into`, the provider's form of it: the
    bytes they add, or INVALID_ARGUMENT naming the field that is wrong."""
    size = 0
    if message.tool_calls:
        if message.role != "assistant":
            raise invalid(f"{field}.tool_calls: only assistant messages carry tool calls")
        for j, call in enumerate(message.tool_calls):
            _check_id(call.id, f"{field}.tool_calls[{j}].id")
            if not call.name:
                raise invalid(f"{field}.tool_calls[{j}].name: must name the function called")
            size += len(call.id.encode()) + len(call.name.encode()) + len(call.arguments.encode())
        into["tool_calls"] = tuple(ToolCall(c.id, c.name, c.arguments) for c in message.tool_calls)
    if message.role == "tool":
        _check_id(message.tool_call_id, f"{field}.tool_call_id")
        into["tool_call_id"] = message.tool_call_id
        size += len(message.tool_call_id.encode())
    elif message.tool_call_id:
        raise invalid(f"{field}.tool_call_id: only tool messages answer a tool call")
    return size


def _check_id(value: str, field: str) -> None:
    if not value or len(value.encode()) > MAX_ID_BYTES:
        raise invalid(f"{field}: must name the tool call (1 to {MAX_ID_BYTES} bytes)")
