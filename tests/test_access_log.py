"""The access log (`telemetry.access_log`): a line for each gRPC and HTTP API call, answered or refused, with what
was decided and what it cost, and never the prompt, the answer or the key. A real router on 127.0.0.1 with API keys;
the provider double the only stand-in."""
from __future__ import annotations

import contextlib
import json
import time

import grpc
import openai
import pytest

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, post, router_config, running_router

KEY = "tw-access-key-0123456789"
PROMPT = "Which colour is the zebra-marker-7f3a sky?"  # must never reach the log


def access_lines(router, n: int, timeout: float = 10.0) -> list[dict]:
    """The router's access log lines once there are `n` (HTTP writes its line after the reply has gone out)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in list(router.output) if '"tierwise.router.access"' in line]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines


@pytest.fixture(scope="module")
def router(double, tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("access")
    keys = config_dir / "keys"
    keys.write_text(f"{KEY} id=team-a\n")
    doc = router_config(double.base_url, telemetry={"access_log": True})
    with running_router(doc, UNUSED_CLASSIFIER, config_dir, "--http-listen", "127.0.0.1:0",
                        "--api-keys-file", str(keys), env={KEY_ENV: "k"}) as router:
        yield router


def test_every_call_gets_a_line_and_no_line_holds_the_prompt_or_the_key(router, double):
    double.reset()
    start = len(access_lines(router, 0, timeout=0))
    auth = (("authorization", f"Bearer {KEY}"),)
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        answer = stub.Complete(pb.CompleteRequest(messages=[pb.Message(role="user", content=PROMPT)]), metadata=auth,
                               timeout=20)
        stub.Route(pb.RouteRequest(query=PROMPT, strategy="tier2", quality_target=0.9), metadata=auth, timeout=20)
        list(stub.CompleteStream(pb.CompleteRequest(messages=[pb.Message(role="user", content=PROMPT)],
                                                    strategy="tier3"), metadata=auth, timeout=20))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Route(pb.RouteRequest(query=PROMPT), metadata=(("authorization", "Bearer tw-wrong"),), timeout=20)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Route(pb.RouteRequest(query=PROMPT, strategy="nonesuch"), metadata=auth, timeout=20)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client = openai.OpenAI(base_url=f"http://{http_address(router)}/v1", api_key=KEY, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="tierwise/tier2",
                                                           messages=[{"role": "user", "content": PROMPT}])
    status, _, _ = post(http_address(router), json.dumps({"model": "tierwise", "messages": "no"}).encode(),
                        {"authorization": f"Bearer {KEY}"})
    assert status == 400

    lines = access_lines(router, start + 7)[start:]
    assert [(e["method"], e["code"]) for e in lines] == [
        ("Complete", "OK"), ("Route", "OK"), ("CompleteStream", "OK"), ("Route", "UNAUTHENTICATED"),
        ("Route", "INVALID_ARGUMENT"), ("ChatCompletions", "OK"), ("ChatCompletions", "INVALID_ARGUMENT")]
    complete, route, stream, unknown_key, bad_route, chat, bad_chat = lines
    assert complete["key_id"] == "team-a" and complete["peer"]
    assert (complete["strategy"], complete["tier"], complete["model"]) == ("heuristic", answer.tier, answer.model)
    assert complete["provider"] == answer.provider and complete["cost_usd"] == pytest.approx(answer.cost_usd)
    assert complete["input_tokens"] == answer.usage.input_tokens > 0 and complete["ms"] > 0
    assert (route["strategy"], route["decided_tier"], route["model"]) == ("tier2", 2, "t2-a")
    assert "provider" not in route and "cost_usd" not in route and route["quality_target"] == 0.9
    assert "quality_target" not in complete
    assert (stream["tier"], stream["model"], stream["escalations"], stream["cache_hit"]) == (3, "t3-a", 0, False)
    assert "key_id" not in unknown_key and "strategy" not in unknown_key
    assert bad_route["key_id"] == "team-a" and "strategy" not in bad_route
    assert (chat["status"], chat["request_id"], chat["tier"]) == (200, raw.headers["x-request-id"], 2)
    assert bad_chat["status"] == 400 and "tier" not in bad_chat

    everything = "".join(router.output)
    assert "zebra-marker-7f3a" not in everything and KEY not in everything
    assert "answer from" not in everything  # the double's answers
    assert "HTTP Request:" not in everything, "the HTTP client's own line per provider call stays out of the log"


def test_a_streamed_http_answer_is_logged_under_its_stream_method(router):
    start = len(access_lines(router, 0, timeout=0))
    client = openai.OpenAI(base_url=f"http://{http_address(router)}/v1", api_key=KEY, max_retries=0, timeout=20)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="tierwise/tier1", stream=True, messages=[{"role": "user", "content": "one two three"}]) if chunk.choices)
    [line] = access_lines(router, start + 1)[start:]
    assert text and (line["method"], line["code"], line["status"], line["tier"]) == ("ChatCompletionsStream", "OK",
                                                                                    200, 1)


def test_a_grpc_stream_its_caller_cancels_is_logged_cancelled(router, double):
    """grpc closes such a stream's handler while it waits at a yield: it ends with GeneratorExit, no CancelledError."""
    double.set_reply("t1-a", " ".join(["word"] * 400))
    start = len(access_lines(router, 0, timeout=0))
    try:
        with grpc.insecure_channel(router.address) as channel:
            for _ in range(10):
                events = router_pb2_grpc.RouterServiceStub(channel).CompleteStream(
                    pb.CompleteRequest(messages=[pb.Message(role="user", content="Write at length.")], strategy="tier1"),
                    timeout=20, metadata=(("authorization", f"Bearer {KEY}"),))
                for _, _ in zip(range(3), events):
                    pass
                events.cancel()
    finally:
        double.reset()
    lines = access_lines(router, start + 10)[start:]
    assert len(lines) == 10 and {line["code"] for line in lines} == {"CANCELLED"}, [line["code"] for line in lines]


