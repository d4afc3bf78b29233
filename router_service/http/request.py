"""An OpenAI chat completions request body, read into the core's CompleteRequest.

The generation options (max_tokens, temperature, top_p, stop, seed, the penalties, response_format, logprobs) and
the tools (tools, tool_choice, parallel_tool_calls) go to the provider that answers; the core checks their values.
What only describes the caller (user, metadata, ...) is accepted and left out; what Tierwise cannot give (several
choices, logit biases, the deprecated functions, web search) is refused by name when asked for, never silently dropped.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

import grpc

from tierwise.serving import Rejected, invalid, shown
from tierwise.v1 import router_pb2 as pb

from .. import json_values
from ..images import check_image
from ..model_names import ModelNames
from .errors import FIELD, bad_request, unknown_model

INT32_MAX = 2**31 - 1
UNSUPPORTED = {"functions": "the deprecated function calls (send tools)",
               "function_call": "the deprecated function calls (send tool_choice)",
               "audio": "audio output", "prediction": "predicted outputs", "logit_bias": "logit biases"}


# The core names a refused field as in a chat completion: messages[3].content, tools[0].function.parameters.
# Each API says how those read in its own request: (pattern of the core's name, the API's), the first match wins.
CHAT_FIELDS = ((r"messages\[(\d+)\]\.images", r"messages[\1].content"),)


@dataclass(frozen=True)
class ChatRequest:
    request: pb.CompleteRequest
    stream: bool
    include_usage: bool
    # What the API's response repeats of the request, as the caller sent it (the Responses API's settings).
    echo: dict = dataclasses.field(default_factory=dict)
    fields: tuple[tuple[str, str], ...] = CHAT_FIELDS

    def refused(self, err: Rejected) -> Rejected:
        """`err` naming the field as this API's request spells it, when the core refused one of its fields."""
        return renamed(err, self.fields)


def renamed(err: Rejected, fields: tuple[tuple[str, str], ...]) -> Rejected:
    """`err` with the field it starts with spelled by the first of `fields` that matches it (see CHAT_FIELDS)."""
    found = FIELD.match(str(err)) if err.code == grpc.StatusCode.INVALID_ARGUMENT else None
    if found is None:
        return err
    name = found.group(1)
    for pattern, spelled in fields:
        if (match := re.match(pattern + r"(?=$|[.\[])", name)) is not None:
            return invalid(match.expand(spelled) + name[match.end():] + str(err)[found.end(1):])
    return err


