"""The answer cache (`cache.max_entries`): a deterministic request asked again is answered from the cache, for
nothing, over gRPC and HTTP; sampled requests, other keys and expired answers are not. Real routers on 127.0.0.1
with the provider double as the only stand-in; the cache's own bounds with an injected clock."""
from __future__ import annotations

import signal

import grpc
import pytest
from openai import OpenAI

from router_service.answer_cache import AnswerCache
from router_service.config import CacheConfig, ConfigError, parse
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, router_config, running_router
from .test_router_complete import ask, stream

KEYS = ("tw-cache-one-5b1f", "tw-cache-two-9c3e")


@pytest.fixture(scope="module")
def router(tmp_path_factory, double):
    workdir = tmp_path_factory.mktemp("cache")
    keys = workdir / "keys"
    keys.write_text("".join(f"{key} id=k{i}\n" for i, key in enumerate(KEYS)))
    doc = router_config(double.base_url, strategy="cheapest", cache={"max_entries": 64, "ttl_s": 60.0})
    with running_router(doc, UNUSED_CLASSIFIER, workdir, "--http-listen", "127.0.0.1:0", "--api-keys-file",
                        str(keys), env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture()
def stub(router, double):
    double.reset()
    with grpc.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def complete(stub, request: pb.CompleteRequest, key: str = KEYS[0]) -> pb.CompleteResponse:
    return stub.Complete(request, timeout=10, metadata=[("authorization", f"Bearer {key}")])


def test_a_deterministic_request_asked_again_is_answered_from_the_cache_for_nothing(stub, double):
    first = complete(stub, ask("what is two plus two", "cheapest", temperature=0.0))
    again = complete(stub, ask("what is two plus two", "cheapest", temperature=0.0))
    assert not first.cache_hit and first.cost_usd > 0 and first.attempts
    assert again.cache_hit and again.cost_usd == 0 and not again.attempts
    assert (again.content, again.tier, again.model, again.usage) == (first.content, first.tier, first.model,
                                                                    first.usage)
    assert len(double.requests_for("t1-a")) == 1, "the provider was asked once"


def test_an_answer_the_gate_rejected_is_returned_for_want_of_a_better_but_not_kept(stub, double):
    double.set_reply("t1-a", "I cannot help with that.")  # the surface gate rejects it
    for model in ("t2-a", "t3-a"):
        double.script(model, Fault.http_error(400))  # once: the tiers above cannot answer this time
    rejected = complete(stub, ask("what is nine squared", "tier1+cascade", temperature=0.0))
    assert rejected.tier == 1 and "gate_rejected" in [a.outcome for a in rejected.attempts]
    again = complete(stub, ask("what is nine squared", "tier1+cascade", temperature=0.0))
    assert not again.cache_hit and again.tier == 2 and again.content.startswith("answer from t2-a")


def test_a_seed_makes_a_request_deterministic_too(stub, double):
    for _ in range(2):
        answer = complete(stub, ask("name a colour", "cheapest", seed=7))
    assert answer.cache_hit and len(double.requests_for("t1-a")) == 1


def test_a_sampled_request_is_never_served_from_the_cache(stub, double):
    answers = [complete(stub, ask("name a colour", "cheapest", temperature=temperature)) for temperature in (0.7, 0.7)]
    answers.append(complete(stub, ask("name a colour", "cheapest")))  # the provider's default temperature
    assert not any(a.cache_hit for a in answers) and len(double.requests_for("t1-a")) == 3


def test_another_key_another_option_or_another_message_is_a_miss(stub, double):
    complete(stub, ask("what is the capital of Peru", "cheapest", temperature=0.0))
    others = [complete(stub, ask("what is the capital of Peru", "cheapest", temperature=0.0), KEYS[1]),
              complete(stub, ask("what is the capital of Peru", "cheapest", temperature=0.0, max_tokens=5)),
              complete(stub, ask("what is the capital of Chile", "cheapest", temperature=0.0))]
    assert not any(a.cache_hit for a in others) and len(double.requests_for("t1-a")) == 4


def test_a_stream_is_answered_from_the_cache_in_one_piece(stub, double):
    first = complete(stub, ask("tell me a story", "cheapest", temperature=0.0))
    decision, text, summary = stream(stub, ask("tell me a story", "cheapest", temperature=0.0),
                                     metadata=[("authorization", f"Bearer {KEYS[0]}")])
    assert summary.cache_hit and text == first.content and decision.tier == first.tier
    assert len(double.requests_for("t1-a")) == 1


def test_the_http_api_says_a_hit_in_its_tierwise_object(router, double):
    double.reset()
    client = OpenAI(base_url=f"http://{http_address(router)}/v1", api_key=KEYS[1], max_retries=0, timeout=20)
    replies = [client.chat.completions.create(model="tierwise/cheapest", temperature=0, messages=[
        {"role": "user", "content": "what is two plus three"}]) for _ in range(2)]
    assert [r.tierwise["cache_hit"] for r in replies] == [False, True]
    assert replies[1].tierwise["cost_usd"] == 0 and replies[0].choices[0].message.content == \
        replies[1].choices[0].message.content
    assert len(double.requests_for("t1-a")) == 1


def test_a_key_held_to_a_lower_tier_since_is_not_served_what_it_was_given_above_it(tmp_path, double):
    """The keys file changes (SIGHUP here, or polled): answers kept under the key's old settings are not its now."""
    double.reset()
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[0]} id=k0\n")
    doc = router_config(double.base_url, strategy="cheapest", cache={"max_entries": 64, "ttl_s": 60.0})
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--api-keys-file", str(keys), env={KEY_ENV: "k"}) as router, \
            grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        assert complete(stub, ask("prove it", "tier3", temperature=0.0)).tier == 3
        keys.write_text(f"{KEYS[0]} id=k0 max_tier=1\n")
        router.proc.send_signal(signal.SIGHUP)
        router.wait_for("API keys reloaded", timeout=10)
        held = complete(stub, ask("prove it", "tier3", temperature=0.0))
        assert (held.tier, held.cache_hit) == (1, False)
        assert complete(stub, ask("prove it", "tier3", temperature=0.0)).cache_hit, "kept again, for its settings now"


