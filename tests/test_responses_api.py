"""POST /v1/responses, OpenAI's Responses API, through the official SDK: whole and streamed (the SDK's own stream
helper puts the events together), instructions and input items, function tools and their outputs, text.format,
an answer cut at max_output_tokens, and refusals naming the field. Real routers on 127.0.0.1, the provider double as
the only stand-in."""
from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import InternalServerError

from .provider_double import Fault, refused_base_url
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, openai_client, post, router_config, running_router

WEATHER = {"type": "function", "name": "get_weather", "description": "the weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}



@pytest.fixture(scope="module")
def router(tmp_path_factory, double):
    with running_router(router_config(double.base_url), UNUSED_CLASSIFIER, tmp_path_factory.mktemp("responses"),
                        "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture()
def client(router, double):
    double.reset()
    return openai_client(router)


def test_a_response_answers_with_the_sdks_output_text(client, double):
    raw = client.responses.with_raw_response.create(model="tierwise/cheapest", input="hi there",
                                                    instructions="Be brief.", temperature=0.5, metadata={"a": "b"})
    response = raw.parse()
    assert response.output_text == "answer from t1-a: 2 words" and response.status == "completed"
    assert response.model == "t1-a" and response.object == "response" and response.id.startswith("resp_")
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens > 0
    assert (response.instructions, response.temperature, response.metadata) == ("Be brief.", 0.5, {"a": "b"})
    assert raw.headers["x-tierwise-tier"] == "1" and raw.headers["x-request-id"]
    [sent] = [r.body for r in double.requests_for("t1-a")]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
    assert sent["temperature"] == 0.5


def test_what_an_agent_framework_sends_beside_the_input_is_accepted(client, double):
    """Settings for outputs the router never produces (encrypted reasoning), reasoning effort, truncation, caching
    and identity fields do not refuse a request; none of them reaches the provider."""
    response = client.responses.create(
        model="tierwise/cheapest", input="hi", store=False, include=["reasoning.encrypted_content"],
        reasoning={"effort": "low"}, truncation="disabled", prompt_cache_key="k", safety_identifier="u1",
        user="u1", service_tier="auto")
    assert response.output_text == "answer from t1-a: 1 words"
    sent = double.requests_for("t1-a")[0].body
    assert not set(sent) & {"include", "reasoning", "truncation", "prompt_cache_key", "safety_identifier", "user",
                            "service_tier", "store"}


def test_log_probabilities_come_with_the_text_when_included(client, double):
    double.set_alternatives("t1-a", {" from": -0.1, " to": -2.5})
    whole = client.responses.create(model="tierwise/cheapest", input="hi", include=["message.output_text.logprobs"],
                                    top_logprobs=1)
    [part] = whole.output[0].content
    assert "".join(t.token for t in part.logprobs) == part.text == whole.output_text
    assert [(a.token, a.logprob) for t in part.logprobs if t.token == " from" for a in t.top_logprobs] == [
        (" from", -0.1)]
    with client.responses.stream(model="tierwise/cheapest", input="hi",
                                 include=["message.output_text.logprobs"]) as stream:
        done = [e for e in stream if e.type == "response.output_text.done"]
        final = stream.get_final_response()
    assert "".join(t.token for t in done[0].logprobs) == final.output_text
    assert (double.requests_for("t1-a")[0].body["logprobs"], double.requests_for("t1-a")[0].body["top_logprobs"]) == (
        True, 1)
    plain = client.responses.create(model="tierwise/cheapest", input="hi")
    assert plain.output[0].content[0].logprobs == [] and "logprobs" not in double.requests_for("t1-a")[-1].body


def test_a_streamed_response_is_put_together_by_the_sdks_helper(client):
    with client.responses.stream(model="tierwise/cheapest", input="tell me three things") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "answer from t1-a: 4 words"
    assert final.status == "completed" and final.usage.output_tokens > 0


def test_raw_stream_events_are_numbered_and_end_with_completed(client):
    events = list(client.responses.create(model="tierwise/cheapest", input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "answer from t1-a: 1 words"


def test_a_stream_cut_by_its_provider_ends_with_an_error_event(client, double):
    double.script("t1-a", Fault.disconnect_mid_stream(after_chunks=2))
    events = list(client.responses.create(model="tierwise/cheapest", input="hi there", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "answer from "
    last = events[-1]
    assert (last.type, last.code) == ("error", "stream_interrupted") and "stream interrupted" in last.message
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_request_no_provider_answers_is_a_503_before_any_event(tmp_path):
    """Its own router: the failures open breakers that the other tests' router must not inherit."""
    with running_router(router_config(refused_base_url()), UNUSED_CLASSIFIER, tmp_path, "--http-listen",
                        "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        with pytest.raises(InternalServerError) as refused:
            openai_client(router).responses.create(model="tierwise/cheapest", input="hi", stream=True)
    assert refused.value.status_code == 503 and refused.value.body["code"] == "no_provider_available"


def test_function_calls_and_their_outputs_round_trip(client, double):
    first = client.responses.create(model="tierwise/cheapest", input="What is the weather in Paris?",
                                    tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"words": 6})
    assert first.output_text == ""
    sent = double.requests_for("t1-a")[0].body
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    result = {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, clear"}
    second = client.responses.create(model="tierwise/cheapest", tools=[WEATHER], input=[
        {"role": "user", "content": "What is the weather in Paris?"}, call.model_dump(exclude_none=True), result])
    assert second.output_text == "answer from t1-a: 3 words"
    assert double.requests_for("t1-a")[1].body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function", "function": {
            "name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "content": "18 degrees, clear", "tool_call_id": call.call_id}]


def test_a_tool_sent_with_the_sdks_nulls_reaches_the_provider_without_them(client, double):
    """The SDK's FunctionToolParam holds `parameters` and `strict` as required but nullable."""
    response = client.responses.create(model="tierwise/cheapest", input="hi", tools=[
        {"type": "function", "name": "ping", "parameters": None, "strict": None}])
    assert response.status == "completed"
    assert double.requests_for("t1-a")[0].body["tools"] == [{"type": "function", "function": {"name": "ping"}}]


def test_an_unknown_model_is_a_404(router):
    status, _, reply = post(http_address(router), json.dumps({"model": "gpt-4o", "input": "hi"}).encode(),
                            path="/v1/responses")
    assert status == 404 and (reply["error"]["param"], reply["error"]["code"]) == ("model", "model_not_found")


def test_streamed_function_calls_come_back_whole(client):
    with client.responses.stream(model="tierwise/cheapest", input="weather in Oslo?", tools=[WEATHER],
                                 tool_choice="required") as stream:
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"words": 3}


def test_text_format_and_an_answer_cut_at_max_output_tokens(client, double):
    schema = {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}
    response = client.responses.create(model="tierwise/cheapest", input="hi", max_output_tokens=2,
                                       text={"format": schema})
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    sent = double.requests_for("t1-a")[0].body
    assert sent["max_tokens"] == 2
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object"}, "strict": True}}


@pytest.mark.parametrize("body, param", [
    ({"model": "tierwise"}, "input"),
    ({"model": "tierwise", "input": 5}, "input"),
    ({"model": "tierwise", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "tierwise", "input": "hi", "top_logprobs": 2}, "top_logprobs"),
    ({"model": "tierwise", "input": "hi", "include": "reasoning.encrypted_content"}, "include"),
    ({"model": "tierwise", "input": "hi", "conversation": "conv_1"}, "conversation"),
    ({"model": "tierwise", "input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
    ({"model": "tierwise", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"model": "tierwise", "input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
    ({"model": "tierwise", "input": [{"type": "message", "role": {"user": 1}, "content": "x"}]}, "input[0].role"),
    ({"model": "tierwise", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0]"),
    ({"model": "tierwise", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "file:///etc/passwd"}]}]}, "input[0].content[0].image_url"),
    ({"model": "tierwise", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"model": "tierwise", "input": "hi", "tools": [{"type": "function", "name": "a b"}]}, "tools[0].name"),
    ({"model": "tierwise", "input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format.name"),
    ({"model": "tierwise", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "tierwise", "input": "hi", "temperature": 3}, "temperature"),
    ({"model": "tierwise", "input": "hi", "metadata": "x"}, "metadata"),
    ({"model": "tierwise", "input": "hi", "stream": 1.0}, "stream"),
    # Checked by the core on the chat messages the request becomes, named as this request spells them.
    ({"model": "tierwise", "instructions": "Be brief.", "input": [{"role": "user", "content": " "}]},
     "input[0].content"),
    ({"model": "tierwise", "input": []}, "input"),
    ({"model": "tierwise", "input": "hi", "text": {"format": {"type": "weird"}}}, "text.format"),
    ({"model": "tierwise", "input": "hi", "tools": [{"type": "function", "name": "f"},
                                                   {"type": "function", "name": "f"}]}, "tools[1].name"),
    ({"model": "tierwise", "input": "hi", "tools": [{"type": "function", "name": "f"}],
      "tool_choice": {"type": "function", "name": "g"}}, "tool_choice.name"),
    ({"model": "tierwise", "input": "hi", "tools": [{"type": "function", "name": "f"}],
      "tool_choice": {"type": "function", "name": ["f"]}}, "tool_choice"),
    ({"model": "tierwise", "input": "hi", "metadata": {"k": 5}}, "metadata"),
])
def test_bad_requests_are_400s_naming_the_field(router, body, param):
    status, _, reply = post(http_address(router), json.dumps(body).encode(), path="/v1/responses")
    assert status == 400, reply
    assert reply["error"]["param"] == param, reply


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
PART = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "input_file"]) | JSON,
    "text": st.text(max_size=20) | JSON, "image_url": st.sampled_from(["https://x/a.png", "ftp://x"]) | JSON,
    "detail": st.sampled_from(["low", "high", "auto", "ultra"]) | JSON})
ITEM = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]) | JSON,
    "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | JSON,
    "content": st.text(max_size=20) | st.lists(PART, max_size=3) | JSON,
    "call_id": st.text(max_size=4) | JSON, "name": st.text(max_size=4) | JSON, "arguments": JSON,
    "output": st.text(max_size=8) | st.lists(PART, max_size=2) | JSON})
