"""The Prometheus scrape endpoint (`--metrics-listen`): prometheus_client's WSGI app, on a server that bounds what a
caller can hold. prometheus_client's own server gives every connection a thread and keeps it while the connection
sends nothing, for ever: 190 idle connections used up a router's file descriptors and took its API down with them.
Here a connection whose request is not in within IDLE_S of its opening is closed, however slowly it trickles, and
past MAX_CONNECTIONS at once a new one is closed unanswered, so the port costs at most that many threads and
descriptors whoever connects, and holds a slot for at most IDLE_S."""
from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app

MAX_CONNECTIONS = 32  # scrapers are a few Prometheus servers; this leaves them room beside a stray client or two
IDLE_S = 5.0


class _Handler(WSGIRequestHandler):
    timeout = IDLE_S  # per read: a connection silent this long is closed

    def setup(self) -> None:
        super().setup()
        self._due = threading.Timer(IDLE_S, self._cut_off)  # a sender of a byte a second resets no per-read timeout
        self._due.daemon = True
        self._due.start()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # the request line and the headers: all a scrape sends
        self._due.cancel()
        return parsed

    def finish(self) -> None:
        self._due.cancel()
        super().finish()

    def _cut_off(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format, *args) -> None:  # noqa: A002 - a scrape per 15 s is no news; errors neither
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 would leave connections waiting on SYN retries, not on us

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily):
        self.address_family = family
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request, client_address) -> None:
        """socketserver prints a traceback to stderr; a caller that went quiet or away is no error of ours."""
        if not isinstance(sys.exc_info()[1], OSError):  # TimeoutError and ConnectionError are OSErrors
            logging.getLogger("tierwise.telemetry").exception("a metrics request failed")

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_metrics(host: str, port: int) -> WSGIServer:
    """The scrape endpoint on host:port (port 0: a free one; `server_port` says which), served by a daemon thread.
    OSError when it cannot listen there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _Server((host, port), family)
    server.set_app(make_wsgi_app())
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
