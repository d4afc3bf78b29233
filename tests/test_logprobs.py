"""The caller's logprobs: asked of the model that answers, and its tokens returned in OpenAI's shape (whole and
streamed, over HTTP and gRPC); a model that refuses them (drop_options) answers without; bad values are refused by
name. Real routers on 127.0.0.1, the provider double as the only stand-in."""
from __future__ import annotations

import json

import grpc
import pytest

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, openai_client, post, router_config, running_router

USER = [{"role": "user", "content": "Say something short"}]
ALTERNATIVES = {" from": -0.1, " to": -2.5, " by": -4.0}



@pytest.fixture(scope="module")
def api(tmp_path_factory, double):
    with running_router(router_config(double.base_url), UNUSED_CLASSIFIER, tmp_path_factory.mktemp("logprobs"),
                        "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        yield router



def test_the_answers_tokens_come_back_with_their_alternatives(api, double):
    double.reset()
    double.set_alternatives("t1-a", ALTERNATIVES)
    reply = openai_client(api).chat.completions.create(model="tierwise/cheapest", messages=USER, logprobs=True,
                                                       top_logprobs=2)
    content, tokens = reply.choices[0].message.content, reply.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == content == "answer from t1-a: 3 words"
    assert all(bytes(t.bytes) == t.token.encode() for t in tokens)
    [scripted] = [t for t in tokens if t.token == " from"]
    assert (scripted.logprob, [(a.token, a.logprob) for a in scripted.top_logprobs]) == (
        -0.1, [(" from", -0.1), (" to", -2.5)])
    [sent] = [r.body for r in double.requests_for("t1-a")]
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)


def test_a_stream_sends_the_tokens_in_one_chunk_before_the_last(api, double):
    double.reset()
    stream = openai_client(api).chat.completions.create(model="tierwise/cheapest", messages=USER, logprobs=True,
                                                        stream=True)
    text, tokens = "", []
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        tokens += chunk.choices[0].logprobs.content if chunk.choices[0].logprobs else []
    assert text == "answer from t1-a: 3 words" and "".join(t.token for t in tokens) == text
    assert all(t.logprob == 0.0 and not t.top_logprobs for t in tokens), "certain tokens, no alternatives asked"


def test_grpc_returns_the_tokens_and_unasked_none_are_sent(api, double):
    double.reset()
    with grpc.insecure_channel(api.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        ask = pb.CompleteRequest(strategy="cheapest", messages=[pb.Message(role="user", content="hi there")])
        plain = stub.Complete(ask, timeout=20)
        ask.logprobs, ask.top_logprobs = True, 1
        asked = stub.Complete(ask, timeout=20)
    assert not plain.logprobs
    assert "".join(t.token for t in asked.logprobs) == asked.content
    assert all(len(t.top_logprobs) == 1 for t in asked.logprobs)
    first, second = [r.body for r in double.requests_for("t1-a")]
    assert "logprobs" not in first and (second["logprobs"], second["top_logprobs"]) == (True, 1)


def test_a_model_that_refuses_logprobs_answers_without_them(tmp_path, double):
    double.reset()
    doc = router_config(double.base_url)
    doc["tiers"][0]["providers"][0]["drop_options"] = ["logprobs"]
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        status, _, reply = post(http_address(router), json.dumps(
            {"model": "tierwise/cheapest", "messages": USER, "logprobs": True, "top_logprobs": 3}).encode())
    assert status == 200 and reply["choices"][0]["logprobs"] is None
    [sent] = [r.body for r in double.requests_for("t1-a")]
    assert "logprobs" not in sent and "top_logprobs" not in sent


@pytest.mark.parametrize("extra, param", [
    ({"logprobs": "yes"}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
])
def test_bad_logprobs_are_400s_naming_the_field(api, extra, param):
    status, _, reply = post(http_address(api), json.dumps({"model": "tierwise", "messages": USER, **extra}).encode())
    assert status == 400 and reply["error"]["param"] == param, reply
