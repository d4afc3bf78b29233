"""Idempotency keys (`idempotency-key` over gRPC and HTTP): a Complete whose caller went away mid-call goes on, and
its retry with the same key gets its answer without asking a provider again; the same key with another request,
from another API key, or after the first call failed behaves as the docs say. Real routers on 127.0.0.1 with the
provider double as the only stand-in; the store's bounds with an injected clock."""
from __future__ import annotations

import http.client
import json
import signal
import threading
import time

import grpc
import pytest

from tierwise_client import ClientOptions, RouterClient
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .exported_metrics import scrape, value, wait_until
from .otlp_receiver import OtlpReceiver, attributes
from .provider_double import Fault, ProviderDouble
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, router_config, running_router
from .tcp_proxy import TcpProxy
from .test_access_log import access_lines
from .test_router_complete import ask

KEYS = ("tw-once-one-4d2a", "tw-once-two-8e1b", "tw-once-spent-7f3c")
MODELS = ("t1-a", "t1-b", "t2-a", "t3-a")
SLOW_S = 1.0  # the provider's answer to a call its caller leaves; well under the providers' 2 s timeout


@pytest.fixture(scope="module")
def router(tmp_path_factory, double):
    workdir = tmp_path_factory.mktemp("once")
    keys = workdir / "keys"
    keys.write_text("".join(f"{key} id=k{i}\n" for i, key in enumerate(KEYS[:2]))
                    + f"{KEYS[2]} id=spent monthly_usd=0.000001 rpm=3\n")  # any charge at all puts it over
    with running_router(router_config(double.base_url, strategy="cheapest"), UNUSED_CLASSIFIER, workdir,
                        "--http-listen", "127.0.0.1:0", "--api-keys-file", str(keys), "--metrics-listen",
                        "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        yield router


@pytest.fixture()
def stub(router, double):
    double.reset()
    with grpc.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)
    double.reset()


def metadata(once: str, key: str = KEYS[0]) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}"), ("idempotency-key", once)]


def asked(double, n: int, within_s: float = 10.0) -> bool:
    """Whether the provider has been asked `n` times, waiting a bounded while for it."""
    give_up = time.monotonic() + within_s
    while len(double.requests_for("t1-a")) < n and time.monotonic() < give_up:
        time.sleep(0.01)
    return len(double.requests_for("t1-a")) >= n


def replayed(call) -> bool:
    return ("idempotent-replayed", "true") in tuple(call.trailing_metadata() or ())


def test_a_retry_of_a_call_whose_caller_left_gets_its_answer_and_pays_nothing_again(stub, double, router):
    double.script("t1-a", Fault.delay(SLOW_S))
    before = len(router.output)
    request = ask("What is the boiling point of water?", "cheapest")
    first = stub.Complete.future(request, timeout=10, metadata=metadata("dropped-1"))
    assert asked(double, 1)
    first.cancel()  # the connection is gone; the provider is answering all the same
    answer, call = stub.Complete.with_call(request, timeout=10, metadata=metadata("dropped-1"))
    assert answer.content.startswith("answer from t1-a") and answer.cost_usd > 0
    assert replayed(call)
    assert len(double.requests_for("t1-a")) == 1, "the provider was asked once"
    logged = router.output[before:]
    assert not [line for line in logged if '"level": "error"' in line or "ended span" in line], logged


def test_the_python_client_retries_a_dropped_complete_with_its_key_and_it_is_paid_once(stub, double, router):
    double.script("t1-a", Fault.delay(SLOW_S))
    options = ClientOptions(backoff_s=0.05, metadata=(("authorization", f"Bearer {KEYS[0]}"),))
    with TcpProxy(router.address) as proxy, RouterClient(proxy.address, options) as tw:
        cutter = threading.Thread(target=lambda: asked(double, 1) and proxy.cut())
        cutter.start()
        answer = tw.complete("What is the speed of light?", strategy="cheapest")
        cutter.join()
    assert answer.content.startswith("answer from t1-a")
    assert len(double.requests_for("t1-a")) == 1, "the retry got the first attempt's answer"
    answers = {tw_answer.content for tw_answer in twice_without_a_key(router)}
    assert len(double.requests_for("t1-a")) == 3 and len(answers) == 1, "each call its own key"


def twice_without_a_key(router) -> list[pb.CompleteResponse]:
    options = ClientOptions(metadata=(("authorization", f"Bearer {KEYS[0]}"),))
    with RouterClient(router.address, options) as tw:
        return [tw.complete("What is the speed of sound?", strategy="cheapest") for _ in range(2)]


