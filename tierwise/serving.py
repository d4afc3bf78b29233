"""What both services do the same way: listen, health (NOT_SERVING until loaded), reflection, signals,
request decoding and validation errors, admission control and the per-call server span."""
from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import time
import unicodedata
from contextlib import asynccontextmanager, contextmanager
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from .telemetry import context_from_grpc, final_code
from .tls import ServerTLS, server_credentials
from .watching import hold_sighup

log = logging.getLogger("tierwise.serving")
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


async def run(name: str, listen: str, services: list[str], server: grpc.aio.Server,
              load: Callable[[], Awaitable[str]], close: Callable[[], Awaitable[None]],
              tls: ServerTLS | None = None, health_listen: str = "",
              draining: Callable[[float], None] | None = None, grace: float = 5.0) -> int:
    """Serve until SIGINT/SIGTERM. `load` readies the service and returns a description for the ready line.
    With `tls` the port speaks TLS only (mTLS when it names a client CA), its certificate re-read when the files
    change; `health_listen` adds a plaintext port serving grpc.health.v1 alone, for probes that cannot speak TLS
    (Kubernetes' native grpc probes). At shutdown, calls under way get `grace` seconds from the signal to finish,
    then are cancelled. `draining` is called when health turns NOT_SERVING, with the monotonic time that grace ends,
    so other ports can tell their own load balancers and have their calls (and `close`) done by then."""
    hold_sighup()  # before the port is announced: a SIGHUP sent on seeing it must find the handler
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*services, HEALTH, reflection.SERVICE_NAME], server)
    servers = [server]
    if health_listen:
        servers.append(grpc.aio.server(options=[("grpc.so_reuseport", 0)]))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, servers[1])

    async def set_health(status) -> None:
        for service in ("", *services):
            await health_servicer.set(service, status)

    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        credentials = server_credentials(tls) if tls else None
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        print(f"{name}: cannot serve TLS with {tls.cert} and {tls.key}: {err}", flush=True)
        return 2
    address = _bind(name, server, listen, credentials)
    health_address = _bind(name, servers[-1], health_listen, None) if health_listen else ""
    if not address or (health_listen and not health_address):
        return 2
    for each in servers:
        await each.start()
    extra = f", plaintext health on {health_address}" if health_address else ""
    print(f"{name} listening on {address} ({tls.mode if tls else 'plaintext'}{extra}; NOT_SERVING until loaded)",
          flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        description = await load()
    except Exception:
        log.exception("failed to load")
        for each in servers:
            await each.stop(0)
        return 1
    # What start-up built lives as long as the process: kept out of the collector's full passes, which would
    # otherwise walk it all (tens of ms, every call waiting) every few seconds under load.
    gc.collect()
    gc.freeze()
    await set_health(health_pb2.HealthCheckResponse.SERVING)
    print(f"{name} ready on {address} {description}", flush=True)
    log.info("serving", extra={"fields": {"service": name, "listen": address, "tls": tls.mode if tls else "off"}})

    await stop.wait()
    stop_by = time.monotonic() + grace
    log.info("shutting down", extra={"fields": {"service": name, "grace_s": grace}})
    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    if draining is not None:
        draining(stop_by)
    await server.stop(grace=max(0.0, stop_by - time.monotonic()))
    for each in servers[1:]:
        await each.stop(0)
    await close()
    print(f"{name} stopped", flush=True)
    return 0


def _bind(name: str, server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> str:
    """host:port bound (the port the system picked for port 0), a `unix:` socket as given, or "" after saying why
    it could not be."""
    try:
        port = (server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen))
    except RuntimeError:
        port = 0
    if not port:
        print(f"{name}: cannot listen on {listen}", flush=True)
        return ""
    return listen if listen.startswith("unix:") else f"{listen.rsplit(':', 1)[0]}:{port}"


GRPC_MAX_MESSAGE = 2**31 - 1  # the most gRPC receives in one message: its length is a C int

# Trailing metadata telling gRPC's retry policies (and Tierwise's clients) when to retry: in ms, or never if negative.
PUSHBACK = "grpc-retry-pushback-ms"
NO_RETRY = ((PUSHBACK, "-1"),)


async def waited(done: Callable[[], bool], by: float) -> None:
    """Returns once `done()` holds, or at monotonic time `by`."""
    while not done() and time.monotonic() < by:
        await asyncio.sleep(0.01)


def retry_after(seconds: float) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that asks for a retry no sooner than `seconds` from now (at least a millisecond)."""
    return ((PUSHBACK, str(max(1, math.ceil(seconds * 1000)))),)


def pushback_ms(trailing: tuple[tuple[str, str], ...]) -> int | None:
    """The pushback `trailing` carries, in ms (negative: do not retry), or None."""
    return next((int(value) for key, value in trailing if key == PUSHBACK), None)


class Rejected(Exception):
    """A call refused with a gRPC status; the message names the field or the condition. `trailing`: metadata the
    refusal carries (grpc-retry-pushback-ms, say)."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: tuple[tuple[str, str], ...] = (),
                 traced: str | None = None):
        super().__init__(message)
        self.code = code
        self.trailing = trailing
        self.traced = message if traced is None else traced  # what a span's status may say: no caller's content


