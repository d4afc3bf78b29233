"""The OpenAI-compatible HTTP API against a real router (HTTP beside gRPC on 127.0.0.1), with the real `openai` SDK
as the client, the real classifier where a strategy needs it, and the provider double as the only stand-in."""
from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import ssl
import threading
import time

import grpc
import openai
import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import APIError, OpenAI

from router_service.strategies import registered
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .certs import authority, issue, write_ca
from .exported_metrics import wait_until
from .otlp_receiver import OtlpReceiver, attributes
from .provider_double import Fault
from .servers import (KEY_ENV, UNUSED_CLASSIFIER, http_address, part_of_a_body, post, router_config,
                      running_router)

QUESTION = "What time does the store close?"
PROMPT = "Summarise the secret plan codenamed GREY OWL in two sentences."
PROVIDERS = ("t1-a", "t1-b", "t2-a", "t3-a")
KEY = "tw-http-7c1e5a9d3b2f4068"
RATED_KEY = "tw-http-rated-2d8f6a0c4e1b9375"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
BODY_TIMEOUT_S = 2.0


def sdk(address: str, key: str = "unused", **options) -> OpenAI:
    return OpenAI(base_url=f"http://{address}/v1", api_key=key, max_retries=0, timeout=20, **options)


def user(text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def api(tmp_path_factory, classifier, double):
    """A router on the real classifier, HTTP on an ephemeral port: yields its HTTP address."""
    doc = router_config(double.base_url, strategy="heuristic", http={"body_timeout_s": BODY_TIMEOUT_S})
    with running_router(doc, classifier.address, tmp_path_factory.mktemp("http"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield http_address(router), router


# ----------------------------------------------------------------------------------------------------- answers


def test_the_sdk_gets_an_answer_named_by_the_model_that_gave_it(api):
    reply = sdk(api[0]).chat.completions.create(model="tierwise", messages=user())
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model in PROVIDERS
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content.startswith(f"answer from {reply.model}:")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0


def test_headers_say_tier_strategy_cost_and_degraded(api):
    raw = sdk(api[0]).chat.completions.with_raw_response.create(model="tierwise", messages=user())
    reply = raw.parse()
    assert raw.headers["x-tierwise-strategy"] == "heuristic"
    assert raw.headers["x-tierwise-degraded"] == "false"
    assert raw.headers["x-tierwise-tier"] in ("1", "2", "3")
    assert raw.headers["x-tierwise-provider"] == reply.model
    assert float(raw.headers["x-tierwise-estimated-cost-usd"]) > 0
    assert float(raw.headers["x-tierwise-cost-usd"]) == reply.tierwise["cost_usd"] > 0


def test_tierwise_slash_strategy_picks_the_strategy(api):
    raw = sdk(api[0]).chat.completions.with_raw_response.create(model="tierwise/cheapest", messages=user())
    assert raw.headers["x-tierwise-strategy"] == "cheapest" and raw.headers["x-tierwise-tier"] == "1"
    assert raw.parse().model in ("t1-a", "t1-b")


@pytest.mark.parametrize("strategy", registered())
def test_every_listed_strategy_answers(api, strategy):
    raw = sdk(api[0]).chat.completions.with_raw_response.create(model=f"tierwise/{strategy}", messages=user())
    assert raw.status_code == 200 and raw.parse().choices[0].message.content.startswith("answer from ")
    assert raw.headers["x-tierwise-strategy"]


def test_models_lists_tierwise_and_every_strategy(api):
    client = sdk(api[0])
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tierwise"
    assert set(ids) == {"tierwise", *(f"tierwise/{name}" for name in registered())}
    assert client.models.retrieve("tierwise/heuristic").id == "tierwise/heuristic"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_stream_yields_content_chunks_then_usage_on_request(api):
    chunks = list(sdk(api[0]).chat.completions.create(model="tierwise", messages=user(), stream=True,
                                                      stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2, "streamed in pieces"
    model = chunks[-1].model
    assert text.startswith(f"answer from {model}:")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_a_stream_cut_by_its_provider_ends_with_an_error_the_sdk_raises(api, double):
    """After the first piece no other provider may finish the answer: the stream ends with OpenAI's error event."""
    double.reset()
    double.script("t1-a", Fault.disconnect_mid_stream(after_chunks=2))
    stream = sdk(api[0]).chat.completions.create(model="tierwise/cheapest", messages=user(), stream=True)
    pieces = []
    with pytest.raises(APIError, match="stream interrupted after 2 chunks"):
        for chunk in stream:
            pieces += [chunk.choices[0].delta.content or ""] if chunk.choices else []
    assert "".join(pieces) == "answer from "
    assert [r.model for r in double.requests] == ["t1-a"], "no fallback after text went out"


def test_stream_without_usage_ends_with_done_and_no_usage_chunk(api):
    conn = http.client.HTTPConnection(api[0], timeout=20)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "messages": user(),
                                                             "stream": True}), {"content-type": "application/json"})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    assert response.getheader("x-tierwise-tier") in ("1", "2", "3")
    events = [line[len("data: "):] for line in body.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


SAMPLING = {"top_p": 0.25, "stop": ["\n\n", "END"], "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -1.5,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}}


def test_generation_options_reach_the_provider_as_given(api, double):
    before = len(double.requests)
    reply = sdk(api[0]).chat.completions.create(
        model="tierwise/cheapest", messages=[{"role": "developer", "content": "Be brief."}, *user()],
        max_tokens=3, temperature=0.5, user="someone", **SAMPLING)
    sent = double.requests[before:][0].body
    assert sent["max_tokens"] == 3 and sent["temperature"] == 0.5
    assert {k: sent.get(k) for k in SAMPLING} == SAMPLING
    assert "user" not in sent, "what only describes the caller stays with the router"
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert reply.choices[0].finish_reason == "length", "cut at max_tokens, as the provider said"


def test_a_stream_takes_the_same_options_and_a_lone_stop_string(api, double):
    before = len(double.requests)
    chunks = list(sdk(api[0]).chat.completions.create(model="tierwise/cheapest", messages=user(), stream=True,
                                                      stop="END", seed=11, response_format={"type": "json_object"}))
    assert chunks
    sent = double.requests[before:][0].body
    assert sent["stream"] is True and (sent["stop"], sent["seed"]) == (["END"], 11)
    assert sent["response_format"] == {"type": "json_object"}


def test_what_is_refused_when_asked_for_is_accepted_when_off(api, double):
    before = len(double.requests)
    status, _, reply = post(api[0], json.dumps({"model": "tierwise/cheapest", "messages": user(), "logprobs": False,
                                                "top_logprobs": 0, "logit_bias": {}, "n": 1, "tools": []}).encode())
    assert status == 200, reply
    assert not set(double.requests[before:][0].body) & {"logprobs", "top_logprobs", "logit_bias", "n", "tools"}


def test_options_left_unset_are_not_sent(api, double):
    before = len(double.requests)
    sdk(api[0]).chat.completions.create(model="tierwise/cheapest", messages=user())
    sent = double.requests[before:][0].body
    assert not set(sent) & {*SAMPLING, "temperature", "max_tokens"}, sent


def test_a_conversation_with_text_parts_is_answered(api):
    messages = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    assert sdk(api[0]).chat.completions.create(model="tierwise", messages=messages).choices[0].message.content


def test_grpc_still_serves_beside_http(api):
    router = api[1]
    with grpc.insecure_channel(router.address) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).Complete(
            pb.CompleteRequest(messages=[pb.Message(role="user", content=QUESTION)]), timeout=20)
    assert reply.content.startswith(f"answer from {reply.model}")


# ------------------------------------------------------------------------------------------------------ errors


def test_a_request_without_messages_is_a_400_naming_messages(api):
    with pytest.raises(openai.BadRequestError) as err:
        sdk(api[0]).chat.completions.create(model="tierwise", messages=openai.omit)
    assert err.value.status_code == 400
    error = err.value.body if "message" in err.value.body else err.value.body["error"]
    assert error["param"] == "messages" and "messages" in error["message"]
    status, _, body = post(api[0], b'{"model": "tierwise"}')
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == "messages"


@pytest.mark.parametrize("body, param", [
    ({"messages": user()}, "model"),
    ({"model": "tierwise", "messages": []}, "messages"),
    ({"model": "tierwise", "messages": "hi"}, "messages"),
    ({"model": "tierwise", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "tierwise", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"model": "tierwise", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0]"),
    ({"model": "tierwise", "messages": user(), "temperature": 3}, "temperature"),
    ({"model": "tierwise", "messages": user(), "max_tokens": -1}, "max_tokens"),
    ({"model": "tierwise", "messages": user(), "stream": "yes"}, "stream"),
    ({"model": "tierwise", "messages": user(), "n": 2}, "n"),
    ({"model": "tierwise", "messages": user(), "modalities": ["text", "audio"]}, "modalities"),
    ({"model": "tierwise", "messages": user(), "modalities": "text"}, "modalities"),
    ({"model": "tierwise", "messages": user(), "modalities": [["text"]]}, "modalities"),
    ({"model": "tierwise", "messages": user(), "tools": [{"type": "function"}]}, "tools[0]"),
    ({"model": "tierwise", "messages": user(), "top_logprobs": 3}, "top_logprobs"),
    ({"model": "tierwise", "messages": user(), "logit_bias": {"50256": -100}}, "logit_bias"),
    ({"model": "tierwise", "messages": user(), "web_search_options": {}}, "web_search_options"),
    ({"model": "tierwise", "messages": user(), "top_p": 1.5}, "top_p"),
    ({"model": "tierwise", "messages": user(), "top_p": "high"}, "top_p"),
    ({"model": "tierwise", "messages": user(), "top_p": 10**400}, "top_p"),
    ({"model": "tierwise", "messages": user(), "temperature": -10**400}, "temperature"),
    ({"model": "tierwise", "messages": user(), "presence_penalty": 2.5}, "presence_penalty"),
    ({"model": "tierwise", "messages": user(), "frequency_penalty": True}, "frequency_penalty"),
    ({"model": "tierwise", "messages": user(), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "tierwise", "messages": user(), "stop": 5}, "stop"),
    ({"model": "tierwise", "messages": user(), "seed": 1.5}, "seed"),
    ({"model": "tierwise", "messages": user(), "seed": 2**64}, "seed"),
    ({"model": "tierwise", "messages": user(), "response_format": "json"}, "response_format"),
    ({"model": "tierwise", "messages": user(), "response_format": {"type": "yaml"}}, "response_format"),
    ({"model": "tierwise", "messages": user(), "response_format": {"type": "json_schema"}},
     "response_format.json_schema"),
    ({"model": "tierwise", "messages": user("x" * 300_000)}, "messages[0].content"),
    ({"model": "tierwise", "messages": user(), "stream": 1}, "stream"),
    ({"model": "tierwise", "messages": user(), "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"model": "tierwise", "messages": user(), "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "tierwise", "messages": user(), "stream": False, "stream_options": {}}, "stream_options"),
    ({"model": "tierwise", "messages": user(), "n": True}, "n"),
    ({"model": "tierwise", "messages": user(), "n": 1.0}, "n"),
    ({"model": "tierwise", "messages": user(), "head": 0}, "head"),
    ({"model": "tierwise", "messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}, *user()]}, "messages[0].content"),
    ({"model": "tierwise", "messages": user(), "max_completion_tokens": 5, "max_tokens": -7}, "max_tokens"),
])
def test_bad_requests_are_400s_naming_the_field(api, body, param):
    status, _, reply = post(api[0], json.dumps(body).encode())
    assert status == 400, reply
    assert reply["error"]["param"] == param and reply["error"]["message"].startswith(param), reply


def test_bad_json_a_huge_body_and_unknown_paths_get_openai_errors(api):
    status, _, reply = post(api[0], b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"]["message"] and reply["error"]["param"] is None
    status, _, reply = post(api[0], b"[" * 5000 + b"]" * 5000)
    assert status == 400 and "nested too deeply" in reply["error"]["message"]
    conn = http.client.HTTPConnection(api[0], timeout=20)
    for method, path, code in (("GET", "/v2/anything", 404), ("GET", "/v1/chat/completions", 405)):
        conn.request(method, path)
        response = conn.getresponse()
        assert response.status == code and json.loads(response.read())["error"]["message"]
    conn.close()


def test_malformed_requests_get_400s_and_a_counted_line_not_one_each(api):
    """Any caller can send them, before a key is checked: the log counts them at most every 10 s."""
    address, router = api
    host, port = address.rsplit(":", 1)
    start = len(router.output)
    for i in range(40):
        with socket.create_connection((host, int(port)), timeout=20) as conn:
            conn.sendall(b"G\x01T / HTTP/1.1\r\n\r\n" if i % 2 else
                         b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 400")
    lines = "".join(list(router.output)[start:])
    assert "Invalid HTTP request received" not in lines.replace("the latest: Invalid HTTP", "")
    assert lines.count("malformed or unsupported") <= 2, lines


def test_a_compressed_body_is_a_400_naming_its_encoding(api):
    body = json.dumps({"model": "tierwise", "messages": user()}).encode()
    status, _, reply = post(api[0], gzip.compress(body), {"content-encoding": "gzip"})
    assert status == 400 and reply["error"]["param"] == "content-encoding" and "gzip" in reply["error"]["message"]
    status, _, reply = post(api[0], gzip.compress(body), {"content-encoding": "gzip"}, path="/v1/messages")
    assert status == 400 and reply["error"]["message"].startswith("content-encoding: "), reply  # Anthropic's shape
    assert post(api[0], body, {"content-encoding": "identity"})[0] == 200


def test_a_bad_timeout_header_is_a_400(api):
    status, _, reply = post(api[0], json.dumps({"model": "tierwise", "messages": user()}).encode(),
                            {"x-tierwise-timeout-ms": "soon"})
    assert status == 400 and reply["error"]["param"] == "x-tierwise-timeout-ms"


def test_instructions_alone_are_answered_as_openai_answers_them(api, double):
    """A conversation of system (or developer) messages only is a request OpenAI serves; the router decides on
    the last of them. One with neither a user nor a system message has nothing to decide on."""
    double.reset()
    reply = sdk(api[0]).chat.completions.create(model="tierwise", messages=[
        {"role": "developer", "content": "Write a haiku about autumn."}])
    assert reply.choices[0].message.content
    [sent] = [r.body for r in double.requests]
    assert sent["messages"] == [{"role": "system", "content": "Write a haiku about autumn."}]
    status, _, body = post(api[0], json.dumps({"model": "tierwise", "messages": [
        {"role": "assistant", "content": "Hello."}]}).encode())
    assert status == 400 and body["error"]["param"] == "messages", body


def test_a_path_with_a_trailing_slash_is_a_404_in_openais_shape_not_a_redirect(api):
    status, _, reply = post(api[0], json.dumps({"model": "tierwise", "messages": user()}).encode(),
                            path="/v1/chat/completions/")
    assert status == 404 and reply["error"]["code"] == "not_found"


def test_an_unknown_model_is_a_404_the_sdk_raises_as_not_found(api, double):
    before = len(double.requests)
    for model in ("gpt-4o-2024-08-06", "tierwise/nonesuch"):
        with pytest.raises(openai.NotFoundError) as err:
            sdk(api[0]).chat.completions.create(model=model, messages=user())
        assert (err.value.body["code"], err.value.body["param"]) == ("model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        sdk(api[0]).models.retrieve("gpt-4o-2024-08-06")
    assert len(double.requests) == before


def test_a_body_that_stops_arriving_is_a_408_and_the_router_serves_on(api):
    with part_of_a_body(api[0], "/v1/chat/completions") as conn:
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := conn.recv(4096)):
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT_S - 0.2 <= waited < BODY_TIMEOUT_S + 10
    assert sdk(api[0]).chat.completions.create(model="tierwise", messages=user()).choices[0].message.content


def closed_after(conn: socket.socket, drip: bytes = b"") -> float:
    """Seconds until the router closes `conn`, sending `drip` a byte at a time every 0.2 s meanwhile."""
    started = time.monotonic()
    conn.settimeout(0.2)
    while time.monotonic() - started < BODY_TIMEOUT_S + 10:
        try:
            if drip:
                conn.sendall(drip[:1])
                drip = drip[1:]
            if conn.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionError:  # reset, or a write after the router closed its end
            return time.monotonic() - started
    raise AssertionError("the router held the connection open")


def test_a_connection_whose_headers_never_come_whole_is_closed(api):
    """No key is checked before a request's headers: an open connection is otherwise free to hold."""
    host, port = api[0].rsplit(":", 1)
    headers = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" * 5
    with socket.create_connection((host, int(port)), timeout=5) as idle:
        assert BODY_TIMEOUT_S - 0.2 <= closed_after(idle) < BODY_TIMEOUT_S + 5, "nothing sent"
    with socket.create_connection((host, int(port)), timeout=5) as slow:
        assert closed_after(slow, drip=headers) < BODY_TIMEOUT_S + 5, "a byte every 0.2 s does not keep it open"
    assert sdk(api[0]).chat.completions.create(model="tierwise", messages=user()).choices[0].message.content


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELDS = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["tierwise", "tierwise/heuristic", "tierwise/", "x"]) | JSON,
    "messages": st.lists(st.fixed_dictionaries({}, optional={
        "role": st.sampled_from(["user", "x", "assistant", "tool"]) | JSON, "content": JSON,
        "tool_call_id": st.text(max_size=4) | JSON,
        "tool_calls": st.lists(st.fixed_dictionaries({}, optional={
            "id": st.text(max_size=4) | JSON, "type": st.just("function") | JSON,
            "function": st.fixed_dictionaries({}, optional={"name": st.text(max_size=4) | JSON,
                                                            "arguments": JSON})}), max_size=2) | JSON}),
        max_size=3) | JSON,
    "stream": JSON, "stream_options": JSON, "max_tokens": JSON, "max_completion_tokens": JSON,
    "temperature": JSON, "n": JSON, "head": JSON, "top_p": JSON, "stop": JSON, "seed": JSON,
    "presence_penalty": JSON, "frequency_penalty": JSON, "response_format": JSON,
    "tools": st.lists(st.fixed_dictionaries({}, optional={
        "type": st.just("function") | JSON,
        "function": st.fixed_dictionaries({}, optional={"name": st.sampled_from(["f", "g h"]) | JSON,
                                                        "parameters": JSON})}), max_size=3) | JSON,
    "tool_choice": st.sampled_from(["auto", "none", "required", "any"]) | st.fixed_dictionaries(
        {"type": st.just("function") | JSON}, optional={"function": st.fixed_dictionaries(
            {}, optional={"name": st.just("f") | JSON}) | JSON}) | JSON, "parallel_tool_calls": JSON,
    "logprobs": JSON, "top_logprobs": st.integers(-1, 30) | JSON,
    "modalities": st.lists(st.sampled_from(["text", "audio"]) | JSON, max_size=2) | JSON})
BODIES = (st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
          | FIELDS.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_fuzzed_bodies_never_get_a_500(api, body):
    status, _, reply = post(api[0], body)
    assert status in (200, 400, 404), (status, reply)  # 404: a model the router does not serve
    if status != 200:
        assert set(reply["error"]) == {"message", "type", "param", "code"}


# ------------------------------------------------------------------------------ provider failures and limits


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, double):
    """A router admitting one call at a time and 2 KiB of messages, heuristic only (no classifier), HTTP on an
    ephemeral port."""
    doc = router_config(double.base_url, strategy="heuristic", limits={"max_in_flight": 1, "max_total_bytes": 2048,
                                                                         "max_message_bytes": 1024})
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("fragile"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield http_address(router)
        double.reset()


def served_again(address: str) -> None:
    """Waits (bounded) until the router answers again from its first provider: breakers close a second after the
    failures stop, and a fallback's answer alone would leave the next test with t1-a still skipped."""
    body = json.dumps({"model": "tierwise/cheapest", "messages": user()}).encode()
    for _ in range(50):
        status, _, reply = post(address, body)
        if status == 200 and reply["model"] == "t1-a":
            return
        threading.Event().wait(0.1)
    raise AssertionError("the router did not answer again within 5 s")


def test_providers_that_all_said_when_to_come_back_give_a_503_with_retry_after(fragile, double):
    for model in PROVIDERS:
        double.set_persistent(model, Fault.rate_limited(11 + PROVIDERS.index(model)))
    try:
        status, headers, reply = post(fragile, json.dumps({"model": "tierwise", "messages": user()}).encode())
        assert status == 503 and reply["error"]["code"] == "no_provider_available"
        assert headers.get("retry-after") == "11" and "x-should-retry" not in headers, headers
    finally:
        double.reset()
        served_again(fragile)


@pytest.mark.parametrize("when, said", [("inf", None), ("1e306", "86400")])
def test_providers_that_said_to_come_back_past_any_wait_give_a_503_that_a_client_can_read(fragile, double, when,
                                                                                           said):
    for model in PROVIDERS:
        double.set_persistent(model, Fault.rate_limited(when))
    try:
        status, headers, reply = post(fragile, json.dumps({"model": "tierwise", "messages": user()}).encode())
        assert status == 503 and reply["error"]["code"] == "no_provider_available", reply
        assert headers.get("retry-after") == said, "no wait, or a day's at most"
    finally:
        double.reset()
        served_again(fragile)


def test_no_provider_available_is_a_503(fragile, double):
    for model in PROVIDERS:
        double.set_persistent(model, Fault.http_error(500))
    try:
        with pytest.raises(openai.InternalServerError) as err:
            sdk(fragile).chat.completions.create(model="tierwise", messages=user())
        assert err.value.status_code == 503
        status, headers, reply = post(fragile, json.dumps({"model": "tierwise", "messages": user(),
                                                           "stream": True}).encode())
        assert status == 503 and reply["error"]["code"] == "no_provider_available", "a stream that never began"
        assert headers.get("x-should-retry") == "false", "every provider was asked: the SDKs must not ask again"
    finally:
        double.reset()
        served_again(fragile)


def test_a_request_every_provider_refuses_is_a_400_whole_or_streamed(tmp_path, double):
    doc = router_config(double.base_url, strategy="heuristic")  # a router of its own: every breaker closed
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        for model in PROVIDERS:
            double.set_persistent(model, Fault.http_error(400))
        try:
            with pytest.raises(openai.BadRequestError) as err:
                sdk(http_address(router)).chat.completions.create(model="tierwise", messages=user(), seed=1)
            assert "refused the request as invalid" in str(err.value)
            status, _, reply = post(http_address(router), json.dumps({"model": "tierwise", "messages": user(),
                                                                      "stream": True}).encode())
            assert status == 400 and reply["error"]["type"] == "invalid_request_error"
            assert reply["error"]["param"] is None
        finally:
            double.reset()


def test_a_passed_deadline_is_a_504(fragile, double):
    for model in PROVIDERS:
        double.set_persistent(model, Fault.delay(3.0))
    try:
        status, _, reply = post(fragile, json.dumps({"model": "tierwise", "messages": user()}).encode(),
                                {"x-tierwise-timeout-ms": "300"})
    finally:
        double.reset()
        served_again(fragile)
    assert status == 504 and reply["error"]["code"] == "deadline_exceeded", reply


def test_a_body_past_the_limit_is_a_400_without_being_read(fragile):
    status, _, reply = post(fragile, b" " * 200_000)
    assert status == 400 and "exceed the limit" in reply["error"]["message"] and reply["error"]["param"] is None


def test_a_full_router_is_a_429_with_retry_after(fragile, double):
    double.reset()
    double.set_persistent("t1-a", Fault.delay(1.5))
    double.set_persistent("t2-a", Fault.delay(1.5))
    body = json.dumps({"model": "tierwise/cheapest", "messages": user()}).encode()
    slow = threading.Thread(target=post, args=(fragile, body))
    slow.start()
    try:
        for _ in range(100):  # until the slow call holds the one place (bounded: 100 x 20 ms)
            if any(r.model == "t1-a" for r in double.requests[-3:]):
                break
            threading.Event().wait(0.02)
        status, headers, reply = post(fragile, body)
    finally:
        slow.join(20)
        double.reset()
    assert status == 429 and reply["error"]["code"] == "overloaded" and headers["retry-after"] == "1"


def test_a_client_that_goes_away_frees_its_place(fragile, double):
    """The router admits one call at a time: the place of a caller that hung up is free again at once."""
    double.reset()
    double.script("t1-a", Fault.delay(4.0))
    body = json.dumps({"model": "tierwise/cheapest", "messages": user()}).encode()
    conn = http.client.HTTPConnection(fragile, timeout=20)
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    for _ in range(100):  # until the provider has the call (bounded: 100 x 20 ms)
        if double.requests:
            break
        threading.Event().wait(0.02)
    conn.close()
    status = 429
    for _ in range(50):  # bounded: 50 x 20 ms, far below the 4 s the provider holds the first call
        status, _, _ = post(fragile, body)
        if status != 429:
            break
        threading.Event().wait(0.02)
    assert status == 200


# ---------------------------------------------------------------------------------- keys, limits and traces


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, double):
    """A router requiring API keys and exporting spans to a real OTLP receiver."""
    workdir = tmp_path_factory.mktemp("keyed")
    keys = workdir / "keys"
    keys.write_text(f"{KEY} id=main\n{RATED_KEY} id=rated rpm=2\n")
    with OtlpReceiver() as receiver:
        env = {KEY_ENV: "k", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        doc = router_config(double.base_url, strategy="heuristic")
        with running_router(doc, UNUSED_CLASSIFIER, workdir, "--http-listen", "127.0.0.1:0", "--api-keys-file",
                            str(keys), env=env) as router:
            yield {"address": http_address(router), "receiver": receiver, "router": router}


@pytest.mark.parametrize("key", ["tw-wrong", f"{KEY}x"])
def test_a_wrong_key_is_a_401(keyed, key):
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(keyed["address"], key).chat.completions.create(model="tierwise", messages=user())
    assert err.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed["address"], key).models.list()


@pytest.mark.parametrize("headers", [{}, {"authorization": "Basic abc"}, {"authorization": "Bearer"}])
def test_a_missing_key_is_a_401(keyed, headers):
    status, _, reply = post(keyed["address"], json.dumps({"model": "tierwise", "messages": user()}).encode(), headers)
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    assert "authorization: Bearer" in reply["error"]["message"]


def test_the_right_key_is_served(keyed):
    client = sdk(keyed["address"], KEY)
    assert client.chat.completions.create(model="tierwise", messages=user()).choices[0].message.content
    assert "tierwise" in [m.id for m in client.models.list()]


def test_a_key_over_its_rate_limit_is_a_429_with_retry_after(keyed):
    client = sdk(keyed["address"], RATED_KEY)
    for _ in range(2):
        client.chat.completions.create(model="tierwise", messages=user())
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="tierwise", messages=user())
    assert err.value.status_code == 429 and 1 <= int(err.value.response.headers["retry-after"]) <= 30
    assert "2 requests a minute" in err.value.message


def test_traceparent_joins_the_callers_trace_without_prompt_text(keyed, double):
    double.script("t1-a", Fault.http_error(500))  # a failed attempt shows up as a span of its own
    double.script("t2-a", Fault.http_error(500))
    double.script("t3-a", Fault.http_error(500))
    raw = sdk(keyed["address"], KEY).chat.completions.with_raw_response.create(
        model="tierwise", messages=user(PROMPT), extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    reply = raw.parse()
    receiver = keyed["receiver"]
    assert receiver.wait_for_spans(lambda r, s: s.trace_id.hex() == TRACE_ID and s.name.startswith("POST "))
    spans = [s for _, s in receiver.spans() if s.trace_id.hex() == TRACE_ID]
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert root.parent_span_id.hex() == PARENT, "a child of the caller's span"
    attrs = attributes(root)
    assert attrs["tierwise.strategy"] == "heuristic" and attrs["tierwise.key_id"] == "main"
    assert attrs["gen_ai.response.model"] == reply.model and attrs["http.response.status_code"] == 200
    assert attrs["tierwise.tier"] == int(raw.headers["x-tierwise-tier"])
    assert raw.headers["x-request-id"] == TRACE_ID, "the caller quotes it to find these spans"
    attempts = [s for s in spans if s.name.startswith("chat ")]
    assert [attributes(s)["tierwise.outcome"] for s in attempts] == ["error", "ok"]
    assert all(s.parent_span_id == root.span_id for s in attempts)
    for _, s in receiver.spans():
        text = str(attributes(s)) + s.name + str([str(e) for e in s.events])
        assert "GREY OWL" not in text and KEY not in text
    assert "GREY OWL" not in "".join(keyed["router"].output)


def test_a_refused_request_is_a_span_with_its_status_and_its_id(keyed):
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(keyed["address"], "tw-wrong").chat.completions.create(
            model="tierwise", messages=user(), extra_headers={"traceparent": f"00-{'5' * 32}-{PARENT}-01"})
    assert err.value.request_id == "5" * 32
    found = keyed["receiver"].wait_for_spans(lambda r, s: s.trace_id.hex() == "5" * 32)
    assert found and attributes(found[0][1])["http.response.status_code"] == 401


def test_a_stream_cut_after_its_200_is_traced_with_the_200_it_sent(keyed, double):
    trace_id = "6" * 32
    double.script("t1-a", Fault.disconnect_mid_stream(2))
    conn = http.client.HTTPConnection(keyed["address"], timeout=20)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "messages": user(),
                                                                 "stream": True}),
                     {"authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{PARENT}-01",
                      "content-type": "application/json"})
        response = conn.getresponse()
        status, events = response.status, response.read().decode()
    finally:
        conn.close()
    (_, span), *_ = keyed["receiver"].wait_for_spans(lambda r, s: s.trace_id.hex() == trace_id and
                                                     s.name.startswith("POST "))
    attrs = attributes(span)
    assert status == 200 and '"error"' in events, "the error can only end the stream it interrupts"
    assert attrs["http.response.status_code"] == 200 and attrs["error.type"] not in ("", "200"), attrs


def test_every_response_names_its_request_whole_streamed_or_refused(api):
    ids = [sdk(api[0]).chat.completions.with_raw_response.create(model="tierwise", messages=user()).headers[
        "x-request-id"]]
    with sdk(api[0]).chat.completions.with_streaming_response.create(model="tierwise", messages=user(),
                                                                     stream=True) as streamed:
        ids.append(streamed.headers["x-request-id"])
    ids.append(post(api[0], b"{not json")[1]["x-request-id"])
    ids.append(post(api[0], b'{"model": "tierwise"}', path="/v1/messages/count_tokens")[1]["x-request-id"])
    for path in ("/v1/models", "/v1/models/nonesuch", "/health", "/v2/anything"):
        conn = http.client.HTTPConnection(api[0], timeout=20)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            ids.append(response.getheader("x-request-id"))
            assert response.getheader("request-id") == ids[-1], "Anthropic's SDKs read the id as request-id"
        finally:
            conn.close()
    assert all(i and len(i) == 32 and int(i, 16) for i in ids) and len(set(ids)) == len(ids) == 8, ids


def test_with_tls_the_http_api_speaks_https_with_the_grpc_certificate(tmp_path, double):
    ca = authority()
    cert, key = issue(ca, "router").write(tmp_path, "router")
    ca_path = write_ca(ca, tmp_path / "ca.crt")
    doc = router_config(double.base_url, strategy="heuristic")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", "--tls-cert", str(cert),
                        "--tls-key", str(key), env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        trusted = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(ca_path)))
        client = OpenAI(base_url=f"https://{address}/v1", api_key="unused", max_retries=0, http_client=trusted)
        assert client.chat.completions.create(model="tierwise", messages=user()).choices[0].message.content
        with pytest.raises(openai.APIConnectionError):
            sdk(address).models.list()  # plain HTTP to the TLS port
    # The SDK's pooled connection was still open, idle, when the router stopped: expected, no error.
    assert not [line for line in router.output if '"level": "error"' in line], router.output


