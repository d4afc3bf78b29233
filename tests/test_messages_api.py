"""POST /v1/messages, Anthropic's Messages API, through Anthropic's official SDK: whole and streamed (the SDK's own
stream helper puts the events together), system prompts, tool_use and tool_result blocks, images, the key as
x-api-key, and refusals in Anthropic's error shape naming the field. Real routers on 127.0.0.1, the provider double
as the only stand-in."""
from __future__ import annotations

import base64
import http.client
import json
import time

import anthropic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_service.http.messages_request import parse

from .provider_double import Fault, refused_base_url
from .servers import (KEY_ENV, UNUSED_CLASSIFIER, capability_config, http_address, part_of_a_body, post,
                      router_config, running_router)

MODEL = "tierwise/cheapest"
WEATHER = {"name": "get_weather", "description": "the weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
KEY = "tw-messages-key"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def client_for(router, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://{http_address(router)}", api_key=key, max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def router(tmp_path_factory, double):
    doc = capability_config(double.base_url, "vision", {"t1-a"})
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("messages"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture()
def client(router, double):
    double.reset()
    return client_for(router)


def test_a_message_answers_in_anthropics_shape(client, double):
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, system="Be brief.", metadata={"user_id": "u1"}, service_tier="auto",
        extra_body={"temperature": 0.5}, messages=[{"role": "user", "content": "hi there"}])
    message = raw.parse()
    assert [(b.type, b.text) for b in message.content] == [("text", "answer from t1-a: 2 words")]
    assert (message.role, message.stop_reason, message.model) == ("assistant", "end_turn", "t1-a")
    assert message.id.startswith("msg_") and message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-tierwise-tier"] == "1" and raw.headers["x-request-id"]
    assert message._request_id == raw.headers["x-request-id"], "the Anthropic SDK reads the id as request-id"
    [sent] = [r.body for r in double.requests_for("t1-a")]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
    assert (sent["max_tokens"], sent["temperature"]) == (100, 0.5) and "metadata" not in sent


def test_a_streamed_message_is_put_together_by_the_sdks_helper(client):
    with client.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "one two"}]) \
            as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "answer from t1-a: 2 words" == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_raw_stream_events_come_in_anthropics_order(client):
    events = list(client.messages.create(model=MODEL, max_tokens=100, stream=True,
                                         messages=[{"role": "user", "content": "hi"}]))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert events[-2].delta.stop_reason == "end_turn"


def test_tool_arguments_nested_past_the_parser_are_kept_whole(client, double):
    deep = "[" * 100_000
    call = {"id": "call_deep", "type": "function", "function": {"name": "get_weather", "arguments": deep}}
    double.script("t1-a", Fault.odd_body(json.dumps({
        "id": "chatcmpl-deep", "object": "chat.completion", "created": 0, "model": "t1-a",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]})))
    reply = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER],
                                   messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    [use] = reply.content
    assert (use.type, use.input) == ("tool_use", {"arguments": deep}), "a model's mistake is kept, not a 500"


def test_tool_use_and_its_result_round_trip(client, double):
    first = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER],
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"words": 6})
    sent = double.requests_for("t1-a")[0].body
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "the weather in a city"}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    second = client.messages.create(model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"},
                                     {"type": "text", "text": "and tomorrow?"}]}])
    assert second.content[0].text == "answer from t1-a: 2 words" and second.stop_reason == "end_turn"
    assert double.requests_for("t1-a")[1].body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"words": 6})}}]},
        {"role": "tool", "content": "18 degrees", "tool_call_id": call.id},
        {"role": "user", "content": "and tomorrow?"}]


def test_streamed_tool_use_comes_back_whole(client, double):
    with client.messages.stream(model=MODEL, max_tokens=100, tools=[WEATHER],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                messages=[{"role": "user", "content": "weather in Oslo?"}]) as stream:
        final = stream.get_final_message()
    [call] = final.content
    assert call.type == "tool_use" and call.input == {"words": 3} and final.stop_reason == "tool_use"
    sent = double.requests_for("t1-a")[0].body
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("required", False)


def test_an_answer_cut_at_max_tokens_stop_sequences_and_an_output_schema(client, double):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    message = client.messages.create(model=MODEL, max_tokens=2, stop_sequences=["END"], messages=[
        {"role": "user", "content": "hi"}], output_config={"effort": "low", "format": {"type": "json_schema",
                                                                                         "schema": schema}})
    assert message.stop_reason == "max_tokens"
    sent = double.requests_for("t1-a")[0].body
    assert (sent["max_tokens"], sent["stop"]) == (2, ["END"])
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert "output_config" not in sent and "effort" not in json.dumps(sent)


def test_an_image_block_reaches_a_provider_that_reads_images(client, double):
    client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "what is this?"}]}])
    [sent] = [r.body for r in double.requests_for("t1-a")]
    assert sent["messages"][0]["content"][1] == {"type": "image_url",
                                                 "image_url": {"url": f"data:image/png;base64,{PNG}"}}


