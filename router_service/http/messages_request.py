"""An Anthropic Messages API request body (POST /v1/messages), read into the core's CompleteRequest as request.py
reads a chat completion's: `system` and `messages` (text, images, tool_use and tool_result blocks) become the
conversation, and `max_tokens`, `stop_sequences`, `temperature`, `top_p`, custom `tools` and `tool_choice` map onto
the chat fields the core checks, and so does `output_config.format` (a JSON schema the answer must follow).

Each tool_result block becomes a tool message, in its order, ahead of the user turn's text: that is where a chat
model expects a call's result. What only describes the caller or asks for Anthropic's own service (metadata,
service_tier, speed, inference_geo, cache_control, diagnostics, ...) is accepted and not used, and so are
`thinking` and `output_config.effort`: the operator sets a reasoning model's effort in its provider's extra_body, and
an answer carries no thinking blocks, which the API allows. Older clients' `temperature` and `top_p` are taken.
What the router cannot give (server tools, documents, top_k, MCP servers, containers) is refused by name.
"""
from __future__ import annotations

import dataclasses
import json

from tierwise.v1 import router_pb2 as pb

from ..images import check_image
from ..model_names import ModelNames
from .errors import bad_request
from .request import (INT32_MAX, TOOL_FIELDS, ChatRequest, document, flag, format_in, options, origins,
                      refuse_unsupported, string)

UNSUPPORTED = {"top_k": "top-k sampling (the providers take no top_k; set it in a provider's extra_body)",
               "mcp_servers": "MCP servers", "container": "containers"}
CHOICES = {"auto": "auto", "any": "required", "none": "none"}
FIELDS = (*TOOL_FIELDS, ("stop", "stop_sequences"), ("response_format", "output_config.format"))
SKIPPED = ("thinking", "redacted_thinking")  # an assistant's earlier thinking, given back: nothing for the model


def parse(body: bytes, names: ModelNames = ModelNames()) -> ChatRequest:
    """The request in `body`, or a 400 naming the field that is wrong."""
    doc, route = document(body, names)
    return dataclasses.replace(_request(doc, route, answering=True), stream=flag(doc, "stream"))


def parse_count(body: bytes, names: ModelNames = ModelNames()) -> ChatRequest:
    """A count_tokens body (POST /v1/messages/count_tokens): a message's fields without the answer's limit, or a 400
    naming the field that is wrong."""
    return _request(*document(body, names), answering=False)


def _request(doc: dict, route: dict, answering: bool) -> ChatRequest:
    """The request, with the renames that name its fields as this API does: each chat message by the message (or
    system prompt) it came from."""
    refuse_unsupported(doc, UNSUPPORTED)
    messages = _system(doc.get("system"))
    named = [("system", "system")] * len(messages)
    for i, message in enumerate(_listed(doc.get("messages"))):
        turn = _message(i, message)
        messages += turn
        named += [(f"messages[{i}]", f"messages[{i}].content")] * len(turn)
    request = pb.CompleteRequest(messages=messages, max_tokens=_max_tokens(doc.get("max_tokens")) if answering else 0,
                                 **route)
    choice, parallel = _tool_choice(doc.get("tool_choice"))
    options({"temperature": doc.get("temperature"), "top_p": doc.get("top_p"), "stop": _stops(doc),
             "tools": _tools(doc.get("tools")), "tool_choice": choice, "parallel_tool_calls": parallel,
             "response_format": _format(doc.get("output_config"))}, request, FIELDS)
    return ChatRequest(request, False, False, fields=origins(named) + FIELDS)


def _max_tokens(value: object) -> int:
    if value is None:
        raise bad_request("max_tokens: missing; the Messages API needs the answer's limit")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= INT32_MAX:
        raise bad_request(f"max_tokens: must be a whole number from 1 to {INT32_MAX}")
    return value