def served_serial(address: str, ca_path, client: tuple | None = None) -> int:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_path))
    if client is not None:
        context.load_cert_chain(*client)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_a_renewed_certificate_is_served_over_https_without_a_restart(tmp_path, double):
    ca = authority()
    first = issue(ca, "router")
    cert, key = first.write(tmp_path, "router")
    ca_path = write_ca(ca, tmp_path / "ca.crt")
    doc = router_config(double.base_url, strategy="heuristic")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", "--tls-cert", str(cert),
                        "--tls-key", str(key), env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        assert served_serial(address, ca_path) == first.cert.serial_number
        cert.write_text("not a certificate")  # a broken pair keeps the one serving
        router.wait_for("HTTPS certificate not reloaded", timeout=30)
        assert served_serial(address, ca_path) == first.cert.serial_number
        renewed = issue(ca, "router", rsa_key=True)  # another key type: OpenSSL would keep the EC one beside it
        renewed.write(tmp_path, "router")
        router.wait_for("HTTPS certificate reloaded", timeout=30)
        assert served_serial(address, ca_path) == renewed.cert.serial_number


def test_a_pair_renewed_while_the_client_ca_could_not_be_read_is_taken_up_with_the_ca(tmp_path, double):
    """mTLS: the pair is renewed while the client CA file is mid-update (empty): that renewal fails, and is taken up
    once the CA file is whole again, with the CA it now holds."""
    ca, apps_a, apps_b = authority(), authority("apps A"), authority("apps B")
    first = issue(ca, "router")
    cert, key = first.write(tmp_path, "router")
    ca_path, client_ca = write_ca(ca, tmp_path / "ca.crt"), write_ca(apps_a, tmp_path / "clients.crt")
    app_a = issue(apps_a, "app", client=True).write(tmp_path, "app-a")
    app_b = issue(apps_b, "app", client=True).write(tmp_path, "app-b")
    doc = router_config(double.base_url, strategy="heuristic")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", "--tls-cert", str(cert),
                        "--tls-key", str(key), "--tls-client-ca", str(client_ca), env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        assert served_serial(address, ca_path, app_a) == first.cert.serial_number
        client_ca.write_text("")
        renewed = issue(ca, "router")
        renewed.write(tmp_path, "router")
        router.wait_for("HTTPS certificate not reloaded", timeout=30)
        write_ca(apps_b, client_ca)
        router.wait_for("HTTPS certificate reloaded", timeout=30)
        assert served_serial(address, ca_path, app_b) == renewed.cert.serial_number


