"""RouterService.Route against a real classifier and a real router, both on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import shutil
import signal
import time
from contextlib import contextmanager

import grpc
import pytest
import yaml

from classifier_service.config import Config
from classifier_service.heads import TierHead
from tierwise.v1 import classifier_pb2, classifier_pb2_grpc
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import LONG_QUERY, MISSED_BUDGET_MS, ROOT, running_router, start_classifier


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


def test_a_query_longer_than_the_classifier_takes_is_classified_on_its_start(route):
    """The router takes 256 KiB a message, the classifier 32 KiB a text: the head decides on the part the encoder
    reads, the same as for the query's first few hundred tokens alone, instead of degrading to the heuristic."""
    start = "Explain the difference between a process and a thread, with examples. "
    long, short = (route(pb.RouteRequest(query=q), timeout=10) for q in (start + "é" * 40_000, start + "é" * 600))
    assert not long.degraded and long.strategy == "embedding", long.reason
    assert long.tier == short.tier and list(long.probabilities) == pytest.approx(list(short.probabilities), abs=1e-4)


def test_a_router_beside_its_classifier_reaches_it_over_a_unix_socket(tmp_path):
    """gRPC's `unix:` addresses work on both ends; the ready line names the socket, as it names a port."""
    socket_path = tmp_path / "classifier.sock"
    classifier = start_classifier("--listen", f"unix:{socket_path}")
    try:
        assert classifier.address == f"unix:{socket_path}" and socket_path.exists()
        with running_router(example_config(), classifier.address, tmp_path) as router, \
                grpc.insecure_channel(router.address) as channel:
            reply = router_pb2_grpc.RouterServiceStub(channel).Route(pb.RouteRequest(query="What is 2 + 2?"), timeout=5)
        assert reply.strategy == "embedding" and not reply.degraded and len(reply.probabilities) == 3
    finally:
        classifier.stop()


def test_a_query_unlike_the_heads_training_data_goes_to_tier_3_and_says_why(route):
    # The routerbench lineup's head learned from ARC, Winogrande and MBPP questions; a poem request is
    # nothing like them, so its probabilities are not trusted (decision 0008). Support margin -0.177 measured.
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


def test_decisions_are_the_classifiers_again_within_seconds_of_its_return(tmp_path):
    """gRPC's default reconnect backoff grows to minutes: after a ten-second outage the router would decide with
    the heuristic for several seconds more (5-14 s in the soak test). Its channel tries again every second."""
    classifier = start_classifier()
    address = classifier.address
    try:
        with running_router(example_config(), address, tmp_path) as router, \
                grpc.insecure_channel(router.address) as channel:
            route = router_pb2_grpc.RouterServiceStub(channel).Route
            assert not route(pb.RouteRequest(query="Is water wet?"), timeout=5).degraded
            classifier.stop()
            outage_ends = time.monotonic() + 10
            while time.monotonic() < outage_ends:  # calls keep the channel trying, as traffic would
                assert route(pb.RouteRequest(query="Is water wet?"), timeout=5).degraded
                time.sleep(0.5)
            classifier = start_classifier("--listen", address)
            back = time.monotonic()
            while route(pb.RouteRequest(query="Is water wet?"), timeout=5).degraded and time.monotonic() - back < 10:
                time.sleep(0.1)
            assert time.monotonic() - back < 3.0, f"degraded for {time.monotonic() - back:.1f} s after its return"
    finally:
        classifier.stop()


