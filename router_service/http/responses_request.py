"""An OpenAI Responses API request body (POST /v1/responses), read into the core's CompleteRequest as request.py
reads a chat completion's: `instructions` and `input` (messages, function calls and their outputs) become the
conversation; the generation options, `text.format` and the function tools map onto the chat fields the core checks.

The router keeps no responses, so what refers to a stored one (`previous_response_id`, `conversation`,
`background`, stored prompts) is refused by name: a caller sends the whole conversation in `input`, as it would
with `store: false`. What only describes the caller (metadata, user, store, ...) is accepted and not used, and so
are `reasoning` (the operator's to set, in a provider's extra_body) and `include` for outputs the router never
produces. `include: ["message.output_text.logprobs"]` asks for the answer's log probabilities, `top_logprobs`
for their alternatives.
"""
from __future__ import annotations

from tierwise.v1 import router_pb2 as pb

from ..images import check_image
from ..model_names import ModelNames
from ..sampling import TOOL_NAME
from .errors import bad_request
from .request import (INT32_MAX, TOOL_FIELDS, ChatRequest, document, flag, format_in, options, origins,
                      refuse_unsupported, string)

UNSUPPORTED = {
    "previous_response_id": "stored responses (the router keeps none: send the whole conversation in input)",
    "conversation": "stored conversations (the router keeps none: send the whole conversation in input)",
    "background": "background responses", "prompt": "stored prompts",
    "max_tool_calls": "limits on built-in tool calls"}
LOGPROBS = "message.output_text.logprobs"
MAX_METADATA = 16
FIELDS = (*TOOL_FIELDS, (r"messages(?!\[)", "input"), ("response_format", "text.format"),
          ("max_tokens", "max_output_tokens"))
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
ECHOED = ("instructions", "temperature", "top_p", "max_output_tokens", "tool_choice", "parallel_tool_calls",
          "metadata")


def parse(body: bytes, names: ModelNames = ModelNames()) -> ChatRequest:
    """The request in `body`, or a 400 naming the field that is wrong."""
    doc, route = document(body, names)
    refuse_unsupported(doc, UNSUPPORTED)
    logprobs = _include(doc.get("include"))
    messages, named = [], []
    if doc.get("instructions") is not None:
        messages.append(pb.Message(role="system", content=string(doc["instructions"], "instructions")))
        named.append(("instructions", "instructions"))
    items, item_names = _input(doc.get("input"))
    messages += items
    named += item_names
    request = pb.CompleteRequest(messages=messages, max_tokens=_max_output_tokens(doc), **route)
    tools = _tools(doc.get("tools"))
    options({"temperature": doc.get("temperature"), "top_p": doc.get("top_p"), "tools": tools,
             "tool_choice": _tool_choice(doc.get("tool_choice")), "parallel_tool_calls": doc.get("parallel_tool_calls"),
             "response_format": _format(doc.get("text")), "logprobs": logprobs or None,
             "top_logprobs": doc.get("top_logprobs")}, request, FIELDS)
    _metadata(doc.get("metadata"))
    echo = {name: doc.get(name) for name in ECHOED} | {"tools": doc.get("tools") or [], "text": doc.get("text")}
    return ChatRequest(request, flag(doc, "stream"), False, echo, origins(named) + FIELDS)


def _metadata(metadata: object) -> None:
    """OpenAI's rule for what the response echoes back: up to 16 string values under keys of up to 64 characters."""
    if metadata is None:
        return
    if not (isinstance(metadata, dict) and len(metadata) <= MAX_METADATA
            and all(len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items())):
        raise bad_request(f"metadata: must be an object of at most {MAX_METADATA} strings of up to 512 characters, "
                          "under keys of up to 64")


def _include(include: object) -> bool:
    """Whether the extra outputs asked for include the answer's log probabilities. Those of what the router never
    produces (reasoning, built-in tools' results) are simply absent, as OpenAI leaves them out when there are none."""
    if include is None:
        return False
    if not isinstance(include, list) or not all(isinstance(item, str) for item in include):
        raise bad_request("include: must be a list of strings")
    return LOGPROBS in include


