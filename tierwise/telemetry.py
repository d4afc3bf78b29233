"""Observability shared by the services: JSON logs, OpenTelemetry tracing and metrics over OTLP, the Prometheus
endpoint, gRPC context."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
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


# HTTP client libraries that log every request they send at INFO: one line per provider call, which the access log
# and the spans already account for. They speak up only at WARNING, unless the service logs at DEBUG.
CHATTY = ("httpx", "httpx2", "httpcore")


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("TIERWISE_LOG_LEVEL", "INFO")).upper())
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)


def setup_tracing(service_name: str, version: str) -> TracerProvider | None:
    """Export spans over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or the traces variant) is set.

    Without an endpoint the global no-op tracer stays in place and spans cost almost nothing.
    """
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=_resource(service_name, version), shutdown_on_exit=False)  # see shut_down
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def setup_metrics(service_name: str, version: str, listen: str = "") -> MeterProvider | None:
    """Metrics over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or the metrics variant) is set, and in the
    Prometheus text format on http://`listen`/metrics ("host:port"; port 0 picks a free one, printed) when it is
    given. None when neither: the no-op meter stays. ValueError naming `listen` when it is malformed or taken."""
    readers: list[MetricReader] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if listen:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        from .scrape import serve_metrics
        host, port = split_listen(listen)
        try:
            server = serve_metrics(host, port)
        except OSError as err:
            raise ValueError(f"cannot serve metrics on {listen}: {err.strerror or err}") from None
        print(f"{service_name} metrics on http://{listen.rsplit(':', 1)[0]}:{server.server_port}/metrics", flush=True)
        readers.append(PrometheusMetricReader())
    if not readers:
        return None
    provider = MeterProvider(resource=_resource(service_name, version), metric_readers=readers,
                             shutdown_on_exit=False)  # see shut_down
    metrics.set_meter_provider(provider)
    return provider


SHUTDOWN_S = 1.0


def shut_down(*providers: TracerProvider | MeterProvider | None, within_s: float = SHUTDOWN_S) -> None:
    """Flush and stop the providers, giving up after `within_s` in all. A collector that is down or never answers
    would otherwise hold the exit for the exporters' retries (22-40 s measured), past the stop grace Kubernetes and
    compose give, so every stop would end in a SIGKILL. A collector that answers takes milliseconds."""
    live = [p for p in providers if p is not None]
    if not live:
        return
    worker = threading.Thread(target=lambda: [p.shutdown() for p in live], name="telemetry-shutdown", daemon=True)
    worker.start()
    worker.join(within_s)
    if worker.is_alive():
        logging.getLogger("tierwise.telemetry").warning(
            "telemetry not flushed within %.0f s (the OTLP collector is slow or down): the last spans and metrics "
            "are lost", within_s)


def _resource(service_name: str, version: str) -> Resource:
    return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
                            "service.version": version})


def split_listen(listen: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"; ValueError saying what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:9464, [::]:9464)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def context_from_grpc(context) -> object:
    """Trace context (W3C traceparent/tracestate) carried in the incoming gRPC metadata."""
    return propagate.extract({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})


DEADLINE_SLACK_S = 0.25


def final_code(context, kind: type | None) -> str:
    """The name of the code a gRPC call is ending with: an aborted call (a refusal, or INTERNAL) has its code on the
    context by now; one that raised CancelledError (or, a stream, GeneratorExit) had its deadline pass, or was
    cancelled; else it was answered."""
    code = context.code()
    if code is not None:
        return code.name
    # A stream closed by grpc while paused at a yield (its caller went) ends with GeneratorExit.
    if kind not in (asyncio.CancelledError, GeneratorExit):
        return "OK"
    # A caller cancels at its own deadline, which this side, having counted from the request's arrival, sees a
    # moment later: a cancellation that close to the deadline is the deadline's.
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_S else "CANCELLED"


class CallCounts:
    """A service's calls by method and final gRPC code, as the observable counter `name`: counted in a plain dict on
    the event loop thread (where every call ends) and read only when metrics are collected, so a call pays no
    instrument lock for it."""

    def __init__(self, meter: metrics.Meter, name: str, description: str):
        self._calls: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(name, callbacks=[self._observe], description=description)

    def add(self, method: str, code: str) -> None:
        self._calls[(method, code)] = self._calls.get((method, code), 0) + 1

    def call(self, method: str, context) -> "_Counted":
        """`async with` around a gRPC call: counts it by its final code."""
        return _Counted(self, method, context)

    def ended(self, method: str, context, kind: type | None) -> None:
        """Count a gRPC call that is ending with an exception of type `kind` (None: none)."""
        self.add(method, final_code(context, kind))

    # Collection runs on another thread (the HTTP server's, the OTLP exporter's): dict.copy is one step under the
    # GIL, so it never sees a dict changing size.
    def _observe(self, options):
        return [metrics.Observation(n, {"method": method, "code": code})
                for (method, code), n in self._calls.copy().items()]


class _Counted:
    __slots__ = ("counts", "method", "context")

    def __init__(self, counts: CallCounts, method: str, context):
        self.counts, self.method, self.context = counts, method, context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind, error, trace) -> None:
        self.counts.ended(self.method, self.context, kind)
