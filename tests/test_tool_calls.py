"""Tool calls: the caller's tools go to providers that call them, the model's calls come back in OpenAI's shape (whole
and streamed, over HTTP and gRPC), and the results go back to the model; a tier none of whose providers calls tools
is skipped upwards; a cascade does not gate a call; bad tools are refused by name; the shadow never samples them.
Real routers on 127.0.0.1, the provider double (tests/double_tools.py) as the only stand-in."""
from __future__ import annotations

import json
import socket
import time

import grpc
import pytest

from router_service.conversation import NoTierFits, decide_on_conversation
from router_service.providers import ProviderConfig, Sampling, TierChain, ToolCall
from router_service.providers.chain import needs_of
from router_service.providers.provider import Provider, completion_of
from router_service.strategies import Decision
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc
from tierwise_client import RouterClient

from .servers import KEY_ENV, UNUSED_CLASSIFIER, capability_config, http_address, openai_client, post, running_router

QUESTION = "What is the weather in Paris today?"


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"{name} of a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


WEATHER, TIME = tool("get_weather"), tool("get_time")


def tools_config(base_url: str, callers: set[str], **extra) -> dict:
    return capability_config(base_url, "tools", callers, **extra)



@pytest.fixture(scope="module")
def api(tmp_path_factory, double):
    """t1-a calls no tools; t1-b (which refuses parallel_tool_calls), t2-a and t3-a do."""
    doc = tools_config(double.base_url, {"t1-b", "t2-a", "t3-a"})
    doc["tiers"][0]["providers"][1]["drop_options"] = ["parallel_tool_calls"]
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("tools"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield router



# ------------------------------------------------------------------------------------------------ the decision


def test_tools_count_in_the_requests_size_and_a_tier_that_cannot_call_them_is_skipped():
    messages = [{"role": "user", "content": QUESTION}]
    plain, offered = needs_of(messages, None), needs_of(messages, None, Sampling(tools=(WEATHER, TIME)))
    assert offered.tools and not plain.tools
    assert offered.tokens - plain.tokens >= len(json.dumps([WEATHER, TIME])) // 5

    def chains(callers: set[int]) -> dict[int, TierChain]:
        return {t: TierChain([Provider(ProviderConfig(name=f"t{t}", base_url="http://127.0.0.1:9", model="m",
                                                      tools=t in callers))]) for t in (1, 2, 3)}

    decision = Decision(tier=1, strategy="heuristic", reason="score 0")
    moved = decide_on_conversation(decision, messages, chains({3}), sampling=Sampling(tools=(WEATHER,)))
    assert moved.tier == 3 and moved.reason.endswith("skipped to tier 3: tier 1's providers cannot call tools")
    assert decide_on_conversation(decision, messages, chains(set())) is decision, "no tools offered: no change"
    with pytest.raises(NoTierFits, match="tools: the request offers tools; no provider of tier 1 or above"):
        decide_on_conversation(decision, messages, chains(set()), sampling=Sampling(tools=(WEATHER,)))


def test_a_call_a_provider_sent_without_an_id_gets_one():
    """The caller's tool message must name the call it answers, and some OpenAI-compatible servers send none."""
    config = ProviderConfig(name="p", base_url="http://127.0.0.1:9", model="m")
    calls = (ToolCall("", "get_weather", "{}"), ToolCall("", "get_time", "{}"), ToolCall("c7", "get_time", "{}"))
    done = completion_of(config, [{"role": "user", "content": QUESTION}], "", None, None, calls)
    ids = [c.id for c in done.tool_calls]
    assert ids[0].startswith("call_") and ids[1].startswith("call_") and ids[0] != ids[1] and ids[2] == "c7"
    assert done.finish_reason == "tool_calls" and [c.name for c in done.tool_calls] == ["get_weather", "get_time",
                                                                                        "get_time"]


# ---------------------------------------------------------------------------------------- through the router


def test_a_tool_call_comes_back_and_its_result_goes_to_the_model(api, double):
    double.reset()
    client = openai_client(api)
    first = client.chat.completions.with_raw_response.create(
        model="tierwise/cheapest", messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER, TIME],
        tool_choice="auto", parallel_tool_calls=False)
    assert first.headers["x-tierwise-provider"] == "t1-b", "the provider that calls no tools is skipped"
    assert not double.requests_for("t1-a")
    choice = first.parse().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_0_get_weather", "get_weather", {"words": 7})
    [sent] = [r.body for r in double.requests_for("t1-b")]
    assert sent["tools"] == [WEATHER, TIME] and sent["tool_choice"] == "auto"
    assert "parallel_tool_calls" not in sent, "t1-b's drop_options leave it out"

    result = {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 18, "sky": "clear"}'}
    second = client.chat.completions.create(
        model="tierwise/cheapest", tools=[WEATHER, TIME],
        messages=[{"role": "user", "content": QUESTION}, choice.message.model_dump(exclude_none=True), result])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "answer from t1-b: 4 words", "it answers from the tool's result"
    assert double.requests_for("t1-b")[1].body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"words": 7}'}}]},
        result]