BODIES = st.fixed_dictionaries({"model": st.sampled_from(["tierwise", "tierwise/cheapest", "x"]) | JSON}, optional={
    "input": st.text(max_size=20) | st.lists(ITEM, max_size=4) | JSON, "instructions": JSON, "stream": JSON,
    "max_output_tokens": JSON, "temperature": JSON, "top_p": JSON, "parallel_tool_calls": JSON, "metadata": JSON,
    "tools": st.lists(st.fixed_dictionaries({}, optional={"type": st.just("function") | JSON,
                                                           "name": st.sampled_from(["f", "g h"]) | JSON,
                                                           "parameters": JSON}), max_size=2) | JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | st.fixed_dictionaries(
        {"type": st.just("function") | JSON}, optional={"name": st.just("f") | JSON}) | JSON,
    "text": st.fixed_dictionaries({}, optional={"format": JSON | st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"])},
        optional={"name": JSON, "schema": JSON})}) | JSON,
    "previous_response_id": JSON, "store": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_fuzzed_bodies_never_get_a_500(router, body):
    conn = http.client.HTTPConnection(http_address(router), timeout=20)
    try:
        conn.request("POST", "/v1/responses", json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        status, data = response.status, response.read()  # a stream's events, or one JSON object
    finally:
        conn.close()
    assert status in (200, 400, 404), (status, data)  # 404: a model the router does not serve
    if status != 200:
        assert set(json.loads(data)["error"]) == {"message", "type", "param", "code"}
