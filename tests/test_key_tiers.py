"""An API key's `max_tier`: its calls are decided, failed over and escalated no higher than that tier, while other
keys keep every tier. A real router on 127.0.0.1 with a keys file; the provider double the only stand-in."""
from __future__ import annotations

import time

import grpc
import pytest

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, router_config, running_router

CHEAP_KEY, FULL_KEY = "tw-cheap-0123456789", "tw-full-0123456789"
BREAKER_COOLDOWN_S = 1.2  # router_config's breaker_cooldown_s, and a little more


@pytest.fixture(scope="module")
def stub(double, tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("key-tiers")
    keys = config_dir / "keys"
    keys.write_text(f"{CHEAP_KEY} id=cheap max_tier=1\n{FULL_KEY} id=full\n")
    with running_router(router_config(double.base_url), UNUSED_CLASSIFIER, config_dir, "--api-keys-file", str(keys),
                        env={KEY_ENV: "k"}) as router, grpc.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def ask(strategy: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")], strategy=strategy)


def as_key(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


def test_a_capped_key_is_decided_and_answered_at_its_max_tier(stub, double):
    double.reset()
    reply = stub.Complete(ask("tier3"), metadata=as_key(CHEAP_KEY), timeout=20)
    assert (reply.tier, reply.model) == (1, "t1-a")
    assert reply.decision.reason.endswith("held at tier 1: the API key's max_tier")
    streamed = list(stub.CompleteStream(ask("tier2"), metadata=as_key(CHEAP_KEY), timeout=20))
    assert streamed[-1].summary.tier == 1 and streamed[0].decision.tier == 1
    assert stub.Route(pb.RouteRequest(query="hi", strategy="tier3"), metadata=as_key(CHEAP_KEY), timeout=20).tier == 1
    assert stub.Complete(ask("tier3"), metadata=as_key(FULL_KEY), timeout=20).tier == 3
    assert not double.requests_for("t2-a") and len(double.requests_for("t3-a")) == 1


def test_failover_stops_at_the_key_max_tier(stub, double):
    double.reset()
    for model in ("t1-a", "t1-b"):
        double.set_persistent(model, Fault.http_error(503))
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Complete(ask("cheapest"), metadata=as_key(CHEAP_KEY), timeout=20)
        asked_above = len(double.requests_for("t2-a"))
        climbed = stub.Complete(ask("cheapest"), metadata=as_key(FULL_KEY), timeout=20)
    finally:
        for model in ("t1-a", "t1-b"):
            double.set_persistent(model, None)
        time.sleep(BREAKER_COOLDOWN_S)  # tier 1's breakers opened; their next call is a probe that closes them
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and asked_above == 0
    assert (climbed.tier, climbed.escalations) == (2, 1)


def test_the_gate_does_not_climb_past_the_key_max_tier(stub, double):
    double.reset()
    double.set_reply("t1-a", "")  # the surface gate rejects an empty answer
    try:
        kept = stub.Complete(ask("cheapest+cascade"), metadata=as_key(CHEAP_KEY), timeout=20)
        escalated = stub.Complete(ask("cheapest+cascade"), metadata=as_key(FULL_KEY), timeout=20)
    finally:
        double.set_reply("t1-a", None)
    assert (kept.tier, kept.escalations) == (1, 0), "the gate may not buy a tier the key does not have"
    assert (escalated.tier, escalated.escalations) == (2, 1)


def test_a_request_no_provider_under_the_cap_can_take_is_refused_naming_the_key(double, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{CHEAP_KEY} id=cheap max_tier=2\n")
    doc = router_config(double.base_url)
    for tier in doc["tiers"][:2]:
        for provider in tier["providers"]:
            provider["context_window"] = 100
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--api-keys-file", str(keys),
                        env={KEY_ENV: "k"}) as router, grpc.insecure_channel(router.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            router_pb2_grpc.RouterServiceStub(channel).Complete(
                pb.CompleteRequest(messages=[pb.Message(role="user", content="z" * 2000)], strategy="cheapest"),
                metadata=as_key(CHEAP_KEY), timeout=20)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no provider of tier 1 to 2 (the API key's max_tier) holds that many" in refused.value.details()


def test_a_capped_key_pays_no_judge_or_verifier_above_its_max_tier(double, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{CHEAP_KEY} id=cheap max_tier=2\n")
    doc = router_config(double.base_url, judge={"tier": 3}, cascade={"gate": "verify", "verifier_tier": 3})
    double.reset()
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--api-keys-file", str(keys),
                        env={KEY_ENV: "k"}) as router, grpc.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        judged = stub.Complete(ask("judge"), metadata=as_key(CHEAP_KEY), timeout=20)
        routed = stub.Route(pb.RouteRequest(query="hi", strategy="judge"), metadata=as_key(CHEAP_KEY), timeout=20)
        cascaded = stub.Complete(ask("cheapest+cascade"), metadata=as_key(CHEAP_KEY), timeout=20)
    assert not double.requests_for("t3-a"), "the frontier was never asked, to decide or to verify"
    for decision in (judged.decision, routed):
        assert decision.degraded and "judge not asked: its tier 3 is above the API key's max_tier 2" in decision.reason
    assert judged.tier <= 2
    assert (cascaded.tier, cascaded.escalations) == (2, 1), "the unverified tier-1 answer gave way to tier 2's"
    assert any(a.outcome == "gate_rejected" and "verifier not asked" in a.error for a in cascaded.attempts)


def cascade_once(doc: dict, tmp_path, double) -> tuple[pb.CompleteResponse, int]:
    """One Complete by `cascade` on a router of `doc`, and how often tier 3's provider was asked; the double is
    reset after."""
    try:
        with running_router(doc, UNUSED_CLASSIFIER, tmp_path, env={KEY_ENV: "k"}) as router, \
                grpc.insecure_channel(router.address) as channel:
            reply = router_pb2_grpc.RouterServiceStub(channel).Complete(ask("cascade"), timeout=20)
        return reply, len(double.requests_for("t3-a"))
    finally:
        double.reset()


def test_a_cascades_max_tier_holds_its_failover_too(double, tmp_path):
    doc = router_config(double.base_url, cascade={"start": "cheapest", "gate": "surface", "max_tier": 2})
    double.reset()
    double.set_persistent("t2-a", Fault.http_error(503))
    double.set_reply("t1-a", "")  # the surface gate rejects an empty answer: escalate to tier 2, which fails
    reply, asked_above = cascade_once(doc, tmp_path, double)
    assert asked_above == 0, "cascade.max_tier 2: no frontier answer, not even on failover"
    assert reply.tier == 1, "the rejected answer, for want of a better one under the cascade's max_tier"


def test_a_cascades_max_tier_leaves_its_verifier_to_the_keys_cap_alone(double, tmp_path):
    """A frontier verifier checking answers capped at tier 2: cascade.max_tier caps the answers, not the verifier."""
    doc = router_config(double.base_url, cascade={"start": "cheapest", "gate": "verify", "verifier_tier": 3,
                                                  "max_tier": 2})
    double.reset()
    double.set_reply("t3-a", '{"acceptable": true}')
    reply, verified = cascade_once(doc, tmp_path, double)
    assert (reply.tier, reply.escalations, verified) == (1, 0, 1), "the tier-3 verifier passed the tier-1 answer"