def test_a_configured_head_the_classifier_lacks_degrades_the_decision_not_the_callers_request(services, tmp_path):
    doc = example_config()
    doc["classifier"] = {**doc.get("classifier", {}), "head": "not-served-here"}
    with running_router(doc, services[0].address, tmp_path) as router, grpc.insecure_channel(router.address) as channel:
        route = router_pb2_grpc.RouterServiceStub(channel).Route
        reply = route(pb.RouteRequest(query="Is water wet?"), timeout=5)
        assert reply.degraded and "serves no head 'not-served-here' (classifier.head)" in reply.reason
        with pytest.raises(grpc.RpcError) as err:  # a head the caller names is still the caller's to fix
            route(pb.RouteRequest(query="Is water wet?", head="nor-this-one"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("head:")


def test_a_cascade_with_a_start_tradeoff_starts_where_the_head_decides_at_it(services, tmp_path):
    """cascade.start_tradeoff reaches the classifier: at a high price of cost the embedding start picks tier 1,
    while the plain embedding strategy keeps the head's calibrated tradeoff."""
    doc = example_config()
    doc["cascade"] = {**doc.get("cascade", {}), "start": "embedding", "start_tradeoff": 100.0}
    query = "What is the capital of Spain, and why is it there?"
    with running_router(doc, services[0].address, tmp_path) as router, grpc.insecure_channel(router.address) as channel:
        route = router_pb2_grpc.RouterServiceStub(channel).Route
        started = route(pb.RouteRequest(query=query, strategy="cascade"), timeout=5)
        plain = route(pb.RouteRequest(query=query, strategy="embedding"), timeout=5)
    assert started.tier == 1 and tuple(started.thresholds) == (100.0,) and "less 100 x relative cost" in started.reason
    assert plain.thresholds[0] != 100.0 and list(plain.probabilities) == list(started.probabilities)


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
    config["classifier"]["timeout_ms"] = MISSED_BUDGET_MS
    try:
        with running_router(config, classifier.address, tmp_path) as router:
            with grpc.insecure_channel(router.address) as channel:
                reply = router_pb2_grpc.RouterServiceStub(channel).Route(pb.RouteRequest(query=LONG_QUERY), timeout=5)
            assert reply.degraded and "classifier deadline_exceeded" in reply.reason
    finally:
        classifier.stop()


def test_a_caller_deadline_inside_the_classifier_budget_still_gets_a_degraded_decision(tmp_path):
    """A stalled classifier (stopped, its socket open) is given only part of the caller's time: the rest answers."""
    classifier = start_classifier()
    config = example_config()
    config["classifier"]["timeout_ms"] = 2000
    try:
        with running_router(config, classifier.address, tmp_path) as router, \
                grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert not stub.Route(pb.RouteRequest(query=LONG_QUERY), timeout=10).degraded
            classifier.proc.send_signal(signal.SIGSTOP)
            try:
                reply = stub.Route(pb.RouteRequest(query="Is water wet?"), timeout=0.5)
            finally:
                classifier.proc.send_signal(signal.SIGCONT)
            assert reply.degraded and "classifier deadline_exceeded" in reply.reason
    finally:
        classifier.stop()


QUERY = pb.RouteRequest(query="Summarise the causes of the French Revolution.")


@contextmanager
def lineup_stack(tmp_path, refresh_s: float, mine_at_start: bool):
    """A classifier reloading a temporary heads directory (the default head, and with `mine_at_start` a head
    "mine" trained on the router's lineup) and a router naming no head: yields (Route, heads dir, default, mine)."""
    heads = tmp_path / "heads"
    default = TierHead.load(Config().heads_dir / "default" / "head.json")
    default.save(heads / "default" / "head.json")
    config = example_config()
    config["classifier"]["head_refresh_s"] = refresh_s
    lineup = tuple(t["providers"][0]["model"] for t in sorted(config["tiers"], key=lambda t: t["tier"]))
    # Prices cost far above quality, so it answers tier 1.
    mine = dataclasses.replace(default, name="mine", version="mine-1", models=lineup, tradeoff=100.0,
                               support=None, calibration={})
    if mine_at_start:
        mine.save(heads / "mine" / "head.json")
    classifier = start_classifier("--heads-dir", str(heads), "--heads-reload-seconds", "0.2")
    try:
        with running_router(config, classifier.address, tmp_path) as router, \
                grpc.insecure_channel(router.address) as channel:
            yield router, router_pb2_grpc.RouterServiceStub(channel).Route, classifier, heads, default, mine
    finally:
        classifier.stop()


def wait_until(check, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_router_naming_no_head_switches_to_its_lineups_head_once_the_classifier_serves_it(tmp_path):
    """A head promoted into the classifier's directory is used with no restart and no config change."""
    with lineup_stack(tmp_path, refresh_s=0.2, mine_at_start=False) as (router, route, _, heads, default, mine):
        assert route(QUERY, timeout=5).head_version == default.version
        assert "head=the classifier's default" in "".join(router.output)
        mine.save(heads / "mine" / "head.json")
        wait_until(lambda: route(QUERY, timeout=5).head_version == "mine-1")
        reply = route(QUERY, timeout=5)
        assert reply.head_version == "mine-1" and reply.tier == 1 and not reply.degraded
        router.wait_for("classifier head for this lineup: mine")
        named = route(pb.RouteRequest(query=QUERY.query, head="default"), timeout=5)
        assert named.head_version == default.version, "a head the request names still wins"


def test_when_the_lineups_head_leaves_the_classifier_requests_fall_back_to_its_default_not_fail(tmp_path):
    # The router finds "mine" at start-up and will not look again during this test.
    with lineup_stack(tmp_path, refresh_s=3600, mine_at_start=True) as (router, route, classifier, heads, default, _):
        assert "head=mine (this lineup's)" in "".join(router.output)
        assert route(QUERY, timeout=5).head_version == "mine-1"
        shutil.rmtree(heads / "mine")
        with grpc.insecure_channel(classifier.address) as channel:
            list_heads = classifier_pb2_grpc.ClassifierServiceStub(channel).ListHeads
            wait_until(lambda: len(list_heads(classifier_pb2.ListHeadsRequest(), timeout=5).heads) == 1)
        reply = route(QUERY, timeout=5)
        assert reply.head_version == default.version and not reply.degraded, "answered by the default, not an error"
        assert route(QUERY, timeout=5).head_version == default.version


def test_a_router_keeping_the_classifier_hop_warm_routes_and_stops_cleanly(services, tmp_path):
    config = example_config()
    config["classifier"]["keep_warm_ms"] = 10
    with running_router(config, services[0].address, tmp_path) as router:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            time.sleep(0.2)  # idle: the router checks the classifier's health meanwhile
            reply = stub.Route(pb.RouteRequest(query="What is the capital of France?", strategy="embedding"),
                               timeout=10)
    assert reply.tier in (1, 2, 3) and not reply.degraded
