"""The HTTP API served by uvicorn inside the router's own event loop, beside gRPC: bound before the router says it
is listening (so a taken port fails the start), serving once the router is loaded, stopped with it."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Callable

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from tierwise.serving import ThrottledLog, waited
from tierwise.telemetry import split_listen
from tierwise.tls import RENEW_CHECK_S, ServerTLS, check_pair

# Once no call is under way, what uvicorn has left at shutdown is writing out answers already made and closing its
# connections. It waits for every connection to close, and a TLS connection waits for its client's close_notify,
# which an idle pooled client never sends: so this is short, however long the calls' grace.
FLUSH_S = 2.0
log = logging.getLogger("tierwise.router.http")


def _expected_at_shutdown(record: logging.LogRecord) -> bool:
    """uvicorn logs an ERROR when connections are still open FLUSH_S into its shutdown. With no call left ("Cancel 0
    running task(s)") that is an idle TLS client that never sends close_notify, or a client too slow to read the
    last of its answer: a WARNING, not an error of the router's. With calls left, it stays an ERROR."""
    if (isinstance(record.msg, str) and record.msg.startswith("Cancel %s running task(s)") and record.args
            and record.args[0] == 0):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


# Warnings any caller can have uvicorn log, one per request, before a key is checked: counted in a line at most every
# 10 s instead.
_CALLERS_DOING = ("Invalid HTTP request received.", "Unsupported upgrade request.", "No supported WebSocket library")
_callers_doing = ThrottledLog(log)


def _throttled(record: logging.LogRecord) -> bool:
    if isinstance(record.msg, str) and record.msg.startswith(_CALLERS_DOING):
        _callers_doing.note(f"requests uvicorn refused as malformed or unsupported; the latest: {record.msg}")
        return False
    return True


logging.getLogger("uvicorn.error").addFilter(_expected_at_shutdown)
logging.getLogger("uvicorn.error").addFilter(_throttled)


class _InLoop(uvicorn.Server):
    """uvicorn without its own signal handling: the router's (tierwise.serving.run) stops it."""

    def capture_signals(self):
        return contextlib.nullcontext()


class _HeadersInTime(AutoHTTPProtocol):
    """uvicorn's HTTP protocol, closing a connection whose request has not shown all its headers `within_s` after
    the connection opened or its first bytes came: uvicorn would hold it open for ever (its keep-alive timer runs
    only after an answer), and so a file descriptor, before any key is checked. A slow sender does not reset it."""
    within_s: float = 30.0

    def connection_made(self, transport) -> None:
        self._headers_due = None
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._await_headers()

    def connection_lost(self, exc) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _await_headers(self) -> None:
        if not self._between_requests():
            if self._headers_due is not None:
                self._headers_due.cancel()
                self._headers_due = None
        elif self._headers_due is None:
            self._headers_due = self.loop.call_later(self.within_s, self._headers_late)

    def _headers_late(self) -> None:
        self._headers_due = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


class HttpServer:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server: _InLoop | None = None
        self.task: asyncio.Task | None = None
        self.renewing: asyncio.Task | None = None

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

    async def start(self, app, tls: ServerTLS | None = None, headers_within_s: float = 30.0) -> None:
        """Serve `app`; with `tls`, HTTPS with the gRPC port's certificate (and its client CA: mTLS), a renewed
        certificate taken up within RENEW_CHECK_S. A connection whose request's headers take longer than
        `headers_within_s` is closed."""
        secure = {} if tls is None else {
            "ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key),
            "ssl_ca_certs": str(tls.client_ca) if tls.client_ca else None,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE}
        builders: list[Callable[[], ssl.SSLContext]] = []

        def kept(config, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            builders.append(build)  # builds a context from the files as they are now, with uvicorn's settings
            return build()

        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, server_header=False,
                                ws="none", timeout_graceful_shutdown=FLUSH_S, ssl_context_factory=kept if tls else None,
                                http=type("HeadersInTime", (_HeadersInTime,), {"within_s": headers_within_s}),
                                **secure)
        self.server = _InLoop(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                await self.task  # its error, if it failed to start
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        if tls is not None:
            self.renewing = asyncio.create_task(_renew(config.ssl, tls, builders[0]))

    async def stop(self, until: float, idle: Callable[[], bool], cut: Callable[[], None]) -> None:
        """Stop once `idle()` says no call is under way, or at `until` (monotonic time), when `cut()` ends the calls
        still under way: until then the port still takes connections, so a load balancer reads /health's 503 instead
        of a refused connection. What is written then (the cut calls' 503s too) goes out within FLUSH_S."""
        if self.task is None:
            self.sock.close()
            return
        await waited(idle, until)
        if self.renewing is not None:
            self.renewing.cancel()
        if not idle():
            cut()
        self.server.should_exit = True
        await self.task


async def _renew(context: ssl.SSLContext, tls: ServerTLS, build: Callable[[], ssl.SSLContext]) -> None:
    """Until cancelled: a changed certificate, key or client CA, once the key fits the certificate, serves every
    new connection (open ones keep theirs). Each change gets a context of its own (`build`), which `context`'s
    handshakes switch to as they begin: loaded into `context` itself, a pair of another key type would join the
    old one, not replace it (OpenSSL keeps a certificate per key type), and clients would still be shown the old
    one. Files that do not load are logged and the current ones keep serving, as on the gRPC port, until they
    change again."""
    seen = tls.signature()
    while True:
        await asyncio.sleep(RENEW_CHECK_S)
        if (now := tls.signature()) == seen:
            continue
        seen = now
        try:
            check_pair(tls.cert, tls.key)  # on a scratch context: a failure changes nothing
            renewed = build()
            context.sni_callback = lambda conn, server_name, _: setattr(conn, "context", renewed)
        except (OSError, ValueError) as err:
            log.error("HTTPS certificate not reloaded, still serving the previous one: %s", err,
                      extra={"fields": {"cert": str(tls.cert)}})
            continue
        log.info("HTTPS certificate reloaded", extra={"fields": {"cert": str(tls.cert)}})