def test_streamed_tool_calls_are_put_together_and_sent_whole(api, double):
    """The double streams each call's arguments in pieces; the caller gets each call whole, then finish_reason."""
    double.reset()
    stream = openai_client(api).chat.completions.create(
        model="tierwise/cheapest", messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER, TIME],
        tool_choice="required", stream=True, stream_options={"include_usage": True})
    calls, finish, text = {}, None, ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += piece.id or ""
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
    assert finish == "tool_calls" and text == ""
    assert [calls[i] for i in sorted(calls)] == [
        {"id": "call_0_get_weather", "name": "get_weather", "arguments": '{"words": 7}'},
        {"id": "call_1_get_time", "name": "get_time", "arguments": '{"words": 7}'}]
    assert [r.stream for r in double.requests_for("t1-b")] == [True]


@pytest.mark.parametrize("stream", [False, True])
def test_grpc_carries_tools_calls_and_results(api, double, stream):
    double.reset()
    question = pb.Message(role="user", content=QUESTION)
    ask = pb.CompleteRequest(strategy="cheapest", messages=[question], tools=json.dumps([WEATHER]),
                             tool_choice="required")
    with grpc.insecure_channel(api.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        reply = (list(stub.CompleteStream(ask, timeout=20))[-1].summary if stream else stub.Complete(ask, timeout=20))
        assert reply.finish_reason == "tool_calls" and reply.content == ""
        assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
            ("call_0_get_weather", "get_weather", '{"words": 7}')]
        assert [(a.provider, a.outcome) for a in reply.attempts] == [("t1-a", "skipped_no_tools"), ("t1-b", "ok")]
        answered = stub.Complete(pb.CompleteRequest(strategy="cheapest", tools=json.dumps([WEATHER]), messages=[
            question, pb.Message(role="assistant", tool_calls=reply.tool_calls),
            pb.Message(role="tool", tool_call_id=reply.tool_calls[0].id, content="18 degrees")]), timeout=20)
    assert (answered.content, answered.finish_reason) == ("answer from t1-b: 2 words", "stop")


def test_the_python_client_offers_tools_as_python_objects(api, double):
    double.reset()
    with RouterClient(api.address) as client:
        reply = client.complete(QUESTION, strategy="cheapest", tools=[WEATHER, TIME],
                                tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.name for c in reply.tool_calls] == ["get_time"] and reply.finish_reason == "tool_calls"
    assert double.requests_for("t1-b")[0].body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


