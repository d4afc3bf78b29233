"""What a provider says when it fails a call: its own words can quote the prompt or part of the operator's key, so
they never reach the service log, and reach the caller only when the provider refused the caller's request itself
(a 400 says what to fix); for anything else the caller and the spans get the status alone."""
from __future__ import annotations

import grpc

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

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