def origins(named: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Renames for the core's messages[k] that `named` spells in order: (the message as a whole, its content) in
    the API's terms, one pair per chat message the request became."""
    out: list[tuple[str, str]] = []
    for k, (whole, content) in enumerate(named):
        out += [(rf"messages\[{k}\]\.(?:content|images)", content), (rf"messages\[{k}\]", whole)]
    return tuple(out)


# The chat names the Responses and Messages APIs spell otherwise (beside `origins`).
TOOL_FIELDS = ((r"tools\[(\d+)\]\.function", r"tools[\1]"), (r"tool_choice\.function", "tool_choice"))


def route_of(model: object, names: ModelNames) -> tuple[str, float | None]:
    """The strategy and quality target `model` routes with ("" and None: the configured strategy, the head's
    default target), when the router has such a model; else a 400 (not a string) or a 404 (no such model)."""
    if not isinstance(model, str):
        raise bad_request(f"model: must be a string; {names.hint()}")
    route = names.route_of(model)
    if route is None:
        raise unknown_model(f"model: unknown model {shown(model)}; {names.hint()}")
    return route


def document(body: bytes, names: ModelNames) -> tuple[dict, dict]:
    """The JSON object in `body` and the CompleteRequest fields that say how to decide (`routing`), or a 400 naming
    what is wrong."""
    try:
        doc = json_values.loads(body)
    except RecursionError:
        raise bad_request("body: JSON nested too deeply") from None
    except json_values.Unsendable as err:
        raise bad_request(err.message()) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and the constants refused below
        raise bad_request(f"body: not valid JSON: {_reason(err)}") from None
    if not isinstance(doc, dict):
        raise bad_request("body: must be a JSON object")
    if "model" not in doc:
        raise bad_request(f"model: missing; {names.hint()}")
    return doc, routing(doc, *route_of(doc["model"], names))


def routing(doc: dict, strategy: str, target: float | None) -> dict:
    """The strategy and quality target the model name routes with, and the head the body names; the body's own
    `quality_target` (an extension, as `head` is; null is unset) overrides the name's. Its range is the core's to
    check."""
    head = doc.get("head")
    fields: dict = {"strategy": strategy, "head": "" if head is None else string(head, "head")}
    asked = target if doc.get("quality_target") is None else doc["quality_target"]
    if asked is not None:
        fields["quality_target"] = number(asked, "quality_target", ", such as 0.99")
    return fields


def number(value: object, field: str, example: str = "") -> float:
    """`value` when it is a JSON number (not a boolean) a float can hold, else a 400 naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > 1e300:
        raise bad_request(f"{field}: must be a number{example}")  # the bound: an int too large for a float
    return value


def refuse_unsupported(doc: dict, unsupported: dict[str, str]) -> None:
    """A 400 naming the first field of `unsupported` the request sets, and what it asks for."""
    for name, what in unsupported.items():
        if doc.get(name):
            raise bad_request(f"{name}: {what} are not supported by the Tierwise router")


def parse(body: bytes, names: ModelNames = ModelNames()) -> ChatRequest:
    """The request in `body`, or a 400 naming the field that is wrong."""
    doc, route = document(body, names)
    refuse_unsupported(doc, UNSUPPORTED)
    if doc.get("web_search_options") is not None:  # even {} asks a search model to search, with its defaults
        raise bad_request("web_search_options: web search is not supported by the Tierwise router")
    n = doc.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise bad_request("n: only 1 choice is supported")
    modalities = doc.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        raise bad_request('modalities: only ["text"] is supported by the Tierwise router (no audio output)')
    request = pb.CompleteRequest(messages=_messages(doc.get("messages")), max_tokens=_max_tokens(doc), **route)
    options(doc, request)
    stream_options = doc.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise bad_request("stream_options: must be an object such as {\"include_usage\": true}")
    usage = flag(stream_options or {}, "include_usage", "stream_options.include_usage")
    stream = flag(doc, "stream")
    if stream_options is not None and not stream:
        raise bad_request("stream_options: only allowed when stream is true (as OpenAI answers)")
    return ChatRequest(request, stream, usage)


def flag(doc: dict, name: str, field: str = "") -> bool:
    """`doc[name]`, a JSON boolean (left out or null: false), else a 400 naming `field` (`name` by default)."""
    value = doc.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{field or name}: must be true or false")
    return bool(value)


def options(doc: dict, request: pb.CompleteRequest, fields: tuple[tuple[str, str], ...] = CHAT_FIELDS) -> None:
    """OpenAI's generation options onto `request`, by JSON type; their ranges are the core's to check. An API that
    spells them otherwise passes its `fields`, so that a refusal names its own."""
    try:
        _options(doc, request)
    except Rejected as err:
        raise renamed(err, fields) from None


def _options(doc: dict, request: pb.CompleteRequest) -> None:
    for field in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = doc.get(field)
        if value is not None:
            setattr(request, field, number(value, field))
    stop = doc.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise bad_request("stop: must be a string or a list of strings")
        request.stop.extend(string(s, f"stop[{i}]") for i, s in enumerate(stop))
    seed = doc.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**63:
            raise bad_request("seed: must be a whole number (64-bit)")
        request.seed = seed
    response_format = doc.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise bad_request('response_format: must be an object such as {"type": "json_object"}')
        request.response_format = json.dumps(response_format)
    _tools(doc, request)
    logprobs, top = doc.get("logprobs"), doc.get("top_logprobs")
    if logprobs is not None:
        if not isinstance(logprobs, bool):
            raise bad_request("logprobs: must be true or false")
        request.logprobs = logprobs
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= INT32_MAX:
            raise bad_request("top_logprobs: must be a whole number from 0 to 20")
        request.top_logprobs = top


def _tools(doc: dict, request: pb.CompleteRequest) -> None:
    """The tools offered and how they may be used, by JSON type; the core checks what they hold."""
    tools, choice, parallel = doc.get("tools"), doc.get("tool_choice"), doc.get("parallel_tool_calls")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_request('tools: must be a list of {"type": "function", "function": {...}} objects')
        request.tools = json.dumps(tools) if tools else ""
    if choice is not None:
        if not isinstance(choice, (str, dict)):
            raise bad_request('tool_choice: must be "auto", "none", "required" or an object naming a function')
        request.tool_choice = string(choice, "tool_choice") if isinstance(choice, str) else json.dumps(choice)
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise bad_request("parallel_tool_calls: must be true or false")
        request.parallel_tool_calls = parallel


def _messages(messages: object) -> list[pb.Message]:
    if messages is None:
        raise bad_request("messages: missing; send a list of {\"role\", \"content\"} objects")
    if not isinstance(messages, list):
        raise bad_request("messages: must be a list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}]: must be an object with role and content")
        role = m.get("role")
        if not isinstance(role, str):
            raise bad_request(f"messages[{i}].role: must be a string: system, user, assistant or tool")
        role = "system" if role == "developer" else role  # OpenAI's newer name for system
        text, images = _content(m.get("content"), f"messages[{i}].content")
        call_id = m.get("tool_call_id")
        out.append(pb.Message(role=string(role, f"messages[{i}].role"), content=text, images=images,
                              tool_calls=_tool_calls(m.get("tool_calls"), f"messages[{i}].tool_calls"),
                              tool_call_id="" if call_id is None else string(call_id, f"messages[{i}].tool_call_id")))
    return out


def _tool_calls(calls: object, field: str) -> list[pb.ToolCall]:
    """An assistant message's tool calls, OpenAI's [{"id", "type": "function", "function": {"name", "arguments"}}];
    null is none."""
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise bad_request(f"{field}: must be a list of tool calls")
    out = []
    for j, call in enumerate(calls):
        is_function = isinstance(call, dict) and call.get("type", "function") == "function"
        function = call.get("function") if is_function else None
        if not isinstance(function, dict):
            raise bad_request(f'{field}[{j}]: must be {{"id": ..., "type": "function", "function": {{"name": ..., '
                              '"arguments": ...}}')
        out.append(pb.ToolCall(id=string(call.get("id"), f"{field}[{j}].id"),
                               name=string(function.get("name"), f"{field}[{j}].function.name"),
                               arguments=string(function.get("arguments", ""), f"{field}[{j}].function.arguments")))
    return out


def _content(content: object, field: str) -> tuple[str, list[pb.Image]]:
    """A message's text and images: a string, or a list of text parts (joined by newlines) and image_url parts;
    null is empty."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return string(content, field), []
    if not isinstance(content, list):
        raise bad_request(f"{field}: must be a string or a list of text and image_url parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(string(part["text"], f"{field}[{j}].text"))
        elif kind == "image_url" and isinstance(image := part.get("image_url"), dict):
            url, detail = image.get("url"), image.get("detail") or ""
            if not isinstance(url, str) or not isinstance(detail, str):
                raise bad_request(f"{field}[{j}].image_url: url and detail must be strings")
            check_image(url, detail, f"{field}[{j}].image_url")
            images.append(pb.Image(url=string(url, f"{field}[{j}].image_url.url"), detail=detail))
        else:
            raise bad_request(f"{field}[{j}]: only {{\"type\": \"text\", \"text\": ...}} and "
                              f"{{\"type\": \"image_url\", \"image_url\": {{\"url\": ...}}}} parts are supported")
    return "\n".join(texts), images


def format_in(container: object, field: str, example: str) -> object:
    """The `format` member of `container`, the request's `field` (None when either is left out), or a 400 when
    `field` is not an object such as `example`."""
    if container is None:
        return None
    if not isinstance(container, dict):
        raise bad_request(f"{field}: must be an object such as {example}")
    return container.get("format")


def string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{field}: must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{field}: not valid Unicode (a lone surrogate escape such as \\ud800)") from None
    return value


def _max_tokens(doc: dict) -> int:
    """max_completion_tokens (OpenAI's current name) or max_tokens; 0 = the provider's default."""
    limits = [doc.get(field) for field in ("max_completion_tokens", "max_tokens")]
    for field, value in zip(("max_completion_tokens", "max_tokens"), limits):
        if value is not None and (type(value) is not int or not 0 < value <= INT32_MAX):
            raise bad_request(f"{field}: must be a whole number from 1 to {INT32_MAX}")
    return next((value for value in limits if value is not None), 0)


def _reason(err: ValueError) -> str:
    """The parser's complaint, without echoing the body."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    if isinstance(err, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(err)
