"""RouterService.Route against a real classifier and a real router, both on 127.0.0.1."""
from __future__ import annotations

import grpc
import pytest
import yaml

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import ROOT, running_router, start_classifier


def example_config() -> dict:
    return yaml.safe_load((ROOT / "tierwise.example.yaml").read_text())


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    classifier = start_classifier()
    with running_router(example_config(), classifier.address, tmp_path_factory.mktemp("router")) as router:
        yield classifier, router
    classifier.stop()


@pytest.fixture
def route(services):
    with grpc.insecure_channel(services[1].address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel).Route


def test_embedding_route_uses_the_classifier_and_its_calibration(route):
    reply = route(pb.RouteRequest(query="What is the capital of France?"), timeout=5)
    assert reply.strategy == "embedding" and not reply.degraded
    assert len(reply.probabilities) == 3 and reply.head_version.startswith("default-")
    assert len(reply.thresholds) == 1 and reply.tier in (1, 2, 3) and "relative cost" in reply.reason
    assert reply.model == {1: "gpt-4o-mini", 2: "gpt-4o", 3: "o1"}[reply.tier]
    assert reply.estimated_cost_usd > 0 and reply.decision_ms > 0


def test_a_query_unlike_the_heads_training_data_goes_to_tier_3_and_says_why(route):
    # The routerbench lineup's head learned from ARC, Winogrande and MBPP questions; a poem request is
    # nothing like them, so its probabilities are not trusted (decision 0008).
    reply = route(pb.RouteRequest(query="Compose a sonnet about autumn rain in Kyoto.", head="mistral7b-gpt35-gpt4"),
                  timeout=5)
    assert reply.tier == 3 and not reply.degraded and reply.head_version.startswith("mistral7b-gpt35-gpt4-")
    assert "unlike the head's training queries" in reply.reason, reply.reason


def test_heuristic_route_explains_itself(route):
    easy = route(pb.RouteRequest(query="hi there", strategy="heuristic"), timeout=5)
    hard = route(pb.RouteRequest(query="Prove the theorem step by step, then analyze the algorithm's complexity. "
                                       "Why does it hold? What breaks without it?", strategy="heuristic"), timeout=5)
    assert (easy.tier, hard.tier) == (1, 3)
    assert "keyword" in hard.reason and not hard.probabilities
    assert hard.estimated_cost_usd > easy.estimated_cost_usd


@pytest.mark.parametrize("request_, field", [
    (pb.RouteRequest(query=""), "query"),
    (pb.RouteRequest(query="   "), "query"),
    (pb.RouteRequest(query="hi", strategy="telepathy"), "strategy"),
    (pb.RouteRequest(query="hi", head="no-such-head"), "head"),
])
def test_bad_route_input_is_invalid_argument(route, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        route(request_, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_classifier_down_degrades_to_heuristic_and_still_answers(tmp_path):
    classifier = start_classifier()
    try:
        with running_router(example_config(), classifier.address, tmp_path) as router, \
                grpc.insecure_channel(router.address) as channel:
            route = router_pb2_grpc.RouterServiceStub(channel).Route
            assert not route(pb.RouteRequest(query="Is water wet?"), timeout=5).degraded
            assert classifier.stop() == 0
            replies = [route(pb.RouteRequest(query=f"Is water wet? ({i})"), timeout=5) for i in range(3)]
            for reply in replies:
                assert reply.degraded and reply.strategy == "embedding"
                assert "fell back to heuristic" in reply.reason and reply.tier in (1, 2, 3)
    finally:
        classifier.stop()


def test_router_health_and_reflection(services):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(services[1].address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tierwise.v1.RouterService"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert "tierwise.v1.RouterService" in ProtoReflectionDescriptorDatabase(channel).get_services()


def test_classifier_slower_than_its_budget_degrades(tmp_path):
    classifier = start_classifier()
    config = example_config()
    config["classifier"]["timeout_ms"] = 0.01  # no real classifier answers in 10 microseconds
    try:
        with running_router(config, classifier.address, tmp_path) as router:
            with grpc.insecure_channel(router.address) as channel:
                reply = router_pb2_grpc.RouterServiceStub(channel).Route(pb.RouteRequest(query="Is water wet?"),
                                                                         timeout=5)
            assert reply.degraded and "classifier deadline_exceeded" in reply.reason
    finally:
        classifier.stop()
