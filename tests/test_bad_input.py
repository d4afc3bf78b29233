"""Malformed requests to both services, over real sockets: every one ends INVALID_ARGUMENT naming the field
(or `request`), never UNKNOWN or INTERNAL, and both servers keep answering."""
from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierwise.v1 import classifier_pb2 as cpb
from tierwise.v1 import router_pb2 as pb

from .exported_metrics import scrape, value
from .servers import KEY_ENV, UNUSED_CLASSIFIER, router_config, router_stack, running_router, start_classifier

ROUTER = "/tierwise.v1.RouterService/"
CLASSIFIER = "/tierwise.v1.ClassifierService/"
BLANKS = ["\x00", "\x00\x00\x00", "\u200b", "\u200b\u200c\u200d\ufeff", " \t\u200b\x00\n", "\u2060\u3164"]
SERVER_FAULTS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


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


@pytest.mark.parametrize("request_, error", [
    (ask(("system", "x" * 3_500_000), ("user", "hi")),
     "messages[0].content: 3500000 bytes exceed the limit of 262144 bytes"),
    (ask(*[("user", "hi")] * 257), "messages: 257 messages exceed the limit of 256"),
    (ask(*[("system", "y" * 200_000)] * 6, ("user", "hi")),
     "messages: 1200002 bytes in all exceed the limit of 1048576 bytes"),
    (ask(("user", "hi"), ("wizard" * 2000, "w")), "messages[1].role: 'wizardwizard"),
], ids=["huge-system-message", "too-many-messages", "too-many-bytes", "long-bad-role"])
def test_limits_hold_over_the_whole_conversation(stack, request_, error):
    for method in ("Complete", "CompleteStream"):
        code, details = call(stack, ROUTER + method, request_.SerializeToString())
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(error), (code, details[:300])
        assert len(details) < 300


def test_a_long_conversation_within_the_limits_is_answered(stack):
    request = ask(*[("system", "y" * 200_000)] * 5, ("user", "hi"))
    assert call(stack, ROUTER + "Complete", request.SerializeToString()) == (grpc.StatusCode.OK, "")


texts = st.text(max_size=40) | st.sampled_from(BLANKS + ["hi", "What is 2 + 2?"])
messages = st.lists(st.builds(pb.Message, role=st.sampled_from(["user", "system", "assistant", "tool", ""]) | texts,
                              content=texts), max_size=4)
requests = st.one_of(
    st.tuples(st.just(ROUTER + "Route"), st.builds(pb.RouteRequest, query=texts,
                                                   strategy=st.sampled_from(["", "heuristic", "cheapest"]) | texts,
                                                   head=st.just("") | texts)),
    st.tuples(st.sampled_from([ROUTER + "Complete", ROUTER + "CompleteStream"]),
              st.builds(pb.CompleteRequest, messages=messages, strategy=st.sampled_from(["", "cheapest"]) | texts,
                        max_tokens=st.integers(-2**31, 2**31 - 1), temperature=st.none() | st.floats(width=32),
                        head=st.just("") | texts)),
    st.tuples(st.just(CLASSIFIER + "Classify"), st.builds(cpb.ClassifyRequest, text=texts, head=st.just("") | texts,
                                                          tradeoff=st.none() | st.floats(width=32))),
    st.tuples(st.just(CLASSIFIER + "ClassifyBatch"), st.builds(cpb.ClassifyBatchRequest, texts=st.lists(texts, max_size=5),
                                                               head=st.just("") | texts)),
)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request_=requests)
def test_random_requests_never_fail_inside_the_servers(stack, request_):
    method, message = request_
    code, details = call(stack, method, message.SerializeToString())
    assert code not in SERVER_FAULTS, (method, message, code, details)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=64))
def test_random_bytes_never_fail_inside_the_servers(stack, method, payload):
    code, details = call(stack, method, payload)
    assert code not in SERVER_FAULTS, (method, payload, code, details)


def test_a_request_refused_before_its_handler_is_counted_as_every_call_is(tmp_path):
    """Bytes no request decodes from never reach the servicer that counts calls: the guard counts them, so the
    calls metric (and an alert on INVALID_ARGUMENT) sees them too."""
    classifier = start_classifier("--metrics-listen", "127.0.0.1:0")
    try:
        with running_router(router_config("http://127.0.0.1:9/v1"), UNUSED_CLASSIFIER, tmp_path, "--metrics-listen",
                            "127.0.0.1:0", env={KEY_ENV: "k"}) as router, \
                grpc.insecure_channel(router.address) as to_router, \
                grpc.insecure_channel(classifier.address) as to_classifier:
            channels = {ROUTER: to_router, CLASSIFIER: to_classifier}
            for method, payload in ((CLASSIFIER + "Classify", GARBAGE[0]),
                                    (CLASSIFIER + "Classify", invalid_utf8(cpb.ClassifyRequest(text="hello there"),
                                                                           "hello there")),
                                    (ROUTER + "Route", GARBAGE[0])):
                assert call((channels,), method, payload)[0] == grpc.StatusCode.INVALID_ARGUMENT
            counted = lambda service, name, method: value(scrape(service), name, method=method, code="INVALID_ARGUMENT")
            assert counted(classifier, "tierwise_classifier_requests_total", "Classify") == 2
            assert counted(router, "tierwise_router_calls_total", "Route") == 1
    finally:
        classifier.stop()
