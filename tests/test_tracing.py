"""A classifier span, parented by the caller's trace context, reaches a real OTLP receiver."""
from __future__ import annotations

import socket
import time

import grpc

from tierwise.telemetry import SHUTDOWN_S
from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc

from .otlp_receiver import OtlpReceiver, attributes
from .servers import start_classifier

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SECRET = "my secret prompt text that must never be exported"


def test_span_reaches_otlp_receiver_with_attributes_and_no_text():
    with OtlpReceiver() as receiver:
        service = start_classifier(env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                        "OTEL_BSP_SCHEDULE_DELAY": "200"})
        try:
            with grpc.insecure_channel(service.address) as channel:
                stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
                metadata = [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")]
                reply = stub.Classify(pb.ClassifyRequest(text=SECRET), metadata=metadata, timeout=10)
                stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=[SECRET, "hello"]), metadata=metadata, timeout=10)
            found = receiver.wait_for_spans(lambda r, s: s.trace_id.hex() == TRACE_ID and s.name.endswith("/Classify"))
            batch = receiver.wait_for_spans(lambda r, s: s.trace_id.hex() == TRACE_ID and s.name.endswith("/ClassifyBatch"))
        finally:
            assert service.stop() == 0
        assert found and batch, f"spans received: {[s.name for _, s in receiver.spans()]}"
        resource, span = found[0]
        assert resource["service.name"] == "tierwise-classifier"
        assert span.parent_span_id.hex() == PARENT_ID
        attrs = attributes(span)
        assert attrs["tierwise.tier"] == reply.tier
        assert abs(attrs["tierwise.top_probability"] - reply.confidence) < 1e-6
        assert attrs["tierwise.head_version"] == reply.head_version
        assert attrs["tierwise.batch_size"] == 1 and attrs["tierwise.cache_hit"] is False
        batch_attrs = attributes(batch[0][1])
        assert batch_attrs["tierwise.batch_size"] == 2 and batch_attrs["tierwise.cache_hits"] == 1
        for _, s in receiver.spans():
            assert SECRET not in str(attributes(s)) and SECRET not in s.name


def test_a_collector_that_never_answers_does_not_hold_the_exit():
    """Its exporters would retry for 20-40 s at shutdown, past the stop grace Kubernetes gives: the last flush is
    bounded (telemetry.SHUTDOWN_S)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        silent.listen(16)
        service = start_classifier(env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
                                        "OTEL_BSP_SCHEDULE_DELAY": "200"})
        with grpc.insecure_channel(service.address) as channel:
            classifier_pb2_grpc.ClassifierServiceStub(channel).Classify(pb.ClassifyRequest(text="hi"), timeout=10)
        started = time.monotonic()
        assert service.stop(timeout=60) == 0
        took = time.monotonic() - started
    assert took < SHUTDOWN_S + 8, f"exit took {took:.1f} s"
    assert "telemetry not flushed" in "".join(service.output)
