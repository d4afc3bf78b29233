"""A caller's quality target: a request held to 0.99 of the frontier's quality, or a batch job to 0.9, decides at
the head's tradeoff calibrated for that target. Over gRPC (Route, Complete), the HTTP APIs (a body field, or a model
name the configuration maps to a target), API keys and the cascade's start. A target between calibrated ones decides
at the least calibrated target above it; one above them all, or out of range, is refused naming the field. A real classifier and router; the provider double the only stand-in."""
from __future__ import annotations

import grpc
import openai
import pytest

from router_service.config import ConfigError, parse
from tierwise.v1 import classifier_pb2
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import KEY_ENV, http_address, openai_client, post, router_config, running_router

# With the shipped default head, measured: tier 1 at the 0.9 and 0.95 tradeoffs (by 0.083 and 0.070 of probability
# over the next tier) and tier 3 at the 0.99 one (by 0.091), support margin +0.13: far from a boundary on any CPU.
QUERY = "Who painted the Mona Lisa?"
MODELS = [{"name": "economy", "quality_target": 0.9}, {"name": "critical", "quality_target": 0.99}]


@pytest.fixture(scope="module")
def router(double, classifier, tmp_path_factory):
    doc = router_config(double.base_url, strategy="embedding", http={"models": MODELS},
                        cascade={"start": "embedding", "gate": "surface", "max_tier": 3, "start_tradeoff": 100.0})
    with running_router(doc, classifier.address, tmp_path_factory.mktemp("target"), "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture(scope="module")
def calibration(stub) -> dict[str, float]:
    heads = stub.ListHeads(classifier_pb2.ListHeadsRequest(), timeout=10)
    return dict(next(h for h in heads.heads if h.name == heads.default_head).calibration)


@pytest.fixture()
def router_stub(router):
    with grpc.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def test_route_decides_at_the_tradeoff_calibrated_for_the_target(router_stub, calibration):
    at = {q: router_stub.Route(pb.RouteRequest(query=QUERY, quality_target=q), timeout=10) for q in (0.9, 0.95, 0.99)}
    default = router_stub.Route(pb.RouteRequest(query=QUERY), timeout=10)
    assert [at[q].tier for q in at] == [1, 1, 3] and default.tier == 1
    assert [at[q].thresholds[0] for q in at] == pytest.approx([calibration[f"{q:g}"] for q in at])
    assert not any(r.degraded for r in at.values())
    assert at[0.99].reason.endswith("calibrated for quality 0.99 of the frontier")
    assert "calibrated for quality" not in default.reason
    between = router_stub.Route(pb.RouteRequest(query=QUERY, quality_target=0.97), timeout=10)
    assert (between.tier, between.thresholds[0]) == (3, pytest.approx(calibration["0.99"]))
    assert between.reason.endswith("calibrated for quality 0.99 of the frontier (asked 0.97)")


def test_a_strategy_without_a_calibrated_head_decides_as_it_always_does(router_stub):
    plain = router_stub.Route(pb.RouteRequest(query=QUERY, strategy="heuristic"), timeout=10)
    held = router_stub.Route(pb.RouteRequest(query=QUERY, strategy="heuristic", quality_target=0.99), timeout=10)
    assert (held.tier, held.reason) == (plain.tier, plain.reason) and not held.degraded


def test_a_target_outranks_the_cascades_configured_start(router_stub, calibration):
    started = router_stub.Route(pb.RouteRequest(query=QUERY, strategy="cascade"), timeout=10)
    held = router_stub.Route(pb.RouteRequest(query=QUERY, strategy="cascade", quality_target=0.99), timeout=10)
    assert (started.tier, tuple(started.thresholds)) == (1, (100.0,))
    assert held.tier == 3 and held.thresholds[0] == pytest.approx(calibration["0.99"])


@pytest.mark.parametrize("target, says", [
    (0.995, "quality_target: head default has no tradeoff calibrated for quality 0.995 or above (it has: 0.9, 0.95, "
            "0.99)"),
    (1.5, "quality_target: must be above 0 and at most 1"),
    (0.0, "quality_target: must be above 0 and at most 1"),
    (float("nan"), "quality_target: must be above 0 and at most 1"),
])
def test_a_target_the_head_cannot_keep_is_refused_not_degraded(router_stub, target, says):
    for call, request in ((router_stub.Route, pb.RouteRequest(query=QUERY, quality_target=target)),
                          (router_stub.Complete, pb.CompleteRequest(messages=[pb.Message(role="user", content=QUERY)],
                                                                    quality_target=target))):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(says), err.value.details()


def test_a_target_too_small_for_six_digits_is_decided_at_the_lowest_calibrated_one(router_stub):
    tiny = router_stub.Route(pb.RouteRequest(query=QUERY, quality_target=1e-9), timeout=10)
    lowest = router_stub.Route(pb.RouteRequest(query=QUERY, quality_target=0.9), timeout=10)
    assert tiny.tier == lowest.tier and tiny.thresholds == lowest.thresholds


def test_complete_answers_at_the_targets_tier(router_stub, double):
    double.reset()
    messages = [pb.Message(role="user", content=QUERY)]
    cheap = router_stub.Complete(pb.CompleteRequest(messages=messages, quality_target=0.9), timeout=20)
    strict = router_stub.Complete(pb.CompleteRequest(messages=messages, quality_target=0.99), timeout=20)
    assert (cheap.tier, strict.tier) == (1, 3) and strict.model == "t3-a"


def test_http_model_names_carry_a_target_and_a_body_overrides_it(router, double):
    double.reset()
    sdk = openai_client(router)

    def ask(model: str, **extra):
        raw = sdk.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": QUERY}], extra_body=extra or None)
        return raw.headers["x-tierwise-tier"]

    assert (ask("economy"), ask("critical"), ask("tierwise")) == ("1", "3", "1")
    assert ask("economy", quality_target=0.99) == "3" and ask("tierwise", quality_target=0.99) == "3"
    status, headers, _ = post(http_address(router), b'{"model": "critical", "quality_target": null, '
                              b'"messages": [{"role": "user", "content": "Who painted the Mona Lisa?"}]}')
    assert (status, headers["x-tierwise-tier"]) == (200, "3"), "a null target in the body leaves the name's"
    responses = sdk.responses.with_raw_response.create(model="critical", input=QUERY)
    assert responses.headers["x-tierwise-tier"] == "3"
    for bad, says in (("high", "quality_target: must be a number"), (True, "quality_target: must be a number"),
                      (2, "quality_target: must be above 0 and at most 1")):
        with pytest.raises(openai.BadRequestError) as err:
            ask("tierwise", quality_target=bad)
        assert err.value.body["param"] == "quality_target" and err.value.body["message"].startswith(says)
    status, _, body = post(http_address(router), b'{"model": "economy", "max_tokens": 20, "quality_target": 0.995, '
                           b'"messages": [{"role": "user", "content": "hi"}]}', path="/v1/messages")
    assert status == 400 and body["error"]["message"].startswith("quality_target: head default has no tradeoff")


def test_an_api_key_holds_its_calls_to_its_target_unless_they_set_one(double, classifier, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("tw-critical-0123456789 id=critical quality_target=0.99\ntw-plain-0123456789 id=plain\n")
    with running_router(router_config(double.base_url, strategy="embedding"), classifier.address, tmp_path,
                        "--api-keys-file", str(keys), env={KEY_ENV: "k"}) as router, \
            grpc.insecure_channel(router.address) as channel:
        route = router_pb2_grpc.RouterServiceStub(channel).Route

        def tier(key: str, **target) -> int:
            return route(pb.RouteRequest(query=QUERY, **target), metadata=(("authorization", f"Bearer {key}"),),
                         timeout=10).tier

        assert tier("tw-critical-0123456789") == 3 and tier("tw-critical-0123456789", quality_target=0.9) == 1
        assert tier("tw-plain-0123456789") == 1


def test_the_configuration_refuses_a_target_out_of_range(double):
    for value, says in ((1.5, "must be above 0 and at most 1"), ("0.9", "expected a number")):
        with pytest.raises(ConfigError) as err:
            parse(router_config(double.base_url, http={"models": [{"name": "m", "quality_target": value}]}))
        assert str(err.value).startswith(f"http.models[0].quality_target: {says}"), str(err.value)
    cfg = parse(router_config(double.base_url, http={"models": MODELS}))
    assert cfg.http.model_names().route_of("critical") == ("", 0.99)

