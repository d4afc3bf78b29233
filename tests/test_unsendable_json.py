"""JSON that Python reads but no strict encoder writes back (a number past a float's range, a lone surrogate, nesting
past the router's limit), sent to be passed on to a provider: the request's own 400 / INVALID_ARGUMENT naming the
value's path, on every API. It never reaches a provider, so it can never open a provider's breaker."""
from __future__ import annotations

import json

import grpc
import pytest

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, post, router_config, running_router

HI = '"messages": [{"role": "user", "content": "hi"}]'
DEEP = '{"a": ' * 100 + "1" + "}" * 100
TOOL = '{"type": "function", "function": {"name": "f", "parameters": %s}}'
SENT = {
    "/v1/chat/completions": [
        ('{"model": "tierwise", %s, "response_format": {"type": "json_schema", "json_schema": {"name": "n", '
         '"schema": {"maximum": 1e999}}}}' % HI, "response_format.json_schema.schema.maximum"),
        ('{"model": "tierwise", %s, "tools": [{"type": "function", "function": {"name": "f", '
         '"description": "\\ud800"}}]}' % HI, "tools[0].function.description"),
        ('{"model": "tierwise", %s, "tools": [%s]}' % (HI, TOOL % DEEP), "tools"),
        ('{"model": "tierwise", %s, "tools": [%s]}' % (HI, TOOL % '{"minimum": -1e400}'),
         "tools[0].function.parameters.minimum"),
        ('{"model": "tierwise", %s, "metadata": {"m": 1e999}}' % HI, "metadata.m"),
    ],
    "/v1/responses": [
        ('{"model": "tierwise", "input": "hi", "metadata": {"m": 1e999}}', "metadata.m"),
        ('{"model": "tierwise", "input": "hi", "text": {"format": {"type": "json_schema", "name": "\\ud800", '
         '"schema": {}}}}', "text.format.name"),
        ('{"model": "tierwise", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": %s}]}'
         % DEEP, "tools"),
    ],
    "/v1/messages": [
        ('{"model": "tierwise", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}, {"role": '
         '"assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"v": "\\ud800"}}]}, '
         '{"role": "user", "content": "x"}]}', "messages[1].content[0].input.v"),
    ],
}
CASES = [(path, body, field) for path, cases in SENT.items() for body, field in cases]


@pytest.fixture(scope="module")
def router(tmp_path_factory, double):
    """A router with the default breakers (open after 5 failures), heuristic only, HTTP on an ephemeral port."""
    doc = router_config(double.base_url, strategy="heuristic")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("unsendable"), "--http-listen",
                        "127.0.0.1:0", env={KEY_ENV: "k"}) as served:
        yield served


def refusal(path: str, body: dict) -> str:
    """The field a 400 names, in the API's own error shape."""
    error = body["error"]
    return error["message"].split(":")[0] if path == "/v1/messages" else error["param"]


@pytest.mark.parametrize("path, body, field", CASES, ids=[f"{p}:{f}" for p, _, f in CASES])
def test_a_value_no_encoder_can_send_is_a_400_naming_its_path(router, double, path, body, field):
    double.reset()
    status, headers, reply = post(http_address(router), body.encode(), path=path)
    assert status == 400, reply
    assert refusal(path, reply) == field, reply
    assert not double.requests, "nothing was sent to a provider"


def test_many_such_requests_leave_the_providers_serving(router, double):
    """Five failures open a provider's breaker: these are no provider's failures, so the next call is answered."""
    address = http_address(router)
    for _ in range(3):
        for path, body, _ in CASES:
            assert post(address, body.encode(), path=path)[0] == 400
    status, _, reply = post(address, json.dumps({"model": "tierwise", "messages": [
        {"role": "user", "content": "What time does the store close?"}]}).encode())
    assert status == 200, reply


@pytest.mark.parametrize("field, value, named", [
    ("tools", '[%s]' % (TOOL % '{"maximum": 1e999}'), "tools[0].function.parameters.maximum"),
    ("response_format", '{"type": "json_schema", "json_schema": {"name": "\\udc00"}}', "response_format.json_schema.name"),
    ("tools", '[%s]' % (TOOL % DEEP), "tools"),
])
def test_over_grpc_it_is_invalid_argument_naming_its_path(router, double, field, value, named):
    double.reset()
    request = pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")], **{field: value})
    with grpc.insecure_channel(router.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(channel).Complete(request, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{named}: "), err.value.details()
    assert not double.requests


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_a_provider_answers_with_reaches_the_caller_as_a_replacement_character(router, double,
                                                                                               stream):
    """Its JSON may escape one ("\\ud800"); passed on as it is, it would fail the call after it was paid for (no
    UTF-8 encoder, protobuf's included, writes one), and fail a judge's or a retry's call as the provider's fault."""
    double.reset()
    double.set_reply("t3-a", "fine \ud800 answer")
    request = pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")], strategy="tier3")
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            if stream:
                events = list(stub.CompleteStream(request, timeout=20))
                content = "".join(e.delta for e in events if e.WhichOneof("event") == "delta")
            else:
                content = stub.Complete(request, timeout=20).content
    finally:
        double.set_reply("t3-a", None)
    assert content.replace(" ", "") == "fine\ufffdanswer"
