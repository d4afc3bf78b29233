"""The access log (`telemetry.access_log`): one line in the service log for each call to the router's front doors,
gRPC's RouterService methods and the HTTP APIs' POSTs, answered or refused. It says where a call came from, what was
decided, which model answered, what it cost and how it ended, so one request can be found without a tracing
backend. It never holds a prompt, an answer or a key: the key's id only.

A call's entry lives in a context variable from the front door to the end of the call, so the core fills it in as it
decides and answers without being handed it.
"""
from __future__ import annotations

import logging
import time
from contextvars import ContextVar

import grpc

from tierwise.handlers import rewrapped
from tierwise.telemetry import final_code
from tierwise.v1 import router_pb2 as pb

from .auth import current_key_id

log = logging.getLogger("tierwise.router.access")


class Entry:
    """One call's line, filled in as the call goes."""
    __slots__ = ("fields", "started")

    def __init__(self, method: str, peer: str, request_id: str = ""):
        self.started = time.perf_counter()
        self.fields: dict = {"method": method, "peer": peer}
        if request_id:
            self.fields["request_id"] = request_id

    def traced(self, span) -> None:
        """The call's trace id, by which its spans are found, unless the front door gave it a request id already."""
        context = span.get_span_context()
        if context.is_valid:
            self.fields.setdefault("request_id", f"{context.trace_id:032x}")

    def decided(self, route: pb.RouteResponse) -> None:
        self.fields.update(strategy=route.strategy, decided_tier=route.tier, tier=route.tier, model=route.model,
                           degraded=route.degraded, head_version=route.head_version)

    def asked(self, quality_target: float) -> None:
        """The quality target the call asked for, itself or by its key (a strategy with no calibrated head has no
        use for it)."""
        self.fields["quality_target"] = quality_target

    def answered(self, summary: pb.CompleteResponse) -> None:
        self.fields.update(tier=summary.tier, model=summary.model, provider=summary.provider,
                           escalations=summary.escalations, cache_hit=summary.cache_hit,
                           input_tokens=summary.usage.input_tokens, output_tokens=summary.usage.output_tokens,
                           cached_input_tokens=summary.usage.cached_input_tokens, cost_usd=summary.cost_usd)

    def charged(self, cost_usd: float) -> None:
        """The key paid `cost_usd` before any answer (a judge deciding the tier): a Route's whole cost, and part of
        what a call that then fails paid. An answer's own cost_usd includes it."""
        self.fields["cost_usd"] = self.fields.get("cost_usd", 0.0) + cost_usd

    def unsummed(self, cost_usd: float, streaming: tuple[int, str] | None, output_tokens: int) -> None:
        """The call ended before its answer was summed up (cancelled, cut, failed): what its key was charged and,
        for a stream cut short, the tier and provider of what went out and its tokens, estimated."""
        if cost_usd:
            self.charged(cost_usd)
        if streaming is not None:
            self.fields.update(tier=streaming[0], provider=streaming[1], output_tokens=output_tokens)

    def replayed(self, summary: pb.CompleteResponse) -> None:
        """The call got the answer of an earlier call with its idempotency key, which paid for it."""
        self.decided(summary.decision)
        self.answered(summary)
        self.fields.update(cost_usd=0.0, replayed=True)

    def unattended(self, code: str) -> None:
        """A second line for a call whose caller left while its work went on (idempotency.py): how that work
        ended, and what it cost."""
        self.fields["unattended"] = True
        self.fields.pop("status", None)  # the HTTP status its caller got, or did not
        self.end(code)

    def end(self, code: str, status: int | None = None, method: str = "") -> None:
        """Write the line: the call ended with gRPC code `code` (and, over HTTP, `status`, under `method` when it is
        known only now: a stream's)."""
        fields = self.fields
        fields.update(code=code, ms=round((time.perf_counter() - self.started) * 1000, 3))
        if method:
            fields["method"] = method
        if status is not None:
            fields["status"] = status
        if key_id := current_key_id():
            fields["key_id"] = key_id
        log.info("call", extra={"fields": fields})


class _Unlogged(Entry):
    """The entry of a call the access log does not record (it is off): every step does nothing."""

    def __init__(self):
        pass

    def traced(self, span) -> None:
        pass

    def decided(self, route: pb.RouteResponse) -> None:
        pass

    def asked(self, quality_target: float) -> None:
        pass

    def answered(self, summary: pb.CompleteResponse) -> None:
        pass

    def charged(self, cost_usd: float) -> None:
        pass

    def unsummed(self, cost_usd: float, streaming: tuple[int, str] | None, output_tokens: int) -> None:
        pass

    def replayed(self, summary: pb.CompleteResponse) -> None:
        pass

    def unattended(self, code: str) -> None:
        pass

    def end(self, code: str, status: int | None = None, method: str = "") -> None:
        pass


_CURRENT: ContextVar[Entry] = ContextVar("tierwise_access_entry", default=_Unlogged())


def begin(method: str, peer: str, request_id: str = "") -> Entry:
    """A new entry, the current one for the rest of this call."""
    entry = Entry(method, peer, request_id)
    _CURRENT.set(entry)
    return entry


def current() -> Entry:
    """This call's entry (one that records nothing when the access log is off)."""
    return _CURRENT.get()


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """Records `service`'s gRPC calls. Put first among the interceptors, it sees the front door's refusals too."""

    def __init__(self, service: str):
        self.prefix = f"/{service}/"

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler  # health and reflection are not the router's calls
        method = details.method.rsplit("/", 1)[-1]
        return rewrapped(handler, lambda request, context: _Logged(method, context))


class _Logged:
    """Around one gRPC call: its entry, begun as the call starts and written as it ends, with its final code."""
    __slots__ = ("entry", "context")

    def __init__(self, method: str, context):
        self.entry, self.context = begin(method, context.peer()), context

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(self, kind, err, traceback) -> bool:
        self.entry.end(final_code(self.context, kind))
        return False
