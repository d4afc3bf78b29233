"""Decisions on the whole request: earlier turns raise the tier, and a provider (or a whole tier) whose context
window cannot hold the request is skipped, saying so. Providers are real SDK calls to the test double."""
from __future__ import annotations

import asyncio

import pytest

from router_service.conversation import NoTierFits, decide_on_conversation, floor, held
from router_service.providers import ChainExhausted, Provider, ProviderConfig, TierChain
from router_service.strategies import Decision

from .provider_double import ProviderDouble

KEY_ENV = "TIERWISE_TEST_CONTEXT_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")


def provider(base_url: str, name: str, window: int = 0) -> Provider:
    return Provider(ProviderConfig(name=name, base_url=base_url, model=f"model-{name}", api_key_env=KEY_ENV,
                                   max_retries=0, context_window=window))


def ask(chain: TierChain, messages, **options):
    async def main():
        try:
            return await chain.complete(messages, **options)
        finally:
            await chain.aclose()
    return asyncio.run(main())


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_provider_whose_window_cannot_hold_the_request_is_skipped_and_the_attempt_says_so():
    with ProviderDouble() as double:
        chain = TierChain([provider(double.base_url, "small", window=50), provider(double.base_url, "big")])
        completion = ask(chain, user("x" * 400), max_tokens=10)  # 100 + 4 tokens of prompt, 10 of answer
        assert completion.provider == "big"
        skipped = completion.attempts[0]
        assert (skipped.provider, str(skipped.outcome)) == ("small", "skipped_context_window")
        assert "about 114 tokens" in skipped.error and "holds 50" in skipped.error
        assert double.requests_for("model-small") == [], "a request that cannot fit is never sent"
        fits = TierChain([provider(double.base_url, "small", window=50)])
        assert ask(fits, user("hi"), max_tokens=10).provider == "small"


def test_a_chain_none_of_whose_providers_fits_is_exhausted_without_a_call():
    with ProviderDouble() as double:
        chain = TierChain([provider(double.base_url, "a", window=20), provider(double.base_url, "b", window=30)])
        with pytest.raises(ChainExhausted) as failed:
            ask(chain, user("y" * 400))
        assert [str(a.outcome) for a in failed.value.attempts] == ["skipped_context_window"] * 2
        assert double.requests_for("model-a") == double.requests_for("model-b") == []


def test_earlier_turns_and_the_system_prompt_set_a_floor():
    assert floor(user("What is 2 + 2?")) == (1, "")
    assert floor(user("```python\nprint(1)\n```")) == (1, ""), "code in the last message is the strategies' to weigh"
    coded = [{"role": "user", "content": "def f(x):\n    return x"}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "and now?"}]
    assert floor(coded) == (2, "code earlier in the conversation")
    system = [{"role": "system", "content": "Context: " + "word " * 2000}, *user("hi")]
    assert floor(system)[0] == 2 and "long conversation" in floor(system)[1]
    assert floor([{"role": "system", "content": "w" * 40_000}, *user("hi")])[0] == 3


@pytest.mark.parametrize("system", [
    "Your function is to answer billing questions.", "Select the most relevant answer from the FAQ below.",
    "You help lawyers with class action questions.", "Be brief; be polite;", "If the user is happy => thank them.",
    "Rules:\n- be kind;\n- be short;\n- be precise;", "Class: 3B\nTeacher: Ms Smith\nTopic: fractions",
    'Reply with JSON only, in this shape:\n{\n  "answer": {\n    "text": "...",\n    "sources": []\n  },\n'
    '  "confidence": 0.9\n}'])
def test_a_plain_english_system_prompt_is_no_code(system):
    assert floor([{"role": "system", "content": system}, *user("What is the capital of France?")]) == (1, "")


