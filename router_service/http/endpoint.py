"""A POST endpoint of the HTTP API: the key, the body, then the core's answer as one JSON object or as a stream of
server-sent events, in the shapes of one OpenAI API (`Api`: chat completions, responses). One task serves the whole
exchange (its span stays the current one throughout); a second only watches for the client going away and, when it
does, cancels the work as gRPC does for a cancelled call."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from contextlib import aclosing
from typing import Protocol

from opentelemetry import trace
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tierwise.serving import Rejected, shown
from tierwise.v1 import router_pb2 as pb

from .. import access_log, idempotency
from ..auth import LATER, NOW, KeyGate, settle_current_admission
from ..core import RouterCore
from ..model_names import ModelNames
from .errors import BodyStalled, as_json, bad_request, error_headers, id_headers, internal_error, status_of
from .health import Health
from .request import ChatRequest
from .spans import http_span

log = logging.getLogger("tierwise.router.http")
TIMEOUT_HEADER = "x-tierwise-timeout-ms"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


class Events(Protocol):
    """One streamed answer's server-sent events, as bytes."""

    def opening(self) -> bytes:
        """What goes out with the status line, before the first text."""

    def text(self, delta: str) -> bytes:
        """A piece of the answer's text."""

    def end(self, summary: pb.CompleteResponse) -> bytes:
        """The rest of the answer (its tool calls, ...) and the stream's end."""

    def failure(self, body: dict) -> bytes:
        """An error (the API's error body) after the stream began, ending it."""


class Api(Protocol):
    """One API's request, response and error shapes over the core's CompleteRequest and CompleteResponse."""
    route: str
    method: str  # what the router's call count and latency histograms name it, "Stream" added for a stream

    def key(self, headers) -> str:
        """The API key the request's headers (lower-cased name, value pairs) carry; "" for none."""

    def error(self, err: Rejected) -> dict:
        """The body that tells the caller of a refusal or failure."""

    def parse(self, body: bytes, names: ModelNames) -> ChatRequest:
        """The request in `body` (its `model` one of `names`), or a 400 naming the field that is wrong."""

    def whole(self, chat: ChatRequest, summary: pb.CompleteResponse) -> dict:
        """The response to a request that was not streamed."""

    def events(self, chat: ChatRequest, route: pb.RouteResponse) -> Events:
        """The events of a streamed one."""


class Endpoint:
    """An API's endpoint, an ASGI app of its own."""

    def __init__(self, core: RouterCore, gate: KeyGate | None, api: Api, names: ModelNames, health: Health):
        self.core, self.gate, self.api, self.names, self.health = core, gate, api, names, health
        self.bodies = Bodies(core)
        self.logged = core.cfg.telemetry.access_log

    async def __call__(self, scope, receive, send) -> None:
        with self.health.under_way():
            await self._exchange(scope, receive, send)

    async def _exchange(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        exchange = _Exchange(scope, receive, send, self.api)
        with http_span(self.core.tracer, request, self.api.route) as span:
            exchange.request_id = request_id(span)
            entry = access_log.begin(self.api.method, peer(scope), exchange.request_id) if self.logged else None
            try:
                if self.gate is not None:  # the core charges the key it admits (auth.charge_current_key)
                    # A request with an idempotency key may be a retry answered for nothing: the core checks the
                    # key's spend before it pays.
                    self.gate.admit(self.api.key(request.headers.items()), peer(scope),
                                    spend=LATER if idempotency.HEADER in request.headers else NOW)
                body = await self.health.unless_cut(self.bodies.read(request))
                try:
                    chat = self.api.parse(body, self.names)
                except Rejected:
                    exchange.method += "Stream" if _asks_to_stream(body) else ""  # counted as what it asked
                    raise
                deadline = _deadline(request.headers.get(TIMEOUT_HEADER))
                key = "" if chat.stream else idempotency.checked(request.headers.get(idempotency.HEADER))
                span.set_attribute("tierwise.stream", chat.stream)
                answered = _unless_disconnected(receive, self._answer(chat, deadline, span, exchange, key))
                if await self.health.unless_cut(answered):
                    exchange.code = "CANCELLED"
            except Rejected as err:
                await self.health.unless_cut(exchange.fail(err, span), quiet=True)
            except asyncio.CancelledError:
                exchange.code = "CANCELLED"
                raise
            except ClientDisconnect:  # gone while sending its body: nobody to answer
                exchange.code = "CANCELLED"
            except Exception:
                log.exception("unexpected error in %s (request %s)", self.api.route, exchange.request_id)
                await exchange.fail(internal_error(), span)
            finally:
                if exchange.status:  # the status the client got; none when it left before one went out
                    span.set_attribute("http.response.status_code", exchange.status)
                settle_current_admission()
                self.core.metrics.calls.add(exchange.method, exchange.code)
                if entry is not None:
                    entry.end(exchange.code, exchange.status, exchange.method)

    async def _answer(self, chat: ChatRequest, deadline: float | None, span, exchange: "_Exchange",
                      key: str) -> None:
        """The answer; a streamed one is never kept, so its idempotency `key` goes unused."""
        method = exchange.method = self.api.method + ("Stream" if chat.stream else "")
        try:
            if not chat.stream:
                summary, replayed = await self.core.complete(method, chat.request, deadline, span, key)
                headers = _headers(summary.decision, summary) | ({idempotency.REPLAYED: "true"} if replayed else {})
                await exchange.json(200, self.api.whole(chat, summary), headers)
                return
            async with aclosing(self.core.answer(method, chat.request, deadline, span, stream=True)) as events:
                await self._stream(chat, events, exchange)
        except Rejected as err:
            await exchange.fail(chat.refused(err), span)

    async def _stream(self, chat: ChatRequest, events, exchange: "_Exchange") -> None:
        """The API's events as the deltas come. Nothing is sent before the first delta, so a refusal up to then (no
        provider, deadline) still gets its HTTP status; after it, the API's error event ends the stream."""
        route: pb.RouteResponse = (await anext(events)).decision
        shape = exchange.shape = self.api.events(chat, route)
        event = await anext(events)
        await exchange.start(200, SSE_HEADERS + _encoded(_headers(route)))
        await exchange.body(shape.opening())
        while True:
            if event.WhichOneof("event") == "summary":
                await exchange.body(shape.end(event.summary), more=False)
                return
            await exchange.body(shape.text(event.delta))
            event = await anext(events)


def _asks_to_stream(body: bytes) -> bool:
    """Whether a body that was refused asked for a stream (read again only on that path)."""
    try:
        asked = json.loads(body)
    except (ValueError, RecursionError):  # what the parse refused it for: not JSON, or nested too deeply
        return False
    return isinstance(asked, dict) and asked.get("stream") is True


class _Exchange:
    """The response side of one request: whether the status line went out decides how an error is told."""

    def __init__(self, scope, receive, send, api: Api):
        self.scope, self.receive, self.send, self.api = scope, receive, send, api
        self.done = False
        self.method, self.code = api.method, "OK"  # what the router's call count records for it
        self.status = 0  # the HTTP status sent (0: none, the client went away first)
        self.request_id = ""
        self.shape: Events | None = None  # once a stream began

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        ids = [(k.encode(), v.encode()) for k, v in id_headers(self.request_id).items()]
        await self.send({"type": "http.response.start", "status": status, "headers": headers + ids})

    async def body(self, data: bytes, more: bool = True) -> None:
        self.done = not more
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, body: dict, headers: dict[str, str]) -> None:
        self.done, self.status = True, status
        await Response(as_json(body), status, headers | id_headers(self.request_id),
                       media_type="application/json")(
            self.scope, self.receive, self.send)

    async def fail(self, err: Rejected, span) -> None:
        self.code = err.code.name
        status = status_of(err)
        span.set_attribute("error.type", str(status))
        if status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR, err.traced))
        if self.done:
            return
        if self.status:  # the status line went out: the error can only end the stream
            await self.body(self.shape.failure(self.api.error(err)), more=False)
        else:
            await self.json(status, self.api.error(err), error_headers(err))