def test_calls_with_the_same_key_at_once_share_one_answer(stub, double):
    double.script("t1-a", Fault.delay(SLOW_S))
    request = ask("Name three rivers.", "cheapest")
    calls = [stub.Complete.future(request, timeout=10, metadata=metadata("together-1")) for _ in range(3)]
    answers = [call.result() for call in calls]
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    assert sorted(replayed(call) for call in calls) == [False, True, True]
    assert len(double.requests_for("t1-a")) == 1


def test_without_a_key_or_with_another_each_call_pays(stub, double):
    request = ask("What is the capital of Peru?", "cheapest")
    stub.Complete(request, timeout=10, metadata=[("authorization", f"Bearer {KEYS[0]}")])
    stub.Complete(request, timeout=10, metadata=[("authorization", f"Bearer {KEYS[0]}")])
    stub.Complete(request, timeout=10, metadata=metadata("mine-1"))
    stub.Complete(request, timeout=10, metadata=metadata("mine-1", KEYS[1]))  # another API key's namesake
    stub.Complete(request, timeout=10, metadata=metadata("mine-2"))
    assert len(double.requests_for("t1-a")) == 5


def test_a_key_sent_again_with_another_request_is_refused_naming_it(stub, double):
    stub.Complete(ask("What is 2 + 2?", "cheapest"), timeout=10, metadata=metadata("reused-1"))
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(ask("What is 3 + 3?", "cheapest"), timeout=10, metadata=metadata("reused-1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency-key" in err.value.details()
    assert len(double.requests_for("t1-a")) == 1


def test_a_call_that_failed_is_asked_again_by_its_retry(stub, double):
    request = ask("Spell 'router' backwards.", "cheapest")
    for model in MODELS:
        double.set_persistent(model, Fault.http_error(400))  # this time every provider refuses it
    with pytest.raises(grpc.RpcError):
        stub.Complete(request, timeout=10, metadata=metadata("failed-1"))
    for model in MODELS:
        double.set_persistent(model, None)
    asked_before = len(double.requests_for("t1-a"))
    answer, call = stub.Complete.with_call(request, timeout=10, metadata=metadata("failed-1"))
    assert answer.content and not replayed(call)
    assert len(double.requests_for("t1-a")) == asked_before + 1


def test_the_work_a_caller_left_is_traced_in_a_span_of_its_own(tmp_path):
    with OtlpReceiver() as receiver, ProviderDouble() as double:
        env = {KEY_ENV: "k", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        doc = router_config(double.base_url, strategy="cheapest", telemetry={"access_log": True})
        with running_router(doc, UNUSED_CLASSIFIER, tmp_path, env=env) as router, \
                grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            double.script("t1-a", Fault.delay(SLOW_S))
            request = ask("What is the tallest mountain?", "cheapest")
            first = stub.Complete.future(request, timeout=10, metadata=[("idempotency-key", "traced-1")])
            assert asked(double, 1)
            first.cancel()
            answer = stub.Complete(request, timeout=10, metadata=[("idempotency-key", "traced-1")])
            (_, unattended), = receiver.wait_for_spans(lambda r, s: s.name == "tierwise.complete.unattended")
        receiver.wait_for_spans(lambda r, s: attributes(s).get("tierwise.idempotent_replayed"))
        calls = {s.span_id: s for _, s in receiver.spans() if s.name.endswith("/Complete")}
        assert unattended.parent_span_id in calls, "a child of the call its caller left"
        attrs = attributes(unattended)
        assert attrs["tierwise.final_tier"] == answer.tier and attrs["tierwise.cost_usd"] == answer.cost_usd
        [attempt] = [s for _, s in receiver.spans() if s.name == "chat t1-a"]
        assert attempt.parent_span_id == unattended.span_id, "the provider answered after the caller left"
        [replay] = [s for s in calls.values() if attributes(s).get("tierwise.idempotent_replayed")]
        assert attributes(replay)["tierwise.final_tier"] == answer.tier
        assert not [line for line in router.output if "ended span" in line], router.output
    # Three lines: the call its caller left, the work that went on (what it paid), the retry (which paid nothing).
    lines = access_lines(router, 3)
    [left] = [line for line in lines if line["code"] == "CANCELLED"]
    [unattended_line] = [line for line in lines if line.get("unattended")]
    [retry] = [line for line in lines if line.get("replayed")]
    assert left["code"] == "CANCELLED" and "cost_usd" not in left
    assert unattended_line["unattended"] and unattended_line["code"] == "OK"
    assert unattended_line["cost_usd"] == answer.cost_usd > 0
    assert retry["replayed"] and retry["code"] == "OK" and retry["cost_usd"] == 0 and retry["tier"] == answer.tier
    assert retry["request_id"] == f"{replay.trace_id.hex()}", "the retry's line names its own trace"


def test_shutdown_does_not_wait_for_work_whose_caller_left(tmp_path, double):
    """No retry can reach what a stopping router keeps, so its drain cuts the work a caller left at once, and
    spends its grace on the calls still waited for."""
    double.reset()
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": 10.0}, timeout_s=20.0)
    double.script("t1-a", Fault.delay(4.0))
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router, grpc.insecure_channel(router.address) as channel:
        left = router_pb2_grpc.RouterServiceStub(channel).Complete.future(
            ask("Describe the sea.", "cheapest"), timeout=20, metadata=[("idempotency-key", "left-at-shutdown")])
        assert asked(double, 1)
        left.cancel()
        sent = time.monotonic()
        router.proc.send_signal(signal.SIGTERM)
        assert router.proc.wait(20) == 0
        took = time.monotonic() - sent
    assert took < 2.5, f"stopped {took:.2f} s after SIGTERM, waiting for work nobody can collect"
    double.reset()


@pytest.mark.parametrize("once", ["", "has space", "x" * 256])
def test_a_malformed_key_is_invalid_argument_naming_it(stub, once):
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(ask("hi", "cheapest"), timeout=10, metadata=metadata(once))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency-key" in err.value.details()


def post(router, once: str | None, content: str, *, leave: bool = False, timeout_ms: int | None = None,
         key: str = KEYS[0]) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection(http_address(router), timeout=30)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if once is not None:
        headers["idempotency-key"] = once
    if timeout_ms is not None:
        headers["x-tierwise-timeout-ms"] = str(timeout_ms)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "messages": [
        {"role": "user", "content": content}]}), headers)
    if leave:
        conn.close()
        return 0, {}, {}
    try:
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        conn.close()


