"""The HTTP API served by uvicorn inside the router's own event loop, beside gRPC: bound before the router says it
is listening (so a taken port fails the start), serving once the router is loaded, stopped with it."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import Callable

import uvicorn

from tierwise.telemetry import split_listen
from tierwise.tls import ServerTLS

STOP_GRACE_S = 5


class _InLoop(uvicorn.Server):
    """uvicorn without its own signal handling: the router's (tierwise.serving.run) stops it."""

    def capture_signals(self):
        return contextlib.nullcontext()


class HttpServer:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server: _InLoop | None = None
        self.task: asyncio.Task | None = None

    @classmethod
    def bind(cls, listen: str) -> "HttpServer":
        """A server bound to `listen` (host:port, [v6]:port; port 0 = any free one); ValueError or OSError."""
        host, port = split_listen(listen)
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections accepted from such a
        # socket; with it on, a response's headers and body, written apart, wait ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    async def start(self, app, tls: ServerTLS | None = None) -> None:
        """Serve `app`; with `tls`, HTTPS with the gRPC port's certificate (and its client CA: mTLS), read once."""
        secure = {} if tls is None else {
            "ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key),
            "ssl_ca_certs": str(tls.client_ca) if tls.client_ca else None,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE}
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, server_header=False,
                                ws="none", timeout_graceful_shutdown=STOP_GRACE_S, **secure)
        self.server = _InLoop(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                await self.task  # its error, if it failed to start
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self, idle: Callable[[], bool] = lambda: True) -> None:
        """Stop, once `idle()` says no call is under way (at most STOP_GRACE_S): until then the port still takes
        connections, so a load balancer reads /health's 503 instead of a refused connection."""
        if self.task is None:
            self.sock.close()
            return
        give_up = time.monotonic() + STOP_GRACE_S
        while not idle() and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        self.server.should_exit = True
        await self.task
