"""Async client for the classifier service, with the router's deadline budget and trace propagation."""
from __future__ import annotations

import grpc
from opentelemetry import propagate, trace

from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc


class ClassifierClient:
    def __init__(self, address: str, timeout_ms: float):
        self.address = address
        self.timeout_s = timeout_ms / 1000
        # round_robin spreads calls over every address a `dns:///` target resolves to (the Helm chart's
        # headless classifier Service); a plain host:port has one address and is unaffected.
        self._channel = grpc.aio.insecure_channel(
            address, options=[("grpc.enable_retries", 0), ("grpc.lb_policy_name", "round_robin")])
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(self._channel)
        self._tracer = trace.get_tracer("tierwise.router")

    async def classify(self, text: str, head: str = "", timeout_s: float | None = None,
                       tradeoff: float | None = None) -> pb.ClassifyResponse:
        with self._tracer.start_as_current_span(
            "tierwise.v1.ClassifierService/Classify", kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": "tierwise.v1.ClassifierService",
                        "rpc.method": "Classify", "server.address": self.address}) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            try:
                return await self._stub.Classify(pb.ClassifyRequest(text=text, head=head, tradeoff=tradeoff),
                                                 timeout=min(self.timeout_s, timeout_s or self.timeout_s),
                                                 metadata=tuple(carrier.items()))
            except grpc.aio.AioRpcError as err:
                span.set_attribute("rpc.grpc.status_code", err.code().value[0])
                span.set_status(trace.Status(trace.StatusCode.ERROR, err.code().name))
                raise

    async def list_heads(self, timeout_s: float) -> pb.ListHeadsResponse:
        return await self._stub.ListHeads(pb.ListHeadsRequest(), timeout=timeout_s)

    async def close(self) -> None:
        await self._channel.close()
