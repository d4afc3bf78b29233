"""What a provider says when it fails a call: its own words can quote the prompt or part of the operator's key, so
they never reach the service log, and reach the caller only when the provider refused the caller's request itself
(a 400 says what to fix); for anything else the caller and the spans get the status alone."""
from __future__ import annotations

import json
import time

import grpc
import httpx2
import openai

from router_service.retry import classify
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .otlp_receiver import OtlpReceiver
from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, router_config, running_router

KEY_HINT = "Incorrect API key provided: sk-proj-****************wxyz"
ASK_HINT = "max_tokens is too large: the prompt 'SECRET PLAN GREY OWL' leaves room for 12"
MODELS = ("t1-a", "t1-b", "t2-a", "t3-a")


def failing(double, status: int, message: str) -> None:
    for model in MODELS:
        double.set_persistent(model, Fault.http_error(status, message=message))


def complete(router) -> grpc.RpcError:
    with grpc.insecure_channel(router.address) as channel:
        try:
            router_pb2_grpc.RouterServiceStub(channel).Complete(pb.CompleteRequest(
                messages=[pb.Message(role="user", content="Summarise the SECRET PLAN GREY OWL.")]), timeout=20)
        except grpc.RpcError as err:
            return err
    raise AssertionError("every provider failed, yet the call was answered")


def test_a_providers_words_stay_out_of_the_log_and_reach_the_caller_only_for_its_own_request(tmp_path, double):
    doc = router_config(double.base_url, strategy="cheapest")
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, env={KEY_ENV: "k"}) as router:
        try:
            failing(double, 401, KEY_HINT)
            err = complete(router)
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "HTTP 401" in err.details()
            assert "sk-proj" not in err.details(), err.details()
            double.reset()
            failing(double, 400, ASK_HINT)
            err = complete(router)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_tokens is too large" in err.details()
        finally:
            double.reset()
        logged = "".join(router.output)
    assert "provider attempt did not succeed" in logged and "HTTP 401" in logged and "HTTP 400" in logged
    assert "sk-proj" not in logged and "GREY OWL" not in logged and "max_tokens is too large" not in logged


def test_a_refusal_beside_failures_reaches_the_caller_but_not_the_span_or_the_shadows_log(tmp_path, double):
    """t1-a refuses the request quoting it while every other provider fails: the caller hears the refusal (it says
    what to fix); the call's span status and the shadow's record and log name statuses only."""
    shadow_log = tmp_path / "shadow.jsonl"
    with OtlpReceiver() as receiver:
        env = {KEY_ENV: "k", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        doc = router_config(double.base_url, strategy="cheapest", shadow={"share": 1.0, "log": str(shadow_log)})
        with running_router(doc, UNUSED_CLASSIFIER, tmp_path, env=env) as router:
            try:
                failing(double, 500, "overloaded")
                double.set_persistent("t1-a", Fault.http_error(400, message=ASK_HINT))
                err = complete(router)
                assert err.code() == grpc.StatusCode.UNAVAILABLE and "GREY OWL" in err.details()
                double.reset()
                double.set_persistent("t3-a", Fault.http_error(400, message=ASK_HINT))  # the shadow's reference
                with grpc.insecure_channel(router.address) as channel:
                    router_pb2_grpc.RouterServiceStub(channel).Complete(pb.CompleteRequest(
                        messages=[pb.Message(role="user", content="Summarise the SECRET PLAN GREY OWL.")]), timeout=20)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and not (shadow_log.exists() and shadow_log.read_text().strip()):
                    time.sleep(0.05)
                spans = receiver.wait_for_spans(lambda r, s: s.name.endswith("/Complete") and s.status.message)
            finally:
                double.reset()
            logged = "".join(router.output)
    assert spans and all("GREY OWL" not in s.status.message for _, s in spans), [s.status.message for _, s in spans]
    assert "no provider could answer" in spans[0][1].status.message and "HTTP 400" in spans[0][1].status.message
    record = json.loads(shadow_log.read_text().splitlines()[0])
    assert "HTTP 400" in record["error"] and "GREY OWL" not in record["error"]
    assert "shadow failed" in logged and "GREY OWL" not in logged


def test_an_error_a_provider_streams_is_named_by_its_type_alone():
    """OpenAI-compatible servers can send an error event inside a 200 stream; its words can quote the prompt."""
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    failure = classify(openai.APIError("content filter tripped on 'SECRET PLAN GREY OWL'", request, body=None))
    assert failure.message == "unreadable response: APIError"