@pytest.mark.parametrize("code", [
    "```js\nlet x = 1\n```", "def f(x):\n    return x", "SELECT name FROM users", "#include <stdio.h>",
    "function add(a, b) {\n  return a + b;\n}", "const x = 1;\nlet y = f(x);\nconsole.log(y);",
    "import os\nimport sys\nfrom x import y", "public static void main(String[] args) {"])
def test_code_in_an_earlier_turn_is_found(code):
    assert floor([{"role": "assistant", "content": code}, *user("and now?")])[0] == 2


def chains(base_url: str, windows: dict[int, int]) -> dict[int, TierChain]:
    return {tier: TierChain([provider(base_url, f"t{tier}", window)]) for tier, window in windows.items()}


def test_a_request_no_tier_takes_is_refused_naming_each_tiers_reason_and_the_field_to_change():
    plain = Decision(tier=1, strategy="heuristic", reason="plain")
    by_tier = {1: TierChain([Provider(ProviderConfig(name="t1", base_url="http://127.0.0.1:9", model="m1",
                                                     api_key_env=KEY_ENV, vision=False))]),
               **{t: TierChain([provider("http://127.0.0.1:9", f"t{t}", window=300)]) for t in (2, 3)}}
    pictured = [{"role": "user", "content": "w" * 2000, "images": [{"url": "data:image/png;base64,AA", "detail": ""}]}]
    with pytest.raises(NoTierFits) as err:
        decide_on_conversation(plain, pictured, by_tier)
    assert str(err.value).startswith("messages: no tier can take the request: tier 1's providers cannot read images; "
                                     "tier 2's providers cannot hold about"), str(err.value)
    small = chains("http://127.0.0.1:9", {1: 100, 2: 100, 3: 100})
    with pytest.raises(NoTierFits, match=r"^max_tokens: 500 leaves no room for the answer: the request needs"):
        decide_on_conversation(plain, user("hi"), small, max_tokens=500)


def test_the_decision_is_raised_to_the_floor_and_past_tiers_that_cannot_hold_it_and_says_why():
    plain = Decision(tier=1, strategy="heuristic", reason="score 0: short plain question")
    by_tier = chains("http://127.0.0.1:9", {1: 0, 2: 0, 3: 0})
    assert decide_on_conversation(plain, user("hi"), by_tier) is plain
    coded = [{"role": "assistant", "content": "SELECT a FROM b"}, *user("why?")]
    raised = decide_on_conversation(plain, coded, by_tier)
    assert raised.tier == 2 and raised.reason.endswith("raised to tier 2: code earlier in the conversation")
    small = chains("http://127.0.0.1:9", {1: 100, 2: 100, 3: 0})
    skipped = decide_on_conversation(plain, user("z" * 2000), small, max_tokens=50)
    assert skipped.tier == 3 and "skipped to tier 3: tier 1's providers cannot hold about 554 tokens" in skipped.reason
    with pytest.raises(NoTierFits, match="messages: the request needs about 554 tokens"):
        decide_on_conversation(plain, user("z" * 2000), chains("http://127.0.0.1:9", {1: 100, 2: 100, 3: 100}),
                               max_tokens=50)


def test_a_pinned_tier_keeps_its_tier_where_the_conversation_would_raise_it_but_not_past_what_fits():
    """tier1..tier3 and cheapest name a tier outright: the floor does not move them; a tier whose providers cannot
    take the request still gives way."""
    pinned = Decision(tier=1, strategy="tier1", reason="always tier 1")
    by_tier = chains("http://127.0.0.1:9", {1: 0, 2: 0, 3: 0})
    coded = [{"role": "system", "content": "```python\nprint(1)\n```"}, *user("why?")]
    long = [{"role": "system", "content": "context " * 3000}, *user("why?")]
    for conversation in (coded, long):
        assert decide_on_conversation(pinned, conversation, by_tier, pinned=True) is pinned
        assert decide_on_conversation(pinned, conversation, by_tier).tier > 1, "a strategy's tier is raised"
    small = chains("http://127.0.0.1:9", {1: 100, 2: 0, 3: 0})
    assert decide_on_conversation(pinned, user("z" * 2000), small, max_tokens=50, pinned=True).tier == 2


