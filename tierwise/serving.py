"""What both services do the same way: listen, health (NOT_SERVING until loaded), reflection, signals."""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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