def test_a_stream_cut_by_its_provider_ends_with_an_error_event(client, double):
    double.script("t1-a", Fault.disconnect_mid_stream(after_chunks=2))
    texts = []
    with pytest.raises(anthropic.APIStatusError) as err:
        for event in client.messages.create(model=MODEL, max_tokens=100, stream=True,
                                            messages=[{"role": "user", "content": "hi there"}]):
            if event.type == "content_block_delta":
                texts.append(event.delta.text)
    assert "".join(texts) == "answer from " and "stream interrupted" in str(err.value)


def test_a_request_no_provider_answers_is_a_503_in_anthropics_shape(tmp_path):
    """Its own router: the failures open breakers that the other tests' router must not inherit."""
    with running_router(router_config(refused_base_url()), UNUSED_CLASSIFIER, tmp_path, "--http-listen",
                        "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        with pytest.raises(anthropic.InternalServerError) as refused:
            client_for(router).messages.create(model=MODEL, max_tokens=10, stream=True,
                                               messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503 and refused.value.body["error"]["type"] == "api_error"


def test_the_key_comes_as_x_api_key(tmp_path, double):
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} id=main\n")
    with running_router(router_config(double.base_url), UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0",
                        "--api-keys-file", str(keys), env={KEY_ENV: "k"}) as router:
        ask = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        assert client_for(router, KEY).messages.create(**ask).content[0].text
        with pytest.raises(anthropic.AuthenticationError) as refused:
            client_for(router, "tw-wrong").messages.create(**ask)
        bearer = post(http_address(router), json.dumps(ask).encode(), {"authorization": f"Bearer {KEY}"},
                      path="/v1/messages")
        conn = http.client.HTTPConnection(http_address(router), timeout=20)
        try:
            conn.request("GET", "/v1/models", headers={"x-api-key": KEY})
            listed = conn.getresponse().status
        finally:
            conn.close()
        counted = client_for(router, KEY).messages.count_tokens(model=MODEL, messages=ask["messages"])
        with pytest.raises(anthropic.AuthenticationError):
            client_for(router, "tw-wrong").messages.count_tokens(model=MODEL, messages=ask["messages"])
    assert refused.value.status_code == 401 and refused.value.body["error"]["type"] == "authentication_error"
    assert bearer[0] == 200, "a bearer token is taken too"
    assert listed == 200, "the models list takes x-api-key too"
    assert counted.input_tokens > 0, "counting tokens takes the key"


def test_anthropics_sdk_reads_the_models_list(client):
    page = client.models.list()
    assert [m.id for m in page.data][:2] == ["tierwise", "tierwise/cascade"] and not page.has_more
    assert {(m.type, m.display_name == m.id, m.created_at.year > 2000) for m in page.data} == {("model", True, True)}
    assert page.first_id == "tierwise" and page.last_id == page.data[-1].id
    assert client.models.retrieve("tierwise/heuristic").type == "model"


def test_count_tokens_estimates_the_prompt_without_asking_a_provider(client, double):
    """About four characters a token and four for each message's framing: "hi there" is 2 + 4, "Be brief." 3 + 4;
    the tools offered count too. No provider is asked and nothing is charged."""
    user = [{"role": "user", "content": "hi there"}]
    assert client.messages.count_tokens(model=MODEL, messages=user).input_tokens == 6
    with_system = client.messages.count_tokens(model=MODEL, messages=user, system="Be brief.").input_tokens
    with_tools = client.messages.count_tokens(model=MODEL, messages=user, system="Be brief.", tools=[WEATHER],
                                              tool_choice={"type": "auto"}).input_tokens
    assert with_system == 13 and with_tools > with_system
    longer = client.messages.count_tokens(model=MODEL, messages=[*user, {"role": "assistant", "content": "x" * 400},
                                                                 {"role": "user", "content": "and?"}])
    assert longer.input_tokens > 100 and not double.requests
    chinese = "请用三句话解释一下量子计算机的基本原理和它的主要用途。"  # about a token a character, not four a token
    counted = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": chinese}])
    assert counted.input_tokens >= len(chinese) / 1.5 and not double.requests


@pytest.mark.parametrize("body, field", [
    ({"model": MODEL}, "messages: missing"),
    ({"model": MODEL, "messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_k": 3}, "top_k"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "quality_target": 2}, "quality_target"),
    ({"model": MODEL, "system": "Be brief.", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant",
      "content": "hello"}, {"role": "user", "content": " "}]}, "messages[2].content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "a b", "input_schema": {}}]},
     "tools[0].name"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "f", "input_schema": {}}],
      "tool_choice": {"type": "tool", "name": ["f"]}}, "tool_choice"),
])
def test_count_tokens_refuses_what_a_message_would_be_refused_for(router, body, field):
    status, _, reply = post(http_address(router), json.dumps(body).encode(), path="/v1/messages/count_tokens")
    assert status == 400 and reply["type"] == "error" and reply["error"]["type"] == "invalid_request_error"
    assert reply["error"]["message"].startswith(field)


