"""Malformed requests to both services, over real sockets: every one ends INVALID_ARGUMENT naming the field
(or `request`), never UNKNOWN or INTERNAL, and both servers keep answering."""
from __future__ import annotations

import grpc
import pytest

from tierwise.v1 import classifier_pb2 as cpb
from tierwise.v1 import router_pb2 as pb

from .servers import router_stack

ROUTER = "/tierwise.v1.RouterService/"
CLASSIFIER = "/tierwise.v1.ClassifierService/"
BLANKS = ["\x00", "\x00\x00\x00", "\u200b", "\u200b\u200c\u200d\ufeff", " \t\u200b\x00\n", "\u2060\u3164"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with router_stack(tmp_path_factory.mktemp("router"), "heuristic") as (double, classifier, router):
        with grpc.insecure_channel(router.address) as to_router, \
                grpc.insecure_channel(classifier.address) as to_classifier:
            yield {ROUTER: to_router, CLASSIFIER: to_classifier}, router, classifier
        assert router.proc.poll() is None and classifier.proc.poll() is None, "a server died"


def call(stack, method: str, payload: bytes, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    """Send `payload` as the request's bytes, as they are; (status, details) of the call."""
    channels = stack[0]
    service = ROUTER if method.startswith(ROUTER) else CLASSIFIER
    streaming = method.endswith("CompleteStream")
    make = channels[service].unary_stream if streaming else channels[service].unary_unary
    rpc = make(method, request_serializer=None, response_deserializer=None)
    try:
        reply = rpc(payload, timeout=timeout)
        if streaming:
            list(reply)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""


def invalid_utf8(message, text: str) -> bytes:
    """`message` on the wire with the UTF-8 of `text` (which it must hold) replaced by bytes that are not UTF-8."""
    wire = message.SerializeToString()
    assert wire.count(text.encode()) == 1
    return wire.replace(text.encode(), b"\xff" + text.encode()[1:])


def ask(*messages: tuple[str, str]) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role=r, content=c) for r, c in messages])


GARBAGE = [b"\xff", b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x08", b"\x0c", b"\x07"]
METHODS = [ROUTER + "Route", ROUTER + "Complete", ROUTER + "CompleteStream",
           CLASSIFIER + "Classify", CLASSIFIER + "ClassifyBatch", CLASSIFIER + "ListHeads"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("payload", GARBAGE, ids=lambda p: p.hex())
def test_undecodable_bytes_are_invalid_argument(stack, method, payload):
    code, details = call(stack, method, payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith("request: not a valid tierwise.v1."), details
    assert "DecodeError" not in details and "Error parsing" not in details


@pytest.mark.parametrize("method, payload, field", [
    (ROUTER + "Route", invalid_utf8(pb.RouteRequest(query="hello there"), "hello there"), "query"),
    (ROUTER + "Route", invalid_utf8(pb.RouteRequest(query="hi", strategy="heuristic"), "heuristic"), "strategy"),
    (ROUTER + "Complete", invalid_utf8(ask(("system", "be brief"), ("user", "hello there")), "hello there"),
     "messages[1].content"),
    (ROUTER + "CompleteStream", invalid_utf8(ask(("user", "hi"), ("assistant", "hello there")), "assistant"),
     "messages[1].role"),
    (CLASSIFIER + "Classify", invalid_utf8(cpb.ClassifyRequest(text="hello there"), "hello there"), "text"),
    (CLASSIFIER + "ClassifyBatch", invalid_utf8(cpb.ClassifyBatchRequest(texts=["a", "b", "hello there"]),
                                                "hello there"), "texts[2]"),
])
def test_invalid_utf8_is_invalid_argument_naming_the_field(stack, method, payload, field):
    code, details = call(stack, method, payload)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, f"{field}: not valid UTF-8")


@pytest.mark.parametrize("blank", BLANKS, ids=repr)
def test_text_of_only_control_or_zero_width_characters_is_blank(stack, blank):
    cases = [(ROUTER + "Route", pb.RouteRequest(query=blank), "query:"),
             (ROUTER + "Complete", ask(("user", "hi"), ("assistant", "yes?"), ("user", blank)), "messages[2].content:"),
             (CLASSIFIER + "Classify", cpb.ClassifyRequest(text=blank), "text:"),
             (CLASSIFIER + "ClassifyBatch", cpb.ClassifyBatchRequest(texts=["hi", blank]), "texts[1]:")]
    for method, request, field in cases:
        code, details = call(stack, method, request.SerializeToString())
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), (method, code, details)
        assert "blank" in details


def test_visible_text_with_control_characters_is_accepted(stack):
    assert call(stack, ROUTER + "Route", pb.RouteRequest(query="\x00hi\u200b").SerializeToString())[0] == \
        grpc.StatusCode.OK


def test_a_huge_unknown_name_is_not_echoed_whole(stack):
    code, details = call(stack, ROUTER + "Route", pb.RouteRequest(query="hi", strategy="s" * 100_000).SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("strategy: unknown strategy 'sss")
    assert "(100000 characters)" in details and len(details) < 300
    code, details = call(stack, CLASSIFIER + "Classify", cpb.ClassifyRequest(text="hi", head="h" * 50_000)
                         .SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("head: unknown head 'hhh")
    assert len(details) < 300
