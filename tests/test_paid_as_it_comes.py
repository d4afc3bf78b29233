"""A key pays each provider answer when it comes, not when the call ends well: a cascade's rejected answer is paid
though the call then runs out of time, and a stream cut short is paid at the price of the tier and provider that
streamed it. A real router on 127.0.0.1 with a keys file and its metrics endpoint; the provider double stands in."""
from __future__ import annotations

import urllib.request

import grpc
import pytest

from router_service.tokens import estimate_tokens
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault, unused_port
from .servers import KEY_ENV, UNUSED_CLASSIFIER, router_config, running_router
from .test_router_complete import metric

KEY = "tw-paid-5c1e07a9b3d2f468"
AS_KEY = (("authorization", f"Bearer {KEY}"),)
TIER_PRICES = {1: (0.25, 1.25), 2: (3.0, 15.0)}  # router_config's, USD per million tokens in and out


@pytest.fixture
def router(tmp_path, double):
    double.reset()
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} id=payer\n")
    port = unused_port()
    doc = router_config(double.base_url, strategy="tier1")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--api-keys-file", str(keys), "--metrics-port", str(port),
                        env={KEY_ENV: "k"}) as served, grpc.insecure_channel(served.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel), port
    double.reset()


def paid(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    try:
        return metric(text, "tierwise_router_key_cost_USD_total", key_id="payer")
    except AssertionError:
        return 0.0


def counted(port: int) -> float:
    """The router's provider cost metric, every tier added up: what the spend and savings panels read."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tierwise_router_cost_USD_total{") and 'purpose="shadow"' not in line)


def test_a_rejected_answer_is_paid_though_the_call_then_runs_out_of_time(router, double):
    stub, port = router
    double.set_reply("t1-a", "I cannot help with that.")  # the surface gate rejects it
    double.set_persistent("t2-a", Fault.hang(3.0))
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(pb.CompleteRequest(messages=[pb.Message(role="user", content="What is 17 times 23?")],
                                         strategy="tier1+cascade"), timeout=1.5, metadata=AS_KEY)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(double.requests_for("t1-a")) == 1 and paid(port) > 0, "tier 1 answered and was paid"
    assert counted(port) == pytest.approx(paid(port)), "and counted in the cost metric"


def test_a_stream_cut_after_escalating_is_paid_at_the_tier_that_streamed(router, double):
    stub, port = router
    for model in ("t1-a", "t1-b"):
        double.set_persistent(model, Fault.http_error(500))
    reply = " ".join(["word"] * 400)
    double.set_reply("t2-a", reply)
    double.set_persistent("t2-a", Fault.disconnect_mid_stream(100))  # a quarter of it goes out
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.CompleteStream(pb.CompleteRequest(messages=[pb.Message(role="user", content="Go on.")]),
                                     timeout=20, metadata=AS_KEY):
            pass
    assert err.value.code() == grpc.StatusCode.ABORTED
    whole_at_tier_1 = (10 * TIER_PRICES[1][0] + estimate_tokens(reply) * TIER_PRICES[1][1]) / 1e6
    assert paid(port) > 2 * whole_at_tier_1, "a quarter of the reply at tier 2's price is three times all of it at tier 1's"
    assert counted(port) == pytest.approx(paid(port)), "and counted in the cost metric"
