"""HTTP calls still under way when the router's shutdown grace runs out: each is answered 503 in OpenAI's error
shape (a stream, with an error event), the router logs no error for them, and exits. Real router on 127.0.0.1, the
provider double as its only stand-in."""
from __future__ import annotations

import http.client
import json
import signal
import threading
import time

from .exported_metrics import wait_until
from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, router_config, running_router

LONG = " ".join(["word"] * 4000)


def test_calls_cut_at_the_end_of_the_grace_are_answered_503_and_log_no_error(tmp_path, double):
    double.reset()
    double.set_reply("t1-a", LONG)
    double.script("t1-a", Fault.delay(4.0), Fault.stall_mid_stream(after_chunks=100, delay_s=4.0))
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": 1.0})
    for tier in doc["tiers"]:
        for provider in tier["providers"]:
            provider["timeout_s"] = 20.0
    outcome: dict[str, object] = {}
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        address = http_address(router)

        def call(name: str, stream: bool) -> None:
            conn = http.client.HTTPConnection(address, timeout=20)
            try:
                conn.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "stream": stream,
                             "messages": [{"role": "user", "content": f"Write at length ({name})."}]}))
                response = conn.getresponse()
                outcome[name] = (response.status, response.read().decode())
            finally:
                conn.close()

        calls = [threading.Thread(target=call, args=("whole", False)), threading.Thread(target=call,
                                                                                      args=("streamed", True))]
        for n, each in enumerate(calls, 1):  # one after the other: the provider's faults are taken in order
            each.start()
            assert wait_until(lambda: len(double.requests_for("t1-a")) == n, 10), "the call reached the provider"
        router.proc.send_signal(signal.SIGTERM)
        assert router.proc.wait(20) == 0
        for each in calls:
            each.join(20)
    status, body = outcome["whole"]
    assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down", outcome
    status, body = outcome["streamed"]
    assert status == 200 and body.count("word") > 50 and "shutting_down" in body, outcome
    logged = "".join(router.output)
    assert "Exception in ASGI application" not in logged and '"level": "error"' not in logged, logged
    double.reset()


def test_a_call_still_sending_its_body_at_sigterm_gets_the_grace_then_a_503(tmp_path, double):
    double.reset()
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": 1.5})
    body = json.dumps({"model": "tierwise", "messages": [{"role": "user", "content": "Say hello."}]}).encode()
    outcome: dict[str, object] = {}
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0",
                        env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        conns = {name: http.client.HTTPConnection(address, timeout=20) for name in ("finishes", "stalls")}
        for conn in conns.values():
            conn.putrequest("POST", "/v1/chat/completions")
            conn.putheader("content-type", "application/json")
            conn.putheader("content-length", str(len(body)))
            conn.endheaders()
            conn.send(body[:10])
        time.sleep(0.3)  # both bodies begun
        router.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conns["finishes"].send(body[10:])
        for name, conn in conns.items():
            response = conn.getresponse()
            outcome[name] = (response.status, response.read().decode())
            conn.close()
        assert router.proc.wait(20) == 0
    assert outcome["finishes"][0] == 200, outcome
    status, text = outcome["stalls"]
    assert status == 503 and json.loads(text)["error"]["code"] == "shutting_down", outcome
    logged = "".join(router.output)
    assert "Exception in ASGI application" not in logged and '"level": "error"' not in logged, logged
    double.reset()
