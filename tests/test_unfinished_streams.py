"""A stream its caller drops before the summary: the key still pays for what it got (a monthly spend limit cannot be
dodged by cancelling just before the end), and the router logs no error for an ordinary disconnect."""
from __future__ import annotations

import http.client
import json
import signal
import threading

import grpc
import pytest

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, router_config, running_router

KEY = "tw-stream-0123456789abcdef"
LONG = " ".join(["word"] * 4000)
ASK = [pb.Message(role="user", content="Write at length.")]


@pytest.fixture
def router(tmp_path, double):
    double.reset()
    double.set_reply("t1-a", LONG)
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} id=streamer monthly_usd=0.000001\n")  # any charge at all puts it over
    doc = router_config(double.base_url, strategy="tier1")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", "--api-keys-file",
                        str(keys), env={KEY_ENV: "k"}) as served:
        yield served
    double.reset()


def over_its_limit(router) -> bool:
    """Asked with a Complete that holds no message, which costs nothing: refused at the front door when the key is
    over its limit, else refused as invalid after it (a Route would not tell: it is free, so never refused)."""
    with grpc.insecure_channel(router.address) as channel:
        try:
            router_pb2_grpc.RouterServiceStub(channel).Complete(pb.CompleteRequest(), timeout=20,
                                                                 metadata=(("authorization", f"Bearer {KEY}"),))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return False
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "monthly spend limit" in err.details()
            return True
    raise AssertionError("a Complete without messages was answered")


def test_a_grpc_stream_cancelled_before_its_summary_is_charged_and_logs_no_error(router):
    before = len(router.output)
    assert not over_its_limit(router)
    with grpc.insecure_channel(router.address) as channel:
        events = router_pb2_grpc.RouterServiceStub(channel).CompleteStream(
            pb.CompleteRequest(messages=ASK), timeout=20, metadata=(("authorization", f"Bearer {KEY}"),))
        deltas = 0
        for event in events:
            deltas += event.WhichOneof("event") == "delta"
            if deltas == 100:
                break
        events.cancel()
    assert deltas == 100
    assert eventually_over(router), "what the stream delivered was charged to the key"
    logged = router.output[before:]
    assert not [line for line in logged if '"level": "error"' in line], logged


def test_an_http_stream_the_client_drops_is_charged(router):
    assert not over_its_limit(router)
    conn = http.client.HTTPConnection(http_address(router), timeout=20)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "stream": True, "messages": [
        {"role": "user", "content": "Write at length."}]}), {"authorization": f"Bearer {KEY}",
                                                             "content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.read(2000)  # part of the answer, then the client goes away
    conn.close()
    assert eventually_over(router), "the dropped HTTP stream was charged to the key"


def test_a_client_gone_while_sending_its_body_is_a_cancelled_call_not_an_error(router):
    before = len(router.output)
    for _ in range(3):
        conn = http.client.HTTPConnection(http_address(router), timeout=20)
        conn.putrequest("POST", "/v1/chat/completions")
        for name, value in (("authorization", f"Bearer {KEY}"), ("content-type", "application/json"),
                            ("content-length", "200")):
            conn.putheader(name, value)
        conn.endheaders(b'{"model": "tierwise", "messages": [')  # 100 bytes short of what it promised
        conn.close()
    assert not over_its_limit(router), "the router is up and nothing was charged"
    logged = router.output[before:]
    assert not [line for line in logged if '"level": "error"' in line or "Traceback" in line], logged


def eventually_over(router) -> bool:
    """Whether the key is over its limit within 5 s: the router learns of a cancel, or a disconnect at its next
    write, a moment after the client."""
    for _ in range(100):
        if over_its_limit(router):
            return True
        threading.Event().wait(0.05)
    return False


def test_an_http_stream_cut_at_the_end_of_the_grace_is_in_the_ledger_it_leaves(tmp_path, double):
    """At SIGTERM a stream still going when shutdown.grace_s ends is cut; what it delivered is charged as it unwinds,
    which must happen before the router writes its spend ledger for the last time."""
    double.reset()
    double.set_reply("t1-a", LONG)
    double.script("t1-a", Fault.stall_mid_stream(after_chunks=200, delay_s=10))
    keys, ledger = tmp_path / "keys", tmp_path / "ledger.json"
    keys.write_text(f"{KEY} id=streamer\n")
    doc = router_config(double.base_url, strategy="tier1", shutdown={"grace_s": 1.0}, spend={"ledger": str(ledger)},
                        timeout_s=20.0)
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", "--api-keys-file",
                        str(keys), env={KEY_ENV: "k"}) as router:
        conn = http.client.HTTPConnection(http_address(router), timeout=20)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "stream": True, "messages": [
            {"role": "user", "content": "Write at length."}]}), {"authorization": f"Bearer {KEY}",
                                                                 "content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.read(2000)
        router.proc.send_signal(signal.SIGTERM)
        assert router.proc.wait(20) == 0
        conn.close()
    assert json.loads(ledger.read_text())["usd"].get("key:streamer", 0) > 0, ledger.read_text()
    double.reset()