def test_an_api_keys_max_tier_holds_every_move_of_the_decision():
    """A key's ceiling caps the strategy's tier, the conversation's floor and the skip past providers that cannot
    hold the request; what no tier under it can hold is refused, and the message says the key is why."""
    hard = Decision(tier=3, strategy="heuristic", reason="score 5: proof")
    by_tier = chains("http://127.0.0.1:9", {1: 0, 2: 0, 3: 0})
    capped = decide_on_conversation(hard, user("hi"), by_tier, ceiling=2)
    assert capped.tier == 2 and capped.reason.endswith("held at tier 2: the API key's max_tier")
    assert held(hard, 1).tier == 1 and held(hard, 3) is hard
    plain = Decision(tier=1, strategy="heuristic", reason="score 0: short plain question")
    coded = [{"role": "assistant", "content": "SELECT a FROM b"}, *user("why?")]
    assert decide_on_conversation(plain, coded, by_tier, ceiling=1).tier == 1
    small = chains("http://127.0.0.1:9", {1: 100, 2: 0, 3: 0})
    assert decide_on_conversation(plain, user("z" * 2000), small, max_tokens=50, ceiling=2).tier == 2
    with pytest.raises(NoTierFits, match=r"no provider of tier 1 \(the API key's max_tier\) holds that many"):
        decide_on_conversation(plain, user("z" * 2000), small, max_tokens=50, ceiling=1)
    with pytest.raises(NoTierFits, match=r"no provider of tier 1 to 2 \(the API key's max_tier\)"):
        decide_on_conversation(plain, user("z" * 2000), chains("http://127.0.0.1:9", {1: 100, 2: 100, 3: 0}),
                               max_tokens=50, ceiling=2)


def test_the_router_decides_on_the_whole_conversation_and_refuses_what_no_tier_holds(tmp_path):
    """A real router and classifier: code in an earlier turn raises the heuristic's tier 1 to 2; tier 1's and tier
    2's providers hold 200 tokens, so a longer conversation is decided at tier 3 and answered there; one that no
    provider holds is INVALID_ARGUMENT naming messages."""
    import grpc

    from tierwise.v1 import router_pb2 as pb
    from tierwise.v1 import router_pb2_grpc

    from .servers import KEY_ENV as ROUTER_KEY_ENV, router_config, running_router, start_classifier

    def message(role: str, content: str) -> pb.Message:
        return pb.Message(role=role, content=content)

    with ProviderDouble() as double:
        doc = router_config(double.base_url)
        for tier in doc["tiers"]:
            for p in tier["providers"]:
                p["context_window"] = {1: 200, 2: 200, 3: 2000}[tier["tier"]]
        classifier = start_classifier()
        try:
            with running_router(doc, classifier.address, tmp_path, env={ROUTER_KEY_ENV: "k"}) as router, \
                    grpc.insecure_channel(router.address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                plain = stub.Complete(pb.CompleteRequest(messages=[message("user", "hi")]), timeout=10)
                assert plain.decision.tier == plain.tier == 1
                coded = stub.Complete(pb.CompleteRequest(messages=[
                    message("user", "def f(x):\n    return x * 2"), message("assistant", "It doubles x."),
                    message("user", "hi")]), timeout=10)
                assert coded.decision.tier == coded.tier == 2
                assert "code earlier in the conversation" in coded.decision.reason
                long = stub.Complete(pb.CompleteRequest(messages=[message("system", "context " * 150),
                                                                  message("user", "hi")]), timeout=10)
                assert long.decision.tier == long.tier == 3 and "cannot hold about" in long.decision.reason
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Complete(pb.CompleteRequest(messages=[message("system", "w" * 9000), message("user", "hi")]),
                                  timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert refused.value.details().startswith("messages: the request needs about")
        finally:
            classifier.stop()