def invalid(message: str) -> Rejected:
    """INVALID_ARGUMENT; `message` starts with the field it names (`messages[2].content: ...`)."""
    return Rejected(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_size(text: str, field: str, max_bytes: int) -> int:
    """The UTF-8 size of `text`; INVALID_ARGUMENT naming `field` past `max_bytes`."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {size} bytes exceed the limit of {max_bytes} bytes")
    return size


def check_text(text: str, field: str, max_bytes: int) -> None:
    """At most `max_bytes` of UTF-8 and not blank: else INVALID_ARGUMENT naming `field`. Blank is what shows
    nothing: empty, or only whitespace, control (NUL...) and zero-width or other ignorable characters."""
    check_size(text, field, max_bytes)
    if all(ch.isspace() or ch in _IGNORABLE or unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{field}: must not be empty or blank (only whitespace, control or zero-width characters)")


# Unicode's default-ignorable code points that are not format characters (Cf): fillers, variation selectors.
_IGNORABLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0"
                       + "".join(map(chr, [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])))


def shown(value: str, limit: int = 64) -> str:
    """A caller's `value` quoted for an error message, cut at `limit` characters so it cannot make the error long."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


class ThrottledLog:
    """A warning at most every `seconds`, counting the events it stands for: under overload a line per event would
    be one more load."""

    def __init__(self, logger: logging.Logger, seconds: float = 10.0):
        self.logger, self.seconds, self.count, self.next_at = logger, seconds, 0, 0.0

    def note(self, message: str, **fields) -> None:
        self.count += 1
        now = time.monotonic()
        if now >= self.next_at:
            self.logger.warning("%s (%d since the last such line)", message, self.count, extra={"fields": fields})
            self.count, self.next_at = 0, now + self.seconds


class InFlight:
    """Admission control: at most `limit` units of work (calls, texts) at once. Past it a call gets
    RESOURCE_EXHAUSTED at once instead of a place in a queue that only grows under overload; refusals are logged."""

    def __init__(self, limit: int, unit: str, logger: logging.Logger):
        self.limit, self.unit, self.count = limit, unit, 0
        self.refused = ThrottledLog(logger)

    @contextmanager
    def admit(self, n: int = 1):
        if self.count + n > self.limit:
            self.refused.note(f"overloaded: calls refused with RESOURCE_EXHAUSTED past {self.limit} {self.unit} "
                              "in flight", in_flight=self.count, limit=self.limit)
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"overloaded: {self.count} {self.unit} in flight, limit {self.limit}; retry with backoff")
        self.count += n
        try:
            yield
        finally:
            self.count -= n


def record_error(span: trace.Span, err: BaseException) -> None:
    """`span` ended by `err`: a refusal's code and (but for INVALID_ARGUMENT, the caller's doing) its traced words as
    an error status; anything else an internal error."""
    if isinstance(err, Rejected):
        span.set_attribute("rpc.grpc.status_code", err.code.value[0])
        if err.code != grpc.StatusCode.INVALID_ARGUMENT:
            span.set_status(trace.Status(trace.StatusCode.ERROR, err.traced))
    else:
        span.set_status(trace.Status(trace.StatusCode.ERROR, "internal error"))


@asynccontextmanager
async def rpc_span(tracer: trace.Tracer, service: str, method: str, context, logger: logging.Logger,
                   before_abort: Callable[[], Awaitable[object]] | None = None):
    """A server span per call, parented by the caller's trace context; maps errors to gRPC statuses:
    `Rejected` to its code, anything unexpected to INTERNAL (logged, never leaked to the caller).
    `before_abort` is awaited before a call is ended with an error: a stream's messages still on their way out."""
    with tracer.start_as_current_span(
        f"{service}/{method}", context=context_from_grpc(context), kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except (asyncio.CancelledError, GeneratorExit) as err:
            # gRPC ended the call (its deadline, its caller gone) before the handler's own timer could say so.
            code = grpc.StatusCode[final_code(context, type(err))]
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                span.set_status(trace.Status(trace.StatusCode.ERROR, "deadline exceeded"))
            raise
        except Rejected as err:
            record_error(span, err)
            await _abort(context, before_abort, err.code, str(err), err.trailing)
        except Exception as err:
            logger.exception("unexpected error in %s", method)
            record_error(span, err)
            await _abort(context, before_abort, grpc.StatusCode.INTERNAL, "internal error; see the service log")


async def _abort(context, before_abort: Callable[[], Awaitable[object]] | None, code: grpc.StatusCode, details: str,
                 trailing: tuple[tuple[str, str], ...] = ()) -> None:
    if before_abort is not None:
        await before_abort()
    await context.abort(code, details, trailing_metadata=trailing)


# Calls the gRPC core has taken off the wire that the aio server has not yet picked up. Past grpc's defaults
# (1000, then at random up to 3000) the core drops such calls, and their callers see a bare CANCELLED that no
# log mentions: a burst of a few thousand calls reaches that before the event loop catches up. Held here
# instead (about 10 KB each), every call reaches the service, whose admission control answers it at once.
PENDING_CALLS = 20_000


def server_options(*extra: tuple[str, int]) -> list[tuple[str, int]]:
    """Both services' gRPC server options, then `extra`."""
    return [("grpc.so_reuseport", 0), ("grpc.server.max_pending_requests", PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS), *extra]
