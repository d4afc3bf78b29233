"""One trace spans router and classifier and reaches a real OTLP receiver, with GenAI attributes and no
prompt or answer text."""
from __future__ import annotations

import grpc

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .otlp_receiver import OtlpReceiver, attributes
from .provider_double import Fault
from .servers import router_stack

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PROMPT = "Summarise the secret plan codenamed BLUE HERON in two sentences."


def test_one_trace_across_router_and_classifier_without_prompt_text(tmp_path):
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200",
               "OTEL_METRIC_EXPORT_INTERVAL": "500"}
        with router_stack(tmp_path, "embedding", env) as (double, _, router):
            # The chosen tier's first provider fails once: its attempt must show up as its own span.
            for model in ("t1-a", "t2-a", "t3-a"):
                double.script(model, Fault.http_error(500))
            with grpc.insecure_channel(router.address) as channel:
                reply = router_pb2_grpc.RouterServiceStub(channel).Complete(
                    pb.CompleteRequest(messages=[pb.Message(role="user", content=PROMPT)]), timeout=20,
                    metadata=[("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01")])
            receiver.wait_for_spans(
                lambda r, s: s.trace_id.hex() == TRACE_ID and r.get("service.name") == "tierwise-classifier")
            receiver.wait_for_spans(lambda r, s: s.trace_id.hex() == TRACE_ID and s.name.endswith("/Complete"))
        spans = [(r, s) for r, s in receiver.spans() if s.trace_id.hex() == TRACE_ID]
        by_name = {s.name: (r, s) for r, s in spans}
        services = {r["service.name"] for r, _ in spans}
        assert services == {"tierwise-router", "tierwise-classifier"}, by_name.keys()

        _, root = by_name["tierwise.v1.RouterService/Complete"]
        _, client = [(r, s) for r, s in spans if s.name == "tierwise.v1.ClassifierService/Classify"
                     and r["service.name"] == "tierwise-router"][0]
        _, server = [(r, s) for r, s in spans if s.name == "tierwise.v1.ClassifierService/Classify"
                     and r["service.name"] == "tierwise-classifier"][0]
        assert client.parent_span_id == root.span_id and server.parent_span_id == client.span_id

        attrs = attributes(root)
        assert attrs["tierwise.strategy"] == "embedding" and attrs["tierwise.tier"] == reply.decision.tier
        assert len(attrs["tierwise.probabilities"]) == 3 and len(attrs["tierwise.thresholds"]) == 1
        assert attrs["tierwise.head_version"] == reply.decision.head_version
        assert attrs["gen_ai.request.model"] == reply.model
        assert attrs["gen_ai.usage.input_tokens"] == reply.usage.input_tokens
        assert attrs["gen_ai.usage.output_tokens"] == reply.usage.output_tokens
        assert attrs["gen_ai.response.finish_reasons"] == ["stop"] and attrs["tierwise.tool_calls"] == 0
        assert abs(attrs["tierwise.cost_usd"] - reply.cost_usd) < 1e-12

        attempts = [attributes(s) for _, s in spans if s.name.startswith("chat ")]
        assert [a["tierwise.outcome"] for a in attempts] == ["error", "ok"]
        assert all(a["tierwise.purpose"] == "answer" for a in attempts)
        assert all(a["gen_ai.request.model"] == reply.model for a in attempts)
        assert all(s.parent_span_id == root.span_id for _, s in spans if s.name.startswith("chat "))

        for _, s in receiver.spans():
            text = str(attributes(s)) + s.name + str([str(e) for e in s.events])
            assert "BLUE HERON" not in text and "answer from" not in text


def test_a_classify_call_that_fails_is_traced_by_its_code_alone(tmp_path):
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with router_stack(tmp_path, "embedding", env) as (_, _, router):
            with grpc.insecure_channel(router.address) as channel:
                try:
                    router_pb2_grpc.RouterServiceStub(channel).Route(
                        pb.RouteRequest(query="hi", head="no-such-head-HERON"), timeout=20)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            (_, client), *_ = receiver.wait_for_spans(
                lambda r, s: s.name.endswith("ClassifierService/Classify") and r["service.name"] == "tierwise-router")
    assert client.status.message == "INVALID_ARGUMENT" and not client.events, (client.status, client.events)