def test_an_http_retry_after_a_dropped_connection_gets_the_answer_once_paid(stub, double, router):
    double.script("t1-a", Fault.delay(SLOW_S))
    post(router, "http-dropped-1", "Why is the sky blue?", leave=True)
    assert asked(double, 1)
    status, headers, body = post(router, "http-dropped-1", "Why is the sky blue?")
    assert status == 200 and headers.get("idempotent-replayed") == "true", body
    assert body["choices"][0]["message"]["content"].startswith("answer from t1-a")
    assert len(double.requests_for("t1-a")) == 1


def test_an_http_key_reused_or_malformed_is_a_400_in_openais_shape(stub, router):
    assert post(router, "http-reused-1", "What is 2 + 2?")[0] == 200
    for once, content in (("http-reused-1", "What is 3 + 3?"), ("bad key", "hi")):
        status, _, body = post(router, once, content)
        assert status == 400 and body["error"]["type"] == "invalid_request_error", body
        assert "idempotency-key" in body["error"]["message"]


def test_a_retry_of_the_call_that_spent_the_keys_month_still_gets_its_answer(stub, double, router):
    """The call that crosses a monthly limit finishes; its caller left, so its answer is paid for and kept. The
    retry pays nothing and is answered; a new call is refused, over gRPC and HTTP, before any provider is asked."""
    double.script("t1-a", Fault.delay(SLOW_S))
    request = ask("What is the largest ocean?", "cheapest")
    first = stub.Complete.future(request, timeout=10, metadata=metadata("spent-1", KEYS[2]))
    assert asked(double, 1)
    first.cancel()
    answer, call = stub.Complete.with_call(request, timeout=10, metadata=metadata("spent-1", KEYS[2]))
    assert answer.content and replayed(call)
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(ask("And the smallest?", "cheapest"), timeout=10, metadata=metadata("spent-2", KEYS[2]))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "monthly spend limit" in err.value.details()
    assert [k for k, _ in err.value.trailing_metadata() if k == "retry-after"]
    status, headers, body = post(router, "spent-3", "And the deepest?", key=KEYS[2])
    assert status == 429 and body["error"]["code"] == "spend_limit_exceeded" and "retry-after" in headers
    together = [stub.Complete.future(ask("And the warmest?", "cheapest"), timeout=10,
                                     metadata=metadata("spent-4", KEYS[2])) for _ in range(2)]
    assert all(call.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED for call in together)
    assert len(double.requests_for("t1-a")) == 1
    # The refusals used none of its 3 requests a minute (the first call and its retry used two): Route, free, passes.
    assert stub.Route(pb.RouteRequest(query="hi", strategy="cheapest"), timeout=10,
                      metadata=[("authorization", f"Bearer {KEYS[2]}")]).tier == 1
    # Each call is counted once: the first, its retry and the Route admitted, the four refusals refused.
    assert wait_until(lambda: value(scrape(router), "tierwise_router_auth_total", key_id="spent",
                                    outcome="spend_limited") == 4)
    assert value(scrape(router), "tierwise_router_auth_total", key_id="spent", outcome="ok") == 3