def test_a_client_gone_mid_body_is_no_error_of_the_routers(router):
    """count_tokens reads the body as the other endpoints do: a client that leaves while sending it is not logged
    as an unexpected error, and the router serves on."""
    with part_of_a_body(http_address(router), "/v1/messages/count_tokens"):
        pass  # and gone
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert post(http_address(router), json.dumps(body).encode(), path="/v1/messages/count_tokens")[0] == 200
    time.sleep(0.2)
    assert not [line for line in router.output if "unexpected error" in line]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_an_unknown_model_is_a_404_not_found_error(router, path):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": USER}
    status, _, reply = post(http_address(router), json.dumps(body).encode(), path=path)
    assert status == 404 and reply["error"]["type"] == "not_found_error", reply
    assert reply["error"]["message"].startswith("model: unknown model")


def test_thinking_given_back_is_left_out_and_system_blocks_are_joined():
    request = parse(json.dumps({"model": "tierwise", "max_tokens": 5, "system": [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Be kind."}],
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                                       {"type": "text", "text": "hello"}]},
                     {"role": "user", "content": [{"type": "image", "source": {"type": "url",
                                                                                "url": "https://x/a.png"}}]}]}).encode())
    assert [(m.role, m.content) for m in request.request.messages] == [
        ("system", "Be brief.\nBe kind."), ("user", "hi"), ("assistant", "hello"), ("user", "")]
    assert request.request.messages[-1].images[0].url == "https://x/a.png" and not request.stream


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, field", [
    ({"model": "tierwise", "messages": USER}, "max_tokens"),
    ({"model": "tierwise", "max_tokens": 0, "messages": USER}, "max_tokens"),
    ({"model": "tierwise", "max_tokens": 10}, "messages"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "tools": [{"name": "f", "input_schema": {}}],
      "tool_choice": {"type": "tool", "name": ["f"]}}, "tool_choice"),
    ({"model": "tierwise", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"model": "tierwise", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}]}]}, "messages[0].content[0]"),
    ({"model": "tierwise", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "application/pdf", "data": "eA=="}}]}]},
     "messages[0].content[0].source"),
    ({"model": "tierwise", "max_tokens": 10, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}]}, "messages[0].content[0].input"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "top_k": 5}, "top_k"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "tools": [{"type": "web_search_20250305",
                                                                          "name": "web_search"}]}, "tools[0]"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "temperature": 3}, "temperature"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "system": [{"type": "image"}]}, "system[0]"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "output_config": {"format": {"type": "yaml"}}},
     "output_config.format"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "stream": 1}, "stream"),
    # Checked by the core on the chat messages the request becomes, named as this request spells them.
    ({"model": "tierwise", "max_tokens": 10, "system": "Be brief.", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": " "}]}, "messages[2].content"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "stop_sequences": [5]}, "stop_sequences"),
    ({"model": "tierwise", "max_tokens": 10, "messages": USER, "tools": [{"name": "a b", "input_schema": {}}]},
     "tools[0].name"),
])
def test_bad_requests_are_400s_naming_the_field(router, body, field):
    status, _, reply = post(http_address(router), json.dumps(body).encode(), path="/v1/messages")
    assert status == 400, reply
    assert reply["type"] == "error" and reply["error"]["type"] == "invalid_request_error", reply
    assert reply["error"]["message"].startswith(f"{field}: "), reply


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
BLOCK = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "document"]) | JSON,
    "text": st.text(max_size=20) | JSON, "id": st.text(max_size=4) | JSON, "name": st.text(max_size=4) | JSON,
    "input": st.dictionaries(st.text(max_size=4), JSON, max_size=2) | JSON, "tool_use_id": JSON,
    "content": st.text(max_size=8) | JSON,
    "source": st.fixed_dictionaries({}, optional={"type": st.sampled_from(["base64", "url"]) | JSON,
                                                  "media_type": st.sampled_from(["image/png", "text/plain"]) | JSON,
                                                  "data": JSON, "url": JSON}) | JSON})
MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system"]) | JSON,
                                              "content": st.text(max_size=20) | st.lists(BLOCK, max_size=3) | JSON})
BODIES = st.fixed_dictionaries({"model": st.sampled_from(["tierwise", MODEL, "x"]) | JSON}, optional={
    "messages": st.lists(MESSAGE, max_size=4) | JSON, "max_tokens": st.integers(-2, 50) | JSON, "system": JSON,
    "stream": JSON, "temperature": JSON, "top_p": JSON, "stop_sequences": JSON, "metadata": JSON,
    "tools": st.lists(st.fixed_dictionaries({}, optional={"type": st.just("custom") | JSON,
                                                           "name": st.sampled_from(["f", "g h"]) | JSON,
                                                           "input_schema": JSON}), max_size=2) | JSON,
    "tool_choice": st.fixed_dictionaries({}, optional={"type": st.sampled_from(["auto", "any", "tool", "none"]) | JSON,
                                                       "name": JSON, "disable_parallel_tool_use": JSON}) | JSON,
    "output_config": st.fixed_dictionaries({}, optional={"format": JSON, "effort": JSON}) | JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]))
def test_fuzzed_bodies_never_get_a_500(router, body, path):
    conn = http.client.HTTPConnection(http_address(router), timeout=20)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        status, data = response.status, response.read()  # a stream's events, or one JSON object
    finally:
        conn.close()
    assert status < 500 or status == 503, (status, data[:300])