def test_a_cascade_returns_a_tool_call_without_gating_it(api, double):
    """The surface gate would reject an empty answer; a call has no text to read, and is not escalated."""
    double.reset()
    ask = pb.CompleteRequest(strategy="cheapest+cascade", messages=[pb.Message(role="user", content=QUESTION)],
                             tools=json.dumps([WEATHER]))
    with grpc.insecure_channel(api.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        reply = stub.Complete(ask, timeout=20)
        streamed = list(stub.CompleteStream(ask, timeout=20))
    assert (reply.tier, reply.escalations, reply.finish_reason) == (1, 0, "tool_calls")
    assert [e.WhichOneof("event") for e in streamed] == ["decision", "summary"], "no empty text delta"
    assert streamed[-1].summary.tool_calls == reply.tool_calls
    assert not double.requests_for("t2-a") and not double.requests_for("t3-a")


def test_over_grpc_a_tool_choice_naming_a_function_by_a_list_is_invalid_argument(api):
    ask = pb.CompleteRequest(messages=[pb.Message(role="user", content=QUESTION)], tools=json.dumps([WEATHER]),
                             tool_choice=json.dumps({"type": "function", "function": {"name": ["get_weather"]}}))
    with grpc.insecure_channel(api.address) as channel, pytest.raises(grpc.RpcError) as err:
        router_pb2_grpc.RouterServiceStub(channel).Complete(ask, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("tool_choice: ")


USER = {"role": "user", "content": QUESTION}
CALL = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                             "function": {"name": "get_weather", "arguments": "{}"}}]}


@pytest.mark.parametrize("extra, param", [
    ({"tools": WEATHER}, "tools"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ({"tools": [tool("get weather")]}, "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    ({"tools": [tool(f"f{i}") for i in range(129)]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": 3}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": ["get_weather"]}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": {"get_weather": 1}}}},
     "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ({"functions": [WEATHER["function"]]}, "functions"),
    ({"messages": [USER, {"role": "tool", "content": "18"}]}, "messages[1].tool_call_id"),
    ({"messages": [USER, CALL, {"role": "tool", "tool_call_id": 7, "content": "18"}]}, "messages[2].tool_call_id"),
    ({"messages": [{**USER, "tool_calls": CALL["tool_calls"]}]}, "messages[0].tool_calls"),
    ({"messages": [USER, {**CALL, "tool_calls": [{"id": "c1", "type": "function"}]}]}, "messages[1].tool_calls[0]"),
    ({"messages": [USER, {**CALL, "tool_calls": [{"id": "", "type": "function", "function": {"name": "f"}}]}]},
     "messages[1].tool_calls[0].id"),
    ({"messages": [USER, {"role": "assistant", "content": "x", "tool_call_id": "c1"}]}, "messages[1].tool_call_id"),
])
def test_bad_tools_are_400s_naming_the_field(api, extra, param):
    status, _, reply = post(http_address(api), json.dumps({"model": "tierwise", "messages": [USER], **extra}).encode())
    assert status == 400, reply
    assert reply["error"]["param"] == param, reply


def test_a_request_no_tier_can_call_tools_for_is_a_400_naming_tools(tmp_path, double):
    with running_router(tools_config(double.base_url, set()), UNUSED_CLASSIFIER, tmp_path, "--http-listen",
                        "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        status, _, reply = post(http_address(router), json.dumps(
            {"model": "tierwise", "messages": [USER], "tools": [WEATHER]}).encode())
        plain = post(http_address(router), json.dumps({"model": "tierwise", "messages": [USER]}).encode())
    assert status == 400 and reply["error"]["param"] == "tools", reply
    assert "offers tools" in reply["error"]["message"]
    assert plain[0] == 200, "a request without tools is served as before"


def test_the_shadow_never_samples_a_request_with_tools(tmp_path, double):
    """The judge grades text answers, so neither a request offering tools nor one carrying their results is
    labelled."""
    double.reset()
    labels = tmp_path / f"live-{socket.gethostname()}.jsonl"
    doc = tools_config(double.base_url, {"t1-a", "t1-b", "t2-a", "t3-a"},
                       shadow={"share": 1.0, "labels": str(tmp_path / "live-{host}.jsonl")})
    double.set_reply("t1-a", '{"score": 1.0}')
    results = [USER, CALL, {"role": "tool", "tool_call_id": "c1", "content": "18"}]
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        for body in ({"messages": [USER], "tools": [WEATHER]}, {"messages": results},
                     {"messages": [{"role": "user", "content": "hi there"}]}):
            assert post(address, json.dumps({"model": "tierwise/cheapest", **body}).encode())[0] == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (labels.exists() and labels.read_text().strip()):
            time.sleep(0.05)
        time.sleep(0.3)  # room for another record, were a tool request sampled too
    assert [json.loads(line)["query"] for line in labels.read_text().splitlines()] == ["hi there"]
