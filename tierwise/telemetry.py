"""Observability shared by the services: JSON logs, OpenTelemetry tracing over OTLP, gRPC context."""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("TIERWISE_LOG_LEVEL", "INFO")).upper())


def setup_tracing(service_name: str, version: str) -> TracerProvider | None:
    """Export spans over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or the traces variant) is set.

    Without an endpoint the global no-op tracer stays in place and spans cost almost nothing.
    """
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
                                "service.version": version})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def context_from_grpc(context) -> object:
    """Trace context (W3C traceparent/tracestate) carried in the incoming gRPC metadata."""
    return propagate.extract({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
