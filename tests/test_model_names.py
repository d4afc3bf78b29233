"""Model names a deployment lists in `http.models`, for clients that send a model name of their own: which strategy
each routes with (exact names and `*` patterns, the first match deciding), the pinned tiers `tier1`..`tier3`, the
models list, the configuration's refusals, and real routers answering OpenAI's and Anthropic's SDKs by those names
(the provider double the only stand-in)."""
from __future__ import annotations

import anthropic
import grpc
import openai
import pytest

from router_service.config import ConfigError, parse
from router_service.model_names import ModelNames
from router_service.strategies import registered
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, openai_client, router_config, running_router

MODELS = [{"name": "gpt-4o-mini", "strategy": "tier1"},
          {"name": "gpt-4o"},  # the configured strategy: heuristic
          {"name": "claude-*haiku*", "strategy": "tier1"},
          {"name": "claude-*", "strategy": "tier3"},
          {"name": "mid.v1", "strategy": "tier2+cascade"}]
LONG_CODE_QUESTION = ("Refactor this Python class to use dataclasses and add type hints, then explain the "
                      "trade-offs:\n```python\nclass A:\n    def __init__(self, x):\n        self.x = x\n```")


def test_names_resolve_exactly_by_pattern_and_in_order():
    names = ModelNames((("gpt-4o", "", None), ("claude-*haiku*", "tier1", None), ("claude-*", "tier3", 0.99),
                        ("a.b", "tier2", None)))
    assert names.strategy_of("tierwise") == "" and names.strategy_of("tierwise/tier2") == "tier2"
    assert names.strategy_of("tierwise/tier2+cascade") == "tier2+cascade"
    assert names.strategy_of("gpt-4o") == "" and names.strategy_of("gpt-4o-2024-08-06") is None
    assert names.strategy_of("claude-3-5-haiku-latest") == "tier1"  # the first match decides
    assert names.strategy_of("claude-sonnet-4-5") == "tier3" and names.strategy_of("claude-") == "tier3"
    assert names.strategy_of("a.b") == "tier2" and names.strategy_of("aXb") is None  # only `*` is special
    assert names.strategy_of("tierwise/nonesuch") is None and names.strategy_of("GPT-4O") is None
    assert names.listed() == ["tierwise", *(f"tierwise/{s}" for s in registered()), "gpt-4o", "a.b"]
    assert names.route_of("claude-sonnet-4-5") == ("tier3", 0.99) and names.route_of("tierwise") == ("", None)
    assert ModelNames((("*", "tier3", None),)).strategy_of("anything at all\n") == "tier3"


def test_the_configuration_refuses_names_it_could_not_serve(double):
    def problems(models) -> str:
        with pytest.raises(ConfigError) as err:
            parse(router_config(double.base_url, http={"models": models}))
        return str(err.value)

    assert problems([{"name": "tierwise"}]) == ("http.models[0].name: 'tierwise' is the router's own name; list names "
                                                "clients send besides 'tierwise'")
    assert "http.models[0].name: 'tierwise/x' is the router's own name" in problems([{"name": "tierwise/x"}])
    assert problems([{"name": "a"}, {"name": "b"}, {"name": "a", "strategy": "tier1"}]) == (
        "http.models[2].name: 'a' is listed twice")
    assert problems([{"name": "a", "strategy": "fastest"}]).startswith(
        "http.models[0].strategy: unknown strategy 'fastest'; available: cascade, cheapest")
    assert problems([{"name": " "}]).startswith("http.models[0].name: required, a non-empty string")
    assert problems([{"strategy": "tier1"}]) == "http.models[0].name: required"
    assert problems({"name": "a"}).startswith("http.models: expected a list")
    cfg = parse(router_config(double.base_url, http={"models": MODELS}))
    assert cfg.http.model_names().strategy_of("mid.v1") == "tier2+cascade"


@pytest.fixture(scope="module")
def router(double, tmp_path_factory):
    doc = router_config(double.base_url, http={"models": MODELS})
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("names"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture()
def sdk(router, double) -> openai.OpenAI:
    double.reset()
    return openai_client(router)


def ask(client: openai.OpenAI, model: str, text: str = "hi"):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}])
    return raw.headers, raw.parse()


def test_an_apps_own_model_names_route_through_tierwise(sdk):
    headers, reply = ask(sdk, "gpt-4o-mini", LONG_CODE_QUESTION)  # pinned: the heuristic would pick a higher tier
    assert (headers["x-tierwise-tier"], headers["x-tierwise-strategy"], reply.model) == ("1", "tier1", "t1-a")
    headers, _ = ask(sdk, "gpt-4o", LONG_CODE_QUESTION)
    assert headers["x-tierwise-strategy"] == "heuristic" and headers["x-tierwise-tier"] != "1"
    headers, reply = ask(sdk, "gpt-4o")  # a greeting: the heuristic's cheapest tier
    assert (headers["x-tierwise-tier"], reply.model) == ("1", "t1-a")
    headers, _ = ask(sdk, "mid.v1")
    assert (headers["x-tierwise-tier"], headers["x-tierwise-strategy"]) == ("2", "tier2+cascade")


def test_an_unknown_model_is_a_404_naming_the_field_and_the_choices(sdk, double):
    with pytest.raises(openai.NotFoundError) as err:  # as OpenAI answers a model it does not serve
        ask(sdk, "gpt-4o-2024-08-06")
    body = err.value.body
    assert (body["param"], body["code"]) == ("model", "model_not_found")
    assert body["message"].startswith("model: unknown model 'gpt-4o-2024-08-06'; use ")
    assert "a name the router's configuration lists" in body["message"] and not double.requests


def test_the_models_list_shows_exact_names_and_retrieves_any_that_resolves(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert ids[-3:] == ["gpt-4o-mini", "gpt-4o", "mid.v1"] and "claude-*" not in ids
    assert {"tierwise/tier1", "tierwise/tier2", "tierwise/tier3"} <= set(ids)
    assert sdk.models.retrieve("claude-opus-4-1").id == "claude-opus-4-1"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("llama-3")


def test_anthropics_sdk_sends_claude_names(router, double):
    double.reset()
    client = anthropic.Anthropic(base_url=f"http://{http_address(router)}", api_key="unused", max_retries=0,
                                 timeout=20)
    for model, tier, provider in (("claude-3-5-haiku-latest", "1", "t1-a"), ("claude-sonnet-4-5", "3", "t3-a")):
        raw = client.messages.with_raw_response.create(model=model, max_tokens=50,
                                                       messages=[{"role": "user", "content": "hi"}])
        assert (raw.headers["x-tierwise-tier"], raw.parse().model) == (tier, provider)
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="gpt-4o-2024-08-06", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["error"]["message"].startswith("model: unknown model")


def test_a_pinned_tier_still_fails_over_upwards(router, double):
    """`tier2` over gRPC: tier 2's only provider down, the answer comes from tier 3 and the attempts say why."""
    double.reset()
    double.set_persistent("t2-a", Fault.http_error(503))
    try:
        with grpc.insecure_channel(router.address) as channel:
            reply = router_pb2_grpc.RouterServiceStub(channel).Complete(
                pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")], strategy="tier2"), timeout=20)
    finally:
        double.set_persistent("t2-a", None)
    assert (reply.strategy, reply.tier, reply.model, reply.escalations) == ("tier2", 3, "t3-a", 1)
    assert [(a.tier, a.outcome) for a in reply.attempts][-1] == (3, "ok")
    assert {a.tier for a in reply.attempts} == {2, 3}