def _headers(route: pb.RouteResponse, summary: pb.CompleteResponse | None = None) -> dict[str, str]:
    """What the router decided, and (once the answer is whole) what it cost."""
    headers = {"x-tierwise-tier": str(summary.tier if summary else route.tier),
               "x-tierwise-strategy": route.strategy,
               "x-tierwise-estimated-cost-usd": str(route.estimated_cost_usd),
               "x-tierwise-degraded": "true" if route.degraded else "false"}
    if summary is not None:
        headers |= {"x-tierwise-cost-usd": str(summary.cost_usd), "x-tierwise-provider": summary.provider,
                    "x-tierwise-escalations": str(summary.escalations)}
    return headers


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


class Bodies:
    """How request bodies are read: at most `limit` bytes (JSON's escapes take up to 6 bytes for a byte of text,
    \\u0001, and past this a body is refused unread), each piece within `stall_s` of the one before."""

    def __init__(self, core: RouterCore):
        self.limit = 6 * core.cfg.limits.max_total_bytes + (64 << 10)
        self.stall_s = core.cfg.http.body_timeout_s

    async def read(self, request: Request) -> bytes:
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):  # a compressed body would otherwise read as text that is not JSON
            raise bad_request(f"content-encoding: {shown(encoding)} bodies are not supported; send the body "
                              "uncompressed")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise bad_request(f"body: {declared} bytes exceed the limit of {self.limit} bytes")
        chunks, size = [], 0
        pieces = aiter(request.stream())
        while True:
            try:
                async with asyncio.timeout(self.stall_s):
                    chunk = await anext(pieces)
            except StopAsyncIteration:
                return b"".join(chunks)
            except TimeoutError:
                raise BodyStalled(self.stall_s) from None
            size += len(chunk)
            if size > self.limit:
                raise bad_request(f"body: more than the limit of {self.limit} bytes")
            chunks.append(chunk)


def _deadline(value: str | None) -> float | None:
    """The caller's deadline from x-tierwise-timeout-ms (HTTP has no grpc-timeout); None without one."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not (math.isfinite(ms) and ms > 0):
        raise bad_request(f"{TIMEOUT_HEADER}: must be a positive number of milliseconds")
    return time.monotonic() + ms / 1e3


async def _unless_disconnected(receive, work) -> bool:
    """Runs `work`, cancelled if the client disconnects first; whether it did. (A plain task, not an anyio task
    group: this runs for every request, and a task group costs about ten times as much.)"""
    task, gone = asyncio.current_task(), []

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.append(True)
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # our own cancellation, for a client that is gone: nothing is left to answer
    finally:
        watcher.cancel()
    return bool(gone)


def request_id(span) -> str:
    """The request's trace id, which its `x-request-id` header gives the caller to quote: the id its spans are
    found by (a random one when tracing is off)."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else uuid.uuid4().hex


def peer(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""