def _input(items: object) -> tuple[list[pb.Message], list[tuple[str, str]]]:
    """The chat messages `input` stands for, and for each the item it came from and that item's content field."""
    if items is None:
        raise bad_request('input: missing; send a string or a list of {"role", "content"} items')
    if isinstance(items, str):
        return [pb.Message(role="user", content=string(items, "input"))], [("input", "input")]
    if not isinstance(items, list):
        raise bad_request('input: must be a string or a list of {"role", "content"} items')
    out: list[pb.Message] = []
    named: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        field = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise bad_request(f"{field}.role: must be user, assistant, system or developer")
            text, images = _content(item.get("content"), f"{field}.content")
            out.append(pb.Message(role=ROLES[role], content=text, images=images))
            named.append((field, f"{field}.content"))
        elif kind == "function_call":
            call = pb.ToolCall(id=string(item.get("call_id"), f"{field}.call_id"),
                               name=string(item.get("name"), f"{field}.name"),
                               arguments=string(item.get("arguments", ""), f"{field}.arguments"))
            if out and out[-1].role == "assistant" and out[-1].tool_calls:  # one turn's calls, one message
                out[-1].tool_calls.append(call)
            else:
                out.append(pb.Message(role="assistant", tool_calls=[call]))
                named.append((field, field))
        elif kind == "function_call_output":
            text, images = _content(item.get("output"), f"{field}.output")
            if images:
                raise bad_request(f"{field}.output: only text is supported in a function's output")
            out.append(pb.Message(role="tool", tool_call_id=string(item.get("call_id"), f"{field}.call_id"),
                                  content=string(text, f"{field}.output")))
            named.append((field, f"{field}.output"))
        else:
            raise bad_request(f"{field}: only message, function_call and function_call_output items are supported")
    return out, named


def _content(content: object, field: str) -> tuple[str, list[pb.Image]]:
    """A message's text (its text parts joined by newlines) and images."""
    if isinstance(content, str):
        return string(content, field), []
    if not isinstance(content, list):
        raise bad_request(f"{field}: must be a string or a list of input_text and input_image parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(string(part["text"], f"{field}[{j}].text"))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            url, detail = part["image_url"], part.get("detail") or ""
            if not isinstance(detail, str):
                raise bad_request(f"{field}[{j}].detail: must be auto, low or high")
            check_image(url, detail, f"{field}[{j}]", url_field="image_url")
            images.append(pb.Image(url=string(url, f"{field}[{j}].image_url"), detail=detail))
        elif kind == "refusal":
            continue  # an assistant's earlier refusal, given back: nothing for the model to read
        else:
            raise bad_request(f"{field}[{j}]: only input_text, output_text and input_image (by URL) parts are "
                              "supported")
    return "\n".join(texts), images


def _max_output_tokens(doc: dict) -> int:
    value = doc.get("max_output_tokens")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= INT32_MAX:
        raise bad_request(f"max_output_tokens: must be a whole number from 1 to {INT32_MAX}")
    return value


def _tools(tools: object) -> list | None:
    """The function tools in the chat API's shape ({"type": "function", "function": {...}})."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad_request('tools: must be a list of {"type": "function", "name": ...} objects')
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request(f"tools[{i}]: only function tools are supported")
        name = tool.get("name")
        if not (isinstance(name, str) and TOOL_NAME.fullmatch(name)):
            raise bad_request(f"tools[{i}].name: must be 1 to 64 letters, digits, underscores or dashes")
        # The SDK sends `parameters` and `strict` as null when not given: the chat API reads them absent.
        out.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type" and v is not None}})
    return out


def _tool_choice(choice: object) -> object:
    """{"type": "function", "name": ...} in the chat API's shape; the words as they are."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _format(text: object) -> dict | None:
    """`text.format` as a chat response_format: json_schema's fields go under `json_schema`."""
    form = format_in(text, "text", '{"format": {"type": "json_object"}}')
    if form is None:
        return None
    if not isinstance(form, dict):
        raise bad_request('text.format: must be an object such as {"type": "json_object"}')
    if form.get("type") != "json_schema":
        return form
    schema = {k: v for k, v in form.items() if k != "type"}
    if not isinstance(schema.get("name"), str) or not schema["name"]:
        raise bad_request("text.format.name: must name the schema")
    return {"type": "json_schema", "json_schema": schema}
