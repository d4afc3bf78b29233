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
KEY = "tw-shutdown-0123456789abcdef"


def test_calls_cut_at_the_end_of_the_grace_are_answered_503_and_log_no_error(tmp_path, double):
    double.reset()
    double.set_reply("t1-a", LONG)
    double.script("t1-a", Fault.delay(4.0), Fault.stall_mid_stream(after_chunks=100, delay_s=4.0))
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": 1.0}, timeout_s=20.0)
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


def test_a_keyed_call_and_a_token_count_cut_at_the_grace_are_503s_and_cost_nothing(tmp_path, double):
    """A call told to retry elsewhere is not paid for here: the work of a call with an idempotency key is cut with
    it, not left going for a retry that cannot reach this router."""
    double.reset()
    double.script("t1-a", Fault.delay(1.5))
    keys, ledger = tmp_path / "keys", tmp_path / "ledger.json"
    keys.write_text(f"{KEY} id=cut\n")
    doc = router_config(double.base_url, strategy="cheapest", shutdown={"grace_s": 1.0},
                        spend={"ledger": str(ledger)}, telemetry={"access_log": True}, timeout_s=20.0)
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", "--api-keys-file",
                        str(keys), env={KEY_ENV: "k"}) as router:
        address = http_address(router)
        keyed = http.client.HTTPConnection(address, timeout=20)
        keyed.request("POST", "/v1/chat/completions", json.dumps({"model": "tierwise", "messages": [
            {"role": "user", "content": "Name a river."}]}), {**headers, "idempotency-key": "cut-at-grace"})
        counting = http.client.HTTPConnection(address, timeout=20)
        counting.putrequest("POST", "/v1/messages/count_tokens")
        for name, value in {**headers, "content-length": "500"}.items():
            counting.putheader(name, value)
        counting.endheaders()
        counting.send(b'{"model": ')  # and no more
        assert wait_until(lambda: len(double.requests_for("t1-a")) == 1, 10)
        router.proc.send_signal(signal.SIGTERM)
        replies = {}
        for name, conn in (("keyed", keyed), ("counting", counting)):
            response = conn.getresponse()
            replies[name] = (response.status, json.loads(response.read()))
            conn.close()
        assert router.proc.wait(20) == 0
    assert replies["keyed"][0] == 503 and replies["keyed"][1]["error"]["code"] == "shutting_down", replies
    assert replies["counting"][0] == 503 and replies["counting"][1]["type"] == "error", replies
    assert not json.loads(ledger.read_text())["usd"], "nothing was paid for the call cut"
    logged = "".join(router.output)
    access = [json.loads(line) for line in router.output if '"tierwise.router.access"' in line]
    assert not [line for line in access if line.get("unattended") and line["code"] == "OK"], access
    assert '"level": "error"' not in logged, logged
    double.reset()