def test_kept_answers_expire_and_the_least_recently_used_goes_first():
    now = [0.0]
    cache = AnswerCache(CacheConfig(max_entries=2, ttl_s=10.0), clock=lambda: now[0])
    keys = [cache.key(pb.CompleteRequest(messages=[pb.Message(role="user", content=f"q{i}")], temperature=0.0), "k",
                      3, None)
            for i in range(3)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, pb.CompleteResponse(content=f"a{i}"))
    assert cache.get(keys[0]).content == "a0"  # now the most recently used
    cache.put(keys[2], pb.CompleteResponse(content="a2"))
    assert (cache.get(keys[1]), len(cache)) == (None, 2), "the least recently used made room"
    now[0] = 10.5
    assert cache.get(keys[0]) is None and cache.get(keys[2]) is None, "past ttl_s nothing is served"


def test_the_cache_is_off_unless_configured():
    cache = AnswerCache(parse(router_config("http://127.0.0.1:9/v1")).cache)
    assert cache.key(pb.CompleteRequest(messages=[pb.Message(role="user", content="q")], temperature=0.0), "", 3,
                     None) is None


@pytest.mark.parametrize("key, value", [("max_entries", -1), ("max_entries", 1.5), ("ttl_s", 0), ("ttl_s", "x")])
def test_a_bad_cache_setting_is_a_config_error_naming_it(key, value):
    with pytest.raises(ConfigError, match=rf"cache\.{key}"):
        parse(router_config("http://127.0.0.1:9/v1", cache={key: value}))
