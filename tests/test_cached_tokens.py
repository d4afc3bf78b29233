"""Input tokens a provider read from its prompt cache: billed at the provider's `cached_input` price, and reported in
each API's own usage fields. A real router on 127.0.0.1; the provider double reports cached tokens as OpenAI does."""
from __future__ import annotations

import anthropic
import grpc
import openai
import pytest

from router_service.config import ConfigError, parse
from router_service.providers.types import Price
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, router_config, running_router

PROMPT = "x" * 400  # 100 tokens, as the double counts them
CACHED = 64
PRICE = {"input": 2.0, "output": 8.0, "cached_input": 0.5}


def test_cached_tokens_cost_the_cached_price_or_else_the_input_price():
    assert Price(input=2.0, output=8.0, cached_input=0.5).cost(100, 10, 64) == pytest.approx(
        (36 * 2.0 + 64 * 0.5 + 10 * 8.0) / 1e6)
    assert Price(input=2.0, output=8.0).cost(100, 10, 64) == Price(input=2.0, output=8.0).cost(100, 10)
    assert Price(input=2.0, output=8.0, cached_input=0.0).cost(10, 0, 50) == 0.0, "never more cached than input"


def test_the_cached_price_is_checked_like_the_others():
    doc = router_config("http://127.0.0.1:9/v1")
    doc["tiers"][0]["price_per_mtok"] = {"input": 1.0, "output": 1.0, "cached_input": -1}
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.price_per_mtok\.cached_input: must not be negative"):
        parse(doc)
    doc["tiers"][0]["price_per_mtok"] = PRICE
    assert parse(doc).tiers[1].price().cached_input == 0.5


@pytest.fixture(scope="module")
def router(double, tmp_path_factory):
    doc = router_config(double.base_url)
    doc["tiers"][0]["price_per_mtok"] = PRICE
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("cached"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture()
def cached(double):
    double.reset()
    double.set_cached_tokens("t1-a", CACHED)
    yield
    double.reset()


def expected_cost(input_tokens: int, output_tokens: int) -> float:
    return ((input_tokens - CACHED) * PRICE["input"] + CACHED * PRICE["cached_input"]
            + output_tokens * PRICE["output"]) / 1e6


@pytest.mark.usefixtures("cached")
def test_grpc_answers_report_and_bill_the_cached_tokens(router):
    request = pb.CompleteRequest(messages=[pb.Message(role="user", content=PROMPT)], strategy="tier1")
    with grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        whole = stub.Complete(request, timeout=20)
        streamed = list(stub.CompleteStream(request, timeout=20))[-1].summary
    for reply in (whole, streamed):
        assert reply.usage.input_tokens == 100 and reply.usage.cached_input_tokens == CACHED
        assert reply.cost_usd == pytest.approx(expected_cost(100, reply.usage.output_tokens))
    uncached = Price(**{k: v for k, v in PRICE.items() if k != "cached_input"}).cost(100, whole.usage.output_tokens)
    assert whole.cost_usd < uncached


@pytest.mark.usefixtures("cached")
def test_each_http_api_reports_cached_tokens_in_its_own_fields(router):
    base = f"http://{http_address(router)}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=20)
    chat = client.chat.completions.create(model="tierwise/tier1", messages=[{"role": "user", "content": PROMPT}])
    assert (chat.usage.prompt_tokens, chat.usage.prompt_tokens_details.cached_tokens) == (100, CACHED)
    response = client.responses.create(model="tierwise/tier1", input=PROMPT)
    assert (response.usage.input_tokens, response.usage.input_tokens_details.cached_tokens) == (100, CACHED)
    claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=20)
    message = claude.messages.create(model="tierwise/tier1", max_tokens=50, messages=[{"role": "user",
                                                                                       "content": PROMPT}])
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (100 - CACHED, CACHED)


def test_without_a_cache_every_input_token_is_billed_at_the_input_price(router, double):
    double.reset()
    with grpc.insecure_channel(router.address) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).Complete(
            pb.CompleteRequest(messages=[pb.Message(role="user", content=PROMPT)], strategy="tier1"), timeout=20)
    assert reply.usage.cached_input_tokens == 0
    assert reply.cost_usd == pytest.approx((100 * PRICE["input"] + reply.usage.output_tokens * PRICE["output"]) / 1e6)