def test_an_http_retry_waits_no_longer_than_its_own_timeout(stub, double, router):
    double.script("t1-a", Fault.delay(SLOW_S))
    post(router, "http-own-deadline", "Why do cats purr?", leave=True)
    assert asked(double, 1)
    started = time.monotonic()
    status, _, body = post(router, "http-own-deadline", "Why do cats purr?", timeout_ms=300)
    assert status == 504 and time.monotonic() - started < SLOW_S - 0.2, body
    status, headers, _ = post(router, "http-own-deadline", "Why do cats purr?")  # the work went on meanwhile
    assert status == 200 and headers.get("idempotent-replayed") == "true"
    assert len(double.requests_for("t1-a")) == 1


def test_a_retry_with_more_time_asks_again_when_the_first_calls_deadline_cut_the_work(stub, double, router):
    double.script("t1-a", Fault.delay(1.5))
    post(router, "http-short-first", "Name a prime number.", leave=True, timeout_ms=700)
    assert asked(double, 1)
    status, headers, body = post(router, "http-short-first", "Name a prime number.", timeout_ms=20000)
    assert status == 200 and "idempotent-replayed" not in headers, body
    assert len(double.requests_for("t1-a")) == 2


def test_a_retry_waiting_at_sigterm_is_answered_within_the_grace(tmp_path, double):
    double.reset()
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": 10.0})
    double.script("t1-a", Fault.delay(1.5))
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        conn = http.client.HTTPConnection(http_address(router), timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "messages": [
            {"role": "user", "content": "Count to three."}]}), {"idempotency-key": "at-sigterm"})
        conn.close()
        assert asked(double, 1)
        outcome: list = []
        retry = threading.Thread(target=lambda: outcome.append(post(router, "at-sigterm", "Count to three.")))
        retry.start()
        time.sleep(0.3)  # the retry is waiting for the work
        router.proc.send_signal(signal.SIGTERM)
        retry.join(20)
        assert router.proc.wait(20) == 0
    [(status, headers, _)] = outcome
    assert status == 200 and headers.get("idempotent-replayed") == "true", outcome
    double.reset()


def draining_router(tmp_path, double):
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": 10.0}, timeout_s=20.0)
    return running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"})


def test_while_the_http_port_drains_a_retry_still_collects_the_work_its_caller_left(tmp_path, double):
    double.reset()
    double.script("t1-a", Fault.delay(1.5), Fault.delay(3.0))
    with draining_router(tmp_path, double) as router:
        post(router, "drain-retry", "Name a planet.", leave=True)
        assert asked(double, 1)
        busy = threading.Thread(target=lambda: post(router, None, "Keep the port draining."))
        busy.start()
        assert asked(double, 2)
        router.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, headers, _ = post(router, "drain-retry", "Name a planet.")
        busy.join(20)
        assert router.proc.wait(20) == 0
    assert status == 200 and headers.get("idempotent-replayed") == "true"
    assert len(double.requests_for("t1-a")) == 2
    double.reset()


def test_a_caller_leaving_while_the_http_port_drains_does_not_hold_up_the_shutdown(tmp_path, double):
    double.reset()
    double.script("t1-a", Fault.delay(4.0))
    with draining_router(tmp_path, double) as router:
        conn = http.client.HTTPConnection(http_address(router), timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "messages": [
            {"role": "user", "content": "Describe a forest."}]}), {"idempotency-key": "left-while-draining"})
        assert asked(double, 1)
        sent = time.monotonic()
        router.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        conn.close()
        assert router.proc.wait(20) == 0
        took = time.monotonic() - sent
    assert took < 2.5, f"stopped {took:.2f} s after SIGTERM, waiting for work its caller left"
    double.reset()
