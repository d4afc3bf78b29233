"""A CompleteRequest's generation options, checked and read as every provider call for it is made.

The HTTP API reads OpenAI's fields into the same request, so both APIs refuse the same values with the same words.
"""
from __future__ import annotations

import json
import math

import grpc

from tierwise.serving import Rejected
from tierwise.v1 import router_pb2 as pb

from .providers import Sampling

MAX_STOP = 4  # OpenAI's own limit
MAX_STOP_BYTES = 1024
MAX_RESPONSE_FORMAT_BYTES = 256 * 1024
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def answer_options(request: pb.CompleteRequest) -> dict:
    """The request's generation options as every provider call for it takes them (escalations and the shadow's
    too), or INVALID_ARGUMENT naming the first field that is wrong."""
    if request.max_tokens < 0:
        _refuse("max_tokens: must be 0 (provider default) or more")
    return {"max_tokens": request.max_tokens or None, "temperature": _within(request, "temperature", 0, 2),
            "sampling": _sampling(request)}


def _sampling(request: pb.CompleteRequest) -> Sampling:
    top_p = _within(request, "top_p", 0, 1)
    presence = _within(request, "presence_penalty", -2, 2)
    frequency = _within(request, "frequency_penalty", -2, 2)
    if len(request.stop) > MAX_STOP:
        _refuse(f"stop: at most {MAX_STOP} sequences, got {len(request.stop)}")
    for i, sequence in enumerate(request.stop):
        if not sequence or len(sequence.encode()) > MAX_STOP_BYTES:
            _refuse(f"stop[{i}]: must be 1 to {MAX_STOP_BYTES} bytes")
    return Sampling(top_p=top_p, stop=tuple(request.stop), seed=request.seed if request.HasField("seed") else None,
                    presence_penalty=presence, frequency_penalty=frequency,
                    response_format=_response_format(request.response_format))


def _within(request: pb.CompleteRequest, field: str, low: float, high: float) -> float | None:
    if not request.HasField(field):
        return None
    value = getattr(request, field)
    if not (math.isfinite(value) and low <= value <= high):
        _refuse(f"{field}: must be a number from {low} to {high}")
    return value


def _response_format(text: str) -> dict | None:
    """`text` parsed, once checked to be one of OpenAI's response_format objects; None for ""."""
    if not text:
        return None
    if len(text.encode()) > MAX_RESPONSE_FORMAT_BYTES:
        _refuse(f"response_format: larger than {MAX_RESPONSE_FORMAT_BYTES} bytes")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        _refuse("response_format: not valid JSON")
    if not isinstance(doc, dict) or doc.get("type") not in RESPONSE_FORMATS:
        _refuse('response_format: must be an object whose type is "text", "json_object" or "json_schema"')
    if doc["type"] == "json_schema":
        schema = doc.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str) or not schema["name"]:
            _refuse('response_format.json_schema: must be an object with a "name" (and usually a "schema")')
    return doc


def _refuse(message: str):
    raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, message)
