"""A provider's own price: an answer is billed at the price of the provider that gave it, a fallback's too;
the estimate before dispatch is the tier's first provider's price."""
from __future__ import annotations

import grpc
import pytest

from router_service.config import ConfigError, parse
from router_service.tokens import estimate_tokens
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault, ProviderDouble
from .servers import KEY_ENV, router_config, running_router, start_classifier

FIRST = {"input": 0.5, "output": 2.5}  # t1-a's own price, unlike its tier's 0.25 / 1.25
FALLBACK = {"input": 4.0, "output": 20.0}  # t1-b's


def priced(base_url: str) -> dict:
    doc = router_config(base_url)
    first, fallback = doc["tiers"][0]["providers"]
    first["price_per_mtok"], fallback["price_per_mtok"] = FIRST, FALLBACK
    return doc


def usd(price: dict, input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * price["input"] + output_tokens * price["output"]) / 1e6


def test_a_tier_bills_each_provider_at_its_own_price_or_the_tiers():
    doc = priced("http://127.0.0.1:1/v1")
    doc["tiers"][1]["providers"].append({**doc["tiers"][1]["providers"][0], "name": "t2-b"})
    cfg = parse(doc)
    one, two = cfg.tiers[1], cfg.tiers[2]
    assert one.cost(1000, 100, "t1-b") == pytest.approx(usd(FALLBACK, 1000, 100))
    assert one.cost(1000, 100, "t1-a") == one.cost(1000, 100) == pytest.approx(usd(FIRST, 1000, 100))
    assert two.cost(1000, 100, "t2-b") == two.cost(1000, 100) == pytest.approx(usd({"input": 3.0, "output": 15.0},
                                                                                     1000, 100))


@pytest.mark.parametrize("price, message", [
    ({"input": -1, "output": 1}, "tiers[0].providers[1].price_per_mtok.input: must not be negative"),
    ({"input": 1}, "tiers[0].providers[1].price_per_mtok.output: required"),
    ("cheap", "tiers[0].providers[1].price_per_mtok: expected a mapping"),
    ({"input": 1, "output": 1, "currency": "EUR"}, "tiers[0].providers[1].price_per_mtok.currency: unknown key"),
])
def test_a_bad_provider_price_names_its_key(price, message):
    doc = priced("http://127.0.0.1:1/v1")
    doc["tiers"][0]["providers"][1]["price_per_mtok"] = price
    with pytest.raises(ConfigError) as err:
        parse(doc)
    assert str(err.value).startswith(message), str(err.value)


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    classifier = start_classifier()
    try:
        with ProviderDouble() as double, running_router(priced(double.base_url), classifier.address,
                                                        tmp_path_factory.mktemp("priced"),
                                                        env={KEY_ENV: "test-key"}) as service:
            with grpc.insecure_channel(service.address) as channel:
                yield router_pb2_grpc.RouterServiceStub(channel), double
    finally:
        classifier.stop()


def ask(text: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role="user", content=text)], strategy="heuristic")


def test_a_fallback_is_billed_at_its_own_price(router):
    stub, double = router
    double.reset()
    first = stub.Complete(ask("What is the capital of France?"), timeout=20)
    assert (first.tier, first.provider) == (1, "t1-a")
    assert first.cost_usd == pytest.approx(usd(FIRST, first.usage.input_tokens, first.usage.output_tokens))

    double.set_persistent("t1-a", Fault.http_error(500))
    try:
        reply = stub.Complete(ask("What is the capital of France?"), timeout=20)
        assert (reply.tier, reply.provider, reply.escalations) == (1, "t1-b", 0)
        assert [a.outcome for a in reply.attempts][-1] == "ok" and len(reply.attempts) > 1
        assert reply.cost_usd == pytest.approx(usd(FALLBACK, reply.usage.input_tokens, reply.usage.output_tokens))
        assert reply.cost_usd > usd(FIRST, reply.usage.input_tokens, reply.usage.output_tokens)

        summary = [e.summary for e in stub.CompleteStream(ask("What is the capital of France?"), timeout=20)
                   if e.WhichOneof("event") == "summary"][0]
        assert summary.provider == "t1-b"
        assert summary.cost_usd == pytest.approx(usd(FALLBACK, summary.usage.input_tokens,
                                                     summary.usage.output_tokens))
    finally:
        double.reset()


def test_the_estimate_before_dispatch_is_the_first_providers_price(router):
    stub, _ = router
    query = "What is the capital of France?"
    reply = stub.Route(pb.RouteRequest(query=query, strategy="heuristic"), timeout=10)
    assert reply.tier == 1
    assert reply.estimated_cost_usd == pytest.approx(usd(FIRST, estimate_tokens(query), 300))
