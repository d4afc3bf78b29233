"""The HTTP API's server span: parented by the caller's W3C trace context (`traceparent` header), as the gRPC
server span is by the call's metadata."""
from __future__ import annotations

from contextlib import contextmanager

from opentelemetry import propagate, trace
from starlette.requests import Request


@contextmanager
def http_span(tracer: trace.Tracer, request: Request, route: str):
    """The request's span, current while the block runs; errors are the block's to record (no prompt text: only
    the method, the route and the status go in here)."""
    with tracer.start_as_current_span(
        f"{request.method} {route}", context=propagate.extract(request.headers), kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route, "url.path": request.url.path,
                    "url.scheme": request.url.scheme},
        record_exception=False, set_status_on_exception=False,
    ) as span:
        yield span  # the caller sets http.response.status_code to the status it sent, if it sent one