def _system(system: object) -> list[pb.Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [pb.Message(role="system", content=string(system, "system"))] if system else []
    if not isinstance(system, list):
        raise bad_request("system: must be a string or a list of text blocks")
    texts = _text_blocks(system, "system", "must be a text block")
    return [pb.Message(role="system", content="\n".join(texts))] if texts else []


def _listed(messages: object) -> list:
    if messages is None:
        raise bad_request('messages: missing; send a list of {"role", "content"} objects')
    if not isinstance(messages, list):
        raise bad_request('messages: must be a list of {"role", "content"} objects')
    return messages


def _message(i: int, message: object) -> list[pb.Message]:
    field = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad_request(f"{field}: must be an object with role and content")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise bad_request(f"{field}.role: must be user or assistant (the system prompt goes in system)")
    return _turn(role, message.get("content"), f"{field}.content")


def _turn(role: str, content: object, field: str) -> list[pb.Message]:
    """One message's blocks as the chat messages they stand for: a user turn's tool results come first, each a
    tool message; an assistant's tool_use blocks are its tool calls."""
    if isinstance(content, str):
        return [pb.Message(role=role, content=string(content, field))]
    if not isinstance(content, list):
        raise bad_request(f"{field}: must be a string or a list of content blocks")
    texts, images, calls, results = [], [], [], []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"{field}[{j}]"
        if kind == "text":
            texts.append(string(block.get("text"), f"{where}.text"))
        elif kind == "image" and role == "user":
            images.append(_image(block.get("source"), where))
        elif kind == "tool_use" and role == "assistant":
            calls.append(pb.ToolCall(id=string(block.get("id"), f"{where}.id"),
                                     name=string(block.get("name"), f"{where}.name"),
                                     arguments=_arguments(block.get("input"), f"{where}.input")))
        elif kind == "tool_result" and role == "user":
            call_id = string(block.get("tool_use_id"), f"{where}.tool_use_id")
            results.append(pb.Message(role="tool", tool_call_id=call_id,
                                      content=_result(block.get("content"), f"{where}.content")))
        elif kind in SKIPPED and role == "assistant":
            continue
        else:
            allowed = "text, image and tool_result" if role == "user" else "text, tool_use and thinking"
            raise bad_request(f"{where}: a {role} message takes only {allowed} blocks")
    turn = [pb.Message(role=role, content="\n".join(texts), images=images, tool_calls=calls)] \
        if texts or images or calls else []
    return results + turn


def _image(source: object, field: str) -> pb.Image:
    """A base64 image as a data: URL, or an image by URL."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str):
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise bad_request(f'{field}.source: must be {{"type": "base64", "media_type", "data"}} or '
                          '{"type": "url", "url"}')
    check_image(url, "", field, url_field="source")
    return pb.Image(url=string(url, f"{field}.source"))


def _arguments(value: object, field: str) -> str:
    if not isinstance(value, dict):
        raise bad_request(f"{field}: must be an object")
    return json.dumps(value, ensure_ascii=False)


def _result(content: object, field: str) -> str:
    """A tool result's text: a string, or text blocks joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return string(content, field)
    if not isinstance(content, list):
        raise bad_request(f"{field}: must be a string or a list of text blocks")
    texts = _text_blocks(content, field, "only text is supported in a tool's result")
    return "\n".join(texts)


def _text_blocks(blocks: list, field: str, rule: str) -> list[str]:
    """The texts of a list of text blocks; any other block is a 400 naming it, saying `rule`."""
    texts = []
    for i, block in enumerate(blocks):
        if not (isinstance(block, dict) and block.get("type") == "text"):
            raise bad_request(f"{field}[{i}]: {rule}")
        texts.append(string(block.get("text"), f"{field}[{i}].text"))
    return texts


def _stops(doc: dict) -> list | None:
    stops = doc.get("stop_sequences")
    if stops is not None and not isinstance(stops, list):
        raise bad_request("stop_sequences: must be a list of strings")
    return stops or None


def _tools(tools: object) -> list | None:
    """Custom tools in the chat API's shape ({"type": "function", "function": {"name", "parameters"}})."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_request('tools: must be a list of {"name", "input_schema"} objects')
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            raise bad_request(f"tools[{i}]: only custom tools (name, description, input_schema) are supported")
        if not isinstance(tool.get("input_schema"), dict):
            raise bad_request(f"tools[{i}].input_schema: must be a JSON schema object")
        function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: object) -> tuple[object, bool | None]:
    """(the chat API's tool_choice, parallel_tool_calls) for {"type": auto | any | tool | none, ...}."""
    if choice is None:
        return None, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in (*CHOICES, "tool"):
        raise bad_request('tool_choice: must be {"type": "auto"}, {"type": "any"}, {"type": "none"} or '
                          '{"type": "tool", "name": ...}')
    serial = choice.get("disable_parallel_tool_use")
    flag(choice, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
    chosen = CHOICES.get(kind) or {"type": "function", "function": {"name": choice.get("name")}}
    return chosen, None if serial is None else not serial


def _format(config: object) -> dict | None:
    """`output_config.format` ({"type": "json_schema", "schema"}) as a chat response_format."""
    form = format_in(config, "output_config", '{"format": {"type": "json_schema", ...}}')
    if form is None:
        return None
    if not (isinstance(form, dict) and form.get("type") == "json_schema" and isinstance(form.get("schema"), dict)):
        raise bad_request('output_config.format: must be {"type": "json_schema", "schema": {...}}')
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": form["schema"]}}