@pytest.mark.parametrize("ending", ["caller leaves", "provider cuts", "gRPC caller leaves"])
def test_a_stream_ended_before_its_summary_logs_what_its_key_paid(router, double, ending):
    """The key pays for the text that went out (dispatch.Meter.cut): the line says so too, so the access log adds up
    to what the keys were charged."""
    double.script("t1-a", Fault.disconnect_mid_stream(3) if ending == "provider cuts" else
                  Fault.stall_mid_stream(3, 5.0))
    start = len(access_lines(router, 0, timeout=0))
    client = openai.OpenAI(base_url=f"http://{http_address(router)}/v1", api_key=KEY, max_retries=0, timeout=20)
    try:
        if ending == "gRPC caller leaves":
            with grpc.insecure_channel(router.address) as channel:
                events = router_pb2_grpc.RouterServiceStub(channel).CompleteStream(
                    pb.CompleteRequest(messages=[pb.Message(role="user", content="Write at length.")],
                                       strategy="tier1"), timeout=20, metadata=(("authorization", f"Bearer {KEY}"),))
                for _, _ in zip(range(3), events):  # the decision and two pieces of text
                    pass
                events.cancel()
        else:
            stream = client.chat.completions.create(model="tierwise/tier1", stream=True,
                                                    messages=[{"role": "user", "content": "Write at length."}])
            with contextlib.suppress(openai.APIError):
                for _, _ in zip(range(4), stream):
                    pass
            stream.close()
        [line] = access_lines(router, start + 1)[start:]
    finally:
        double.reset()
    # A cut stream ends ABORTED, unless its caller, having read the error event, hangs up before the stream's end.
    assert line["code"] in ({"ABORTED", "CANCELLED"} if ending == "provider cuts" else {"CANCELLED"})
    assert line["cost_usd"] > 0 and line["output_tokens"] > 0 and (line["tier"], line["provider"]) == (1, "t1-a")


def test_the_access_log_is_off_by_default(double, tmp_path):
    with running_router(router_config(double.base_url), UNUSED_CLASSIFIER, tmp_path, env={KEY_ENV: "k"}) as router:
        with grpc.insecure_channel(router.address) as channel:
            router_pb2_grpc.RouterServiceStub(channel).Route(pb.RouteRequest(query="hi"), timeout=20)
        time.sleep(0.2)
        assert not access_lines(router, 0, timeout=0)


def test_what_a_judge_was_paid_is_on_the_line_of_a_route_and_of_a_call_that_then_fails(router, double):
    """The key pays for the judge's call whether or not an answer follows: the access log says so too."""
    double.set_reply("t1-a", '{"tier": 3}')
    double.set_persistent("t3-a", Fault.http_error(503))  # tier 3's only provider
    start = len(access_lines(router, 0, timeout=0))
    try:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            auth = (("authorization", f"Bearer {KEY}"),)
            route = stub.Route(pb.RouteRequest(query="Which tier?", strategy="judge"), metadata=auth, timeout=20)
            with pytest.raises(grpc.RpcError) as failed:
                stub.Complete(pb.CompleteRequest(messages=[pb.Message(role="user", content="Which tier?")],
                                                 strategy="judge"), metadata=auth, timeout=20)
        routed, completed = access_lines(router, start + 2)[start:]
    finally:
        double.reset()
    assert route.tier == 3 and failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert routed["cost_usd"] > 0 and completed["cost_usd"] == pytest.approx(routed["cost_usd"])
