"""Async client for the classifier service, with the router's deadline budget and trace propagation; over TLS
(mTLS) when configured, renewed certificate files taken up without a restart."""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace

from tierwise.tls import RENEW_CHECK_S, ClientTLS
from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc

log = logging.getLogger("tierwise.router")
CLOSE_GRACE_S = 30.0  # calls on a replaced channel have this long to finish
RECONNECT_MS = 1000  # a channel whose classifier went away tries again this often
WARM_CHECK_TIMEOUT_S = 1.0
DEFAULT_MAX_TEXT_BYTES = 32 * 1024  # the classifier's own default (--max-text-bytes)


class ClassifierClient:
    def __init__(self, address: str, timeout_ms: float, tls: ClientTLS | None = None):
        self.address = address
        self.timeout_s = timeout_ms / 1000
        self.tls = tls
        self._seen = tls.signature() if tls else ()
        self._checked = time.monotonic()
        self._closing: set[asyncio.Task] = set()
        self._last_call = time.monotonic()  # when the last call came back, or the last warm check went out
        self._calls = 0  # Classify calls under way
        self.warm_checks = 0
        # The classifier's largest text (its default until ListHeads says): a longer query is sent cut to it. The
        # encoder reads only its first few hundred tokens, so the cut changes nothing the head sees.
        self.max_text_bytes = DEFAULT_MAX_TEXT_BYTES
        self._channel = self._connect(tls.credentials() if tls else None)
        self._tracer = trace.get_tracer("tierwise.router")

    def _connect(self, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        # round_robin spreads calls over every address a `dns:///` target resolves to (the Helm chart's
        # headless classifier Service); a plain host:port has one address and is unaffected.
        # Reconnect within a second of the classifier's return: gRPC's default backoff grows towards two minutes, and
        # every decision meanwhile is the heuristic's (5-14 s after a restart in the soak test; 1.3 s with these).
        # A classifier back at a new address (a rolled pod) is found only by resolving its name again, which gRPC
        # does at most every 30 s by default: 29 s of heuristic decisions measured, 0.5 s with a second.
        options = [("grpc.enable_retries", 0), ("grpc.lb_policy_name", "round_robin"),
                   ("grpc.initial_reconnect_backoff_ms", RECONNECT_MS), ("grpc.min_reconnect_backoff_ms", RECONNECT_MS),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_MS),
                   ("grpc.dns_min_time_between_resolutions_ms", RECONNECT_MS)]
        channel = (grpc.aio.secure_channel(self.address, credentials, options) if credentials
                   else grpc.aio.insecure_channel(self.address, options))
        self._stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        return channel

    def _renew(self) -> None:
        """Take up renewed TLS files (checked at most every RENEW_CHECK_S) on a new channel; the old one closes
        once its calls finished. Unusable files are logged and the current channel stays."""
        if self.tls is None or time.monotonic() - self._checked < RENEW_CHECK_S:
            return
        self._checked = time.monotonic()
        now = self.tls.signature()
        if now == self._seen:
            return
        self._seen = now
        try:
            credentials = self.tls.credentials()
        except (OSError, ValueError) as err:
            log.error("classifier TLS files not reloaded, still using the previous ones: %s", err)
            return
        old, self._channel = self._channel, self._connect(credentials)
        task = asyncio.get_running_loop().create_task(old.close(grace=CLOSE_GRACE_S))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.info("classifier TLS files reloaded", extra={"fields": {"ca": str(self.tls.ca)}})

    async def classify(self, text: str, head: str = "", timeout_s: float | None = None,
                       tradeoff: float | None = None, quality_target: float | None = None) -> pb.ClassifyResponse:
        with self._tracer.start_as_current_span(
            "tierwise.v1.ClassifierService/Classify", kind=trace.SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": "tierwise.v1.ClassifierService",
                        "rpc.method": "Classify", "server.address": self.address},
            record_exception=False, set_status_on_exception=False) as span:  # its code alone: the error can quote a head
            self._renew()
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            self._calls += 1
            try:
                return await self._stub.Classify(pb.ClassifyRequest(text=_cut(text, self.max_text_bytes), head=head,
                                                                     tradeoff=tradeoff,
                                                                     quality_target=quality_target),
                                                 timeout=min(self.timeout_s, timeout_s or self.timeout_s),
                                                 metadata=tuple(carrier.items()))
            except grpc.aio.AioRpcError as err:
                span.set_attribute("rpc.grpc.status_code", err.code().value[0])
                span.set_status(trace.Status(trace.StatusCode.ERROR, err.code().name))
                raise
            finally:
                self._calls -= 1
                self._last_call = time.monotonic()

    async def keep_warm(self, every_s: float) -> None:
        """Until cancelled: whenever no call is under way and none went out or came back for `every_s`, a health
        check (no span, no Classify metric), so the next call does not find the channel, the classifier's server and
        their memory cold. An unreachable classifier is the next real call's to report."""
        while True:
            wait = self._last_call + every_s - time.monotonic()
            await asyncio.sleep(wait if wait > 0 else every_s if self._calls else 0.0)
            if self._calls or time.monotonic() - self._last_call < every_s:
                continue
            self._last_call = time.monotonic()
            try:
                await self._health.Check(health_pb2.HealthCheckRequest(), timeout=WARM_CHECK_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                continue
            self.warm_checks += 1

    async def list_heads(self, timeout_s: float) -> pb.ListHeadsResponse:
        self._renew()
        reply = await self._stub.ListHeads(pb.ListHeadsRequest(), timeout=timeout_s)
        self.max_text_bytes = reply.max_text_bytes or self.max_text_bytes
        return reply

    async def close(self) -> None:
        for task in self._closing:
            task.cancel()
        await self._channel.close()


def _cut(text: str, max_bytes: int) -> str:
    """`text`, or its longest prefix of at most `max_bytes` UTF-8 bytes."""
    if len(text) * 4 <= max_bytes:  # no character takes more than 4 bytes
        return text
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:max_bytes].decode("utf-8", "ignore")