def get(address: str, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(address, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize("over", ["grpc", "http"])
def test_health_needs_no_key_and_turns_503_while_the_router_drains(tmp_path, double, over):
    """A load balancer's check: 200 with no key on a router that requires keys; once the router is told to stop,
    503 while a call under way (over either port) finishes, so no new ones are sent; the call still gets its
    answer."""
    double.reset()
    keys = tmp_path / "keys"
    keys.write_text("tw-health-0123456789 id=main\n")
    doc = router_config(double.base_url, strategy="cheapest")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", "--api-keys-file",
                        str(keys), env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        assert get(address, "/health") == (200, {"status": "serving"})
        double.script("t1-a", Fault.delay(3.0))
        answered = []
        with grpc.insecure_channel(router.address) as channel:
            def grpc_call():
                reply = router_pb2_grpc.RouterServiceStub(channel).Complete(
                    pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")]), timeout=20,
                    metadata=(("authorization", "Bearer tw-health-0123456789"),))
                answered.append(reply.content)

            def http_call():
                status, _, reply = post(address, json.dumps({"model": "tierwise", "messages": user("hi")}).encode(),
                                        {"authorization": "Bearer tw-health-0123456789"})
                answered.append(status == 200 and reply["choices"][0]["message"]["content"])

            slow = threading.Thread(target=grpc_call if over == "grpc" else http_call)
            slow.start()
            assert wait_until(lambda: double.requests_for("t1-a"), 10), "the slow call reached its provider"
            router.proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: get(address, "/health")[0] == 503, 3)
            threading.Event().wait(1.0)  # the call under way has 1.5 s or more to go: the port stays up for it
            assert get(address, "/health") == (503, {"status": "draining"})
            slow.join(20)
    assert answered and answered[0], "the call under way was answered"


@pytest.mark.parametrize("delay_s, answered", [(1.5, True), (4.5, False)], ids=["within", "past"])
def test_calls_under_way_at_sigterm_get_the_configured_grace_over_both_ports_together(tmp_path, double, delay_s,
                                                                                       answered):
    """shutdown.grace_s, not a fixed 5 s, is how long the calls under way at SIGTERM have: one over gRPC and one
    over HTTP, each waiting `delay_s` on its provider, are answered within the grace, and past it both are cut and
    the router exits once the one grace is over (not a grace for each port in turn)."""
    double.reset()
    grace_s = 2.5
    # the provider call outlasts the grace; only the shutdown can cut it
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": grace_s}, timeout_s=20.0)
    double.script("t1-a", Fault.delay(delay_s), Fault.delay(delay_s))
    outcome: dict[str, object] = {}
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        with grpc.insecure_channel(router.address) as channel:
            def grpc_call():
                try:
                    outcome["grpc"] = router_pb2_grpc.RouterServiceStub(channel).Complete(
                        pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")]), timeout=20).content
                except grpc.RpcError as err:
                    outcome["grpc"] = err.code()

            def http_call():
                conn = http.client.HTTPConnection(address, timeout=20)
                try:
                    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise",
                                                                             "messages": user("hi")}))
                    response = conn.getresponse()
                    body = response.read()
                    outcome["http"] = (json.loads(body)["choices"][0]["message"]["content"] if response.status == 200
                                       else (response.status, body))
                except (OSError, http.client.HTTPException) as err:  # the connection closed under it
                    outcome["http"] = err
                finally:
                    conn.close()

            calls = [threading.Thread(target=grpc_call), threading.Thread(target=http_call)]
            for call in calls:
                call.start()
            assert wait_until(lambda: len(double.requests_for("t1-a")) == 2, 10), "both calls reached the provider"
            sent = time.monotonic()
            router.proc.send_signal(signal.SIGTERM)
            assert router.proc.wait(20) == 0
            took = time.monotonic() - sent
            for call in calls:
                call.join(20)
    if answered:
        assert all(isinstance(outcome[port], str) and outcome[port] for port in ("grpc", "http")), outcome
    else:
        assert not any(isinstance(outcome[port], str) for port in ("grpc", "http")), outcome
        assert grace_s - 0.5 < took < grace_s + 1.5, f"stopped {took:.2f} s after SIGTERM; output:\n" + "".join(
            router.output)
