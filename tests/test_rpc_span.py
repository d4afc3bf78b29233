"""tierwise.serving.rpc_span: how a call's server span ends when gRPC, not the handler, ends the call."""
from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tierwise.serving import rpc_span


class Context:
    """What rpc_span reads of a grpc.aio servicer context: no code set yet, `remaining` s to the deadline."""

    def __init__(self, remaining: float | None):
        self.remaining = remaining

    def code(self):
        return None

    def time_remaining(self):
        return self.remaining

    def invocation_metadata(self):
        return ()


@pytest.mark.parametrize("remaining, code, error", [(0.0, grpc.StatusCode.DEADLINE_EXCEEDED, True),
                                                    (30.0, grpc.StatusCode.CANCELLED, False)])
@pytest.mark.parametrize("ending", [asyncio.CancelledError, GeneratorExit])
def test_a_call_grpc_ends_is_traced_with_its_code_and_a_deadline_as_an_error(remaining, code, error, ending):
    """gRPC cancels a handler at its deadline at the moment the handler's own timer would end it: whichever comes
    first, a search of the traces for errors finds the call."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def call():
        async with rpc_span(provider.get_tracer("test"), "svc", "Complete", Context(remaining),
                            logging.getLogger("test")):
            raise ending()

    with pytest.raises(ending):
        asyncio.run(call())
    [span] = exporter.get_finished_spans()
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    assert (span.status.status_code == StatusCode.ERROR) is error
