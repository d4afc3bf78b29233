"""What both services do the same way: listen, health (NOT_SERVING until loaded), reflection, signals,
validation errors and the per-call server span."""
from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from .telemetry import context_from_grpc

log = logging.getLogger("tierwise.serving")
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


async def run(name: str, listen: str, services: list[str], server: grpc.aio.Server,
              load: Callable[[], Awaitable[str]], close: Callable[[], Awaitable[None]]) -> int:
    """Serve until SIGINT/SIGTERM. `load` readies the service and returns a description for the ready line."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*services, HEALTH, reflection.SERVICE_NAME], server)

    async def set_health(status) -> None:
        for service in ("", *services):
            await health_servicer.set(service, status)

    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    host = listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(listen)
    if not port:
        print(f"{name}: cannot listen on {listen}", flush=True)
        return 2
    await server.start()
    print(f"{name} listening on {host}:{port} (NOT_SERVING until loaded)", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        description = await load()
    except Exception:
        log.exception("failed to load")
        await server.stop(0)
        return 1
    await set_health(health_pb2.HealthCheckResponse.SERVING)
    print(f"{name} ready on {host}:{port} {description}", flush=True)
    log.info("serving", extra={"fields": {"service": name, "listen": f"{host}:{port}"}})

    await stop.wait()
    log.info("shutting down", extra={"fields": {"service": name}})
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=5)
    await close()
    print(f"{name} stopped", flush=True)
    return 0


class Rejected(Exception):
    """A call refused with a gRPC status; the message names the field or the condition."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def check_text(text: str, field: str, max_bytes: int) -> None:
    """Non-empty, not only whitespace, at most `max_bytes` of UTF-8: else INVALID_ARGUMENT naming `field`."""
    if not text.strip():
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: must not be empty or whitespace only")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {size} bytes exceed the limit of {max_bytes} bytes")


@asynccontextmanager
async def rpc_span(tracer: trace.Tracer, service: str, method: str, context, logger: logging.Logger):
    """A server span per call, parented by the caller's trace context; maps errors to gRPC statuses:
    `Rejected` to its code, anything unexpected to INTERNAL (logged, never leaked to the caller)."""
    with tracer.start_as_current_span(
        f"{service}/{method}", context=context_from_grpc(context), kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Rejected as err:
            span.set_attribute("rpc.grpc.status_code", err.code.value[0])
            if err.code != grpc.StatusCode.INVALID_ARGUMENT:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(err)))
            await context.abort(err.code, str(err))
        except Exception:
            logger.exception("unexpected error in %s", method)
            span.set_status(trace.Status(trace.StatusCode.ERROR, "internal error"))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")
