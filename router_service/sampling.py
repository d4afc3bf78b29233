"""A CompleteRequest's generation options, checked and read as every provider call for it is made.

The HTTP API reads OpenAI's fields into the same request, so both APIs refuse the same values with the same words.
"""
from __future__ import annotations

import math
import re

from tierwise.serving import invalid, shown
from tierwise.v1 import router_pb2 as pb

from . import json_values
from .providers import Sampling

MAX_STOP = 4  # OpenAI's own limit
MAX_STOP_BYTES = 1024
MAX_RESPONSE_FORMAT_BYTES = 256 * 1024
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_TOOLS = 128  # OpenAI's own limit
MAX_TOP_LOGPROBS = 20  # likewise
MAX_TOOLS_BYTES = 1024 * 1024
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for a function's name
TOOL_CHOICES = ("auto", "none", "required")


def answer_options(request: pb.CompleteRequest) -> dict:
    """The request's generation options as every provider call for it takes them (escalations and the shadow's
    too), or INVALID_ARGUMENT naming the first field that is wrong."""
    if request.max_tokens < 0:
        raise invalid("max_tokens: must be 0 (provider default) or more")
    return {"max_tokens": request.max_tokens or None, "temperature": _within(request, "temperature", 0, 2),
            "sampling": _sampling(request)}


def _sampling(request: pb.CompleteRequest) -> Sampling:
    top_p = _within(request, "top_p", 0, 1)
    presence = _within(request, "presence_penalty", -2, 2)
    frequency = _within(request, "frequency_penalty", -2, 2)
    if len(request.stop) > MAX_STOP:
        raise invalid(f"stop: at most {MAX_STOP} sequences, got {len(request.stop)}")
    for i, sequence in enumerate(request.stop):
        if not sequence or len(sequence.encode()) > MAX_STOP_BYTES:
            raise invalid(f"stop[{i}]: must be 1 to {MAX_STOP_BYTES} bytes")
    tools = _tools(request.tools)
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
    choice = _tool_choice(request.tool_choice, tools)
    if parallel is not None and not tools:
        raise invalid("parallel_tool_calls: needs tools")
    logprobs = request.HasField("logprobs") and request.logprobs
    if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
        raise invalid(f"top_logprobs: must be a whole number from 0 to {MAX_TOP_LOGPROBS}")
    if request.top_logprobs and not logprobs:
        raise invalid("top_logprobs: needs the answer's log probabilities asked for (logprobs: true; in the Responses "
                      "API, include: [\"message.output_text.logprobs\"])")
    return Sampling(top_p=top_p, stop=tuple(request.stop), seed=request.seed if request.HasField("seed") else None,
                    presence_penalty=presence, frequency_penalty=frequency,
                    response_format=_response_format(request.response_format), tools=tools, tool_choice=choice,
                    parallel_tool_calls=parallel, logprobs=logprobs, top_logprobs=request.top_logprobs)


def _within(request: pb.CompleteRequest, field: str, low: float, high: float) -> float | None:
    if not request.HasField(field):
        return None
    value = getattr(request, field)
    if not (math.isfinite(value) and low <= value <= high):
        raise invalid(f"{field}: must be a number from {low} to {high}")
    return value


def _json(text: str, field: str, limit: int):
    if len(text.encode()) > limit:
        raise invalid(f"{field}: larger than {limit} bytes")
    try:
        return json_values.loads(text)
    except json_values.Unsendable as err:
        raise invalid(err.message(field)) from None
    except (ValueError, RecursionError):
        raise invalid(f"{field}: not valid JSON") from None


def _response_format(text: str) -> dict | None:
    """`text` parsed, once checked to be one of OpenAI's response_format objects; None for ""."""
    if not text:
        return None
    doc = _json(text, "response_format", MAX_RESPONSE_FORMAT_BYTES)
    if not isinstance(doc, dict) or doc.get("type") not in RESPONSE_FORMATS:
        raise invalid('response_format: must be an object whose type is "text", "json_object" or "json_schema"')
    if doc["type"] == "json_schema":
        schema = doc.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str) or not schema["name"]:
            raise invalid('response_format.json_schema: must be an object with a "name" (and usually a "schema")')
    return doc


def _tools(text: str) -> tuple[dict, ...]:
    """`text` parsed, once checked to be a list of OpenAI function tools, each named; () for ""."""
    if not text:
        return ()
    doc = _json(text, "tools", MAX_TOOLS_BYTES)
    if not isinstance(doc, list) or not doc:
        raise invalid('tools: must be a non-empty list of {"type": "function", "function": {"name": ...}} objects')
    if len(doc) > MAX_TOOLS:
        raise invalid(f"tools: at most {MAX_TOOLS} tools, got {len(doc)}")
    names = set()
    for i, tool in enumerate(doc):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict):
            raise invalid(f'tools[{i}]: must be {{"type": "function", "function": {{...}}}}; only function tools are '
                    "supported")
        name = function.get("name")
        if not (isinstance(name, str) and TOOL_NAME.fullmatch(name)):
            raise invalid(f"tools[{i}].function.name: must be 1 to 64 letters, digits, underscores or dashes")
        if name in names:
            raise invalid(f"tools[{i}].function.name: {name} names two tools")
        names.add(name)
        if not isinstance(function.get("parameters", {}), dict):
            raise invalid(f"tools[{i}].function.parameters: must be a JSON Schema object")
    return tuple(doc)


def _tool_choice(text: str, tools: tuple[dict, ...]) -> str | dict | None:
    """`text`: "auto", "none" or "required" (bare or as JSON strings), or a JSON object naming one of the tools;
    None for ""."""
    if not text:
        return None
    if not tools:
        raise invalid("tool_choice: needs tools")
    if text in TOOL_CHOICES:
        return text
    try:
        doc = json_values.loads(text) if len(text) <= MAX_TOOLS_BYTES else None
    except json_values.Unsendable as err:
        raise invalid(err.message("tool_choice")) from None
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, str) and doc in TOOL_CHOICES:
        return doc
    name = (doc["function"].get("name") if isinstance(doc, dict) and doc.get("type") == "function"
            and isinstance(doc.get("function"), dict) else None)
    if not isinstance(name, str):
        raise invalid('tool_choice: must be auto, none, required or {"type": "function", "function": {"name": ...}}')
    if name not in {tool["function"]["name"] for tool in tools}:
        raise invalid(f"tool_choice.function.name: {shown(str(name))} is not one of the tools")
    return doc
