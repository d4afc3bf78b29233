"""Conversation affinity (`affinity.ttl_s`): a conversation's later turns go no lower than its earlier ones, to the
provider that answered them while it can, each conversation known by its key and opening. A real router on
127.0.0.1; the provider double the only stand-in."""
from __future__ import annotations

import grpc
import pytest

from router_service.affinity import Affinity, Earlier
from router_service.config import AffinityConfig
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .exported_metrics import scrape, value
from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, router_config, running_router

SYSTEM = {"role": "system", "content": "You are terse."}


EASY = "heuristic"  # decides tier 1 for every later turn below: short, plain questions


def turns(opening: str, *later: str) -> list[dict]:
    """A conversation: the system prompt, the opening question, then an answer and a question for each of `later`."""
    messages = [SYSTEM, {"role": "user", "content": opening}]
    for question in later:
        messages += [{"role": "assistant", "content": "an earlier answer"}, {"role": "user", "content": question}]
    return messages


def test_a_conversation_is_its_key_and_opening_and_only_continuations_look_back():
    clock = [0.0]
    affinity = Affinity(AffinityConfig(ttl_s=60, max_entries=2), clock=lambda: clock[0])
    key = affinity.key(turns("plan a trip"), "team-a")
    assert affinity.key(turns("plan a trip", "and the hotel?", "and food?"), "team-a") == key
    assert affinity.key(turns("plan a trip"), "team-b") != key and affinity.key(turns("plan a holiday"), "team-a") != key
    affinity.answered(key, 3, "t3-a")
    assert affinity.earlier(key, turns("plan a trip")) is None, "a first turn asked again is a new conversation"
    assert affinity.earlier(key, turns("plan a trip", "and the hotel?")) == Earlier(3, "t3-a")
    clock[0] = 61
    assert affinity.earlier(key, turns("plan a trip", "and the hotel?")) is None, "past ttl_s it is forgotten"
    assert Affinity(AffinityConfig()).key(turns("plan a trip"), "") is None, "off by default"
    instructions = [{"role": "system", "content": "Write a haiku."}]  # no user message: a first turn too
    assert affinity.earlier(affinity.key(instructions, "team-a"), instructions) is None


@pytest.fixture(scope="module")
def router(double, tmp_path_factory):
    doc = router_config(double.base_url, affinity={"ttl_s": 60.0})
    doc["tiers"][0]["balance"] = "round_robin"
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path_factory.mktemp("affinity"), "--metrics-listen",
                        "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture(scope="module")
def stub(router):
    with grpc.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def complete(stub, messages: list[dict], strategy: str) -> pb.CompleteResponse:
    return stub.Complete(pb.CompleteRequest(messages=[pb.Message(**m) for m in messages], strategy=strategy),
                         timeout=20)


def test_later_turns_stay_at_the_tier_the_conversation_reached(router, stub, double):
    double.reset()
    before = {r: value(scrape(router), "tierwise_router_affinity_total", result=r) for r in ("raised", "held")}
    first = complete(stub, turns("prove it"), "tier3")
    later = complete(stub, turns("prove it", "thanks, and briefly?"), EASY)
    assert (first.tier, later.tier, later.model) == (3, 3, "t3-a")
    assert later.decision.reason.endswith("kept at tier 3: the conversation's earlier turns were answered there")
    higher = complete(stub, turns("hello"), EASY)
    assert higher.tier == 1 and complete(stub, turns("hello", "now prove it"), "tier2").tier == 2, \
        "a conversation may still move up"
    assert complete(stub, turns("hello", "now prove it", "ok"), EASY).tier == 2
    assert complete(stub, turns("another opening", "ok"), EASY).tier == 1, "no earlier turn seen: no floor"
    after = {r: value(scrape(router), "tierwise_router_affinity_total", result=r) for r in ("raised", "held")}
    assert (after["raised"] - before["raised"], after["held"] - before["held"]) == (2, 1)
    pinned = complete(stub, turns("prove it", "thanks, and briefly?", "and a list?"), "tier1")
    assert (pinned.tier, pinned.decision.reason) == (1, "always tier 1"), "a tier the caller named is not raised"


def test_each_conversation_keeps_its_provider_while_the_tier_spreads_them(stub, double):
    double.reset()
    providers = {}
    for n in range(4):
        opening = f"conversation {n}"
        replies = [complete(stub, turns(opening, *[f"turn {i}" for i in range(k)]), EASY) for k in range(3)]
        assert len({r.provider for r in replies}) == 1, f"{opening} changed provider: {[r.provider for r in replies]}"
        providers[opening] = replies[0].provider
    assert set(providers.values()) == {"t1-a", "t1-b"}, "round robin still spreads new conversations"


def test_a_failing_provider_does_not_hold_its_conversations(stub, double):
    double.reset()
    opening = "a conversation whose provider goes down"
    first = complete(stub, turns(opening), EASY)
    other = {"t1-a": "t1-b", "t1-b": "t1-a"}[first.provider]
    double.set_persistent(first.provider, Fault.http_error(503))
    try:
        moved = complete(stub, turns(opening, "still there?"), EASY)
    finally:
        double.set_persistent(first.provider, None)
    assert (moved.tier, moved.provider) == (1, other)
    assert complete(stub, turns(opening, "still there?", "and now?"), EASY).provider == other, \
        "the conversation follows the provider that answered it last"
