"""The Tierwise router client, blocking and asyncio, over the stubs in tierwise_client.v1.

Deadlines on every call; `UNAVAILABLE` (a restarting router, a dropped connection) is retried with exponential
backoff before anything was streamed, a Complete with the same idempotency key (answered and paid once); TLS (with a client certificate for mTLS) and an API key (sent as
`authorization: Bearer <key>` metadata) when configured; a W3C `traceparent` per call joins the caller's trace.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
import uuid
import warnings
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence, TypeVar

import grpc
import grpc.aio

from tierwise_client.v1 import router_pb2 as pb
from tierwise_client.v1 import router_pb2_grpc

T = TypeVar("T")
Messages = str | Sequence[tuple[str, str]] | Sequence[dict] | Sequence[pb.Message]  # dicts: {"role", "content"}
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(frozen=True)
class ClientOptions:
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.2
    api_key: str | None = None
    # PEM root certificates for TLS; None with tls=True uses the system roots.
    tls: bool = False
    root_certificates: bytes | None = None
    # PEM client certificate chain and its private key, for a router that requires mTLS (tls.client_ca).
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    # Sent with every call, after the API key: (lowercase name, value) pairs.
    metadata: tuple[tuple[str, str], ...] = ()
    # The largest reply taken: an answer with log probabilities can pass gRPC's default 4 MiB.
    max_message_bytes: int = 64 << 20

    def __post_init__(self):
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key: give both or neither")
        if self.certificate_chain is not None and not self.tls:
            raise ValueError("certificate_chain: a client certificate needs tls=True")
        # gRPC reads these only at the handshake, whose failure looks like a router down and is retried as one.
        for name in ("root_certificates", "certificate_chain", "private_key"):
            pem = getattr(self, name)
            if pem is not None and (not isinstance(pem, bytes) or b"-----BEGIN " not in pem):
                raise ValueError(f"{name}: must be PEM bytes (-----BEGIN ...), as read from the file in binary mode")
        # Comparisons NaN passes: gRPC takes NaN or an infinite timeout as one already past.
        if not (0 < self.timeout_s < math.inf and 0 <= self.backoff_s < math.inf) or self.retries < 0 \
                or self.max_message_bytes <= 0:
            raise ValueError("timeout_s and max_message_bytes must be positive and timeout_s and backoff_s finite; "
                             "retries and backoff_s not negative")
        if self.api_key and not self.tls:
            warnings.warn("api_key goes out in clear text without tls=True: only over a network you trust",
                          stacklevel=3)


def _messages(messages: Messages) -> list[pb.Message]:
    if isinstance(messages, str):
        return [pb.Message(role="user", content=messages)]
    return [m if isinstance(m, pb.Message) else pb.Message(role=m["role"], content=m["content"])
            if isinstance(m, dict) else pb.Message(role=m[0], content=m[1]) for m in messages]


def _request(messages: Messages, strategy: str, max_tokens: int, temperature: float | None,
             head: str, sampling: dict[str, Any]) -> pb.CompleteRequest:
    """`sampling`: top_p, stop (a string or a list), seed, presence_penalty, frequency_penalty, response_format (a
    dict, or its JSON text), tools (OpenAI's list, or its JSON text), tool_choice ("auto", "none", "required" or a
    dict naming a function), parallel_tool_calls, logprobs and top_logprobs, passed to the provider that answers, and
    quality_target (as `route`'s); None leaves one unset."""
    fields = {name: value for name, value in sampling.items() if value is not None}
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    for name in ("response_format", "tools", "tool_choice"):
        if isinstance(fields.get(name), (dict, list)):
            fields[name] = json.dumps(fields[name])
    request = pb.CompleteRequest(messages=_messages(messages), strategy=strategy, max_tokens=max_tokens, head=head,
                                 **fields)
    if temperature is not None:
        request.temperature = temperature
    return request


def _route(query: str, strategy: str, head: str, quality_target: float | None) -> pb.RouteRequest:
    return pb.RouteRequest(query=query, strategy=strategy, head=head, quality_target=quality_target)


def _credentials(options: ClientOptions) -> grpc.ChannelCredentials | None:
    if not options.tls:
        return None
    return grpc.ssl_channel_credentials(options.root_certificates, options.private_key, options.certificate_chain)


def _metadata(options: ClientOptions, traceparent: str | None, tracestate: str | None) -> tuple[tuple[str, str], ...]:
    pairs = (("authorization", f"Bearer {options.api_key}"),) if options.api_key else ()
    if traceparent is not None:
        if not _TRACEPARENT.fullmatch(traceparent):
            raise ValueError(f"traceparent: not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>): {traceparent!r}")
        pairs += (("traceparent", traceparent),) + ((("tracestate", tracestate),) if tracestate else ())
    return pairs + options.metadata


def _once(metadata: tuple[tuple[str, str], ...], key: str | None) -> tuple[tuple[str, str], ...]:
    """`metadata` with the call's idempotency key, which every retry of the call sends: `key`, else a random one;
    none for `key` "" (the router then stops a call the caller cancels at once, where with a key it goes on a while
    for a retry). A key in ClientOptions.metadata would name every call alike: this call's replaces it."""
    if key is None:
        key = uuid.uuid4().hex
    return tuple(pair for pair in metadata if pair[0] != "idempotency-key") + ((("idempotency-key", key),) if key
                                                                               else ())


def _backoff(err: grpc.RpcError, attempt: int, options: ClientOptions, deadline: float,
             streamed: bool = False) -> float | None:
    """Seconds to wait before retrying, or None to give up. Only UNAVAILABLE is retried, never once text was
    streamed (the caller would see the answer twice), and never when the router says not to (a negative
    grpc-retry-pushback-ms: every provider was already asked, and would be billed again). A positive one is the
    wait the providers asked for: retried after it, if the deadline allows."""
    left = deadline - time.monotonic()
    if streamed or err.code() != grpc.StatusCode.UNAVAILABLE or attempt >= options.retries or left <= 0:
        return None
    pushback = next((str(v) for k, v in (err.trailing_metadata() or ()) if k == "grpc-retry-pushback-ms"), "")
    if pushback.startswith("-"):
        return None
    if pushback.isdigit():  # every provider said when it could answer again
        wait = int(pushback) / 1000
        return wait if wait < left else None
    return min(random.uniform(0, options.backoff_s * 2 ** attempt), left)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


class _ClientBase:
    """What both clients share: options, the channel, and reading stream events."""

    def __init__(self, address: str, options: ClientOptions | None, grpc_module):
        self.options = options or ClientOptions()
        # Totals of the last stream, once its summary event arrived.
        self.last_summary: pb.CompleteResponse | None = None
        creds = _credentials(self.options)
        # An answer with log probabilities can pass gRPC's default 4 MiB per message.
        channel_options = [("grpc.max_receive_message_length", self.options.max_message_bytes)]
        self._channel = (grpc_module.secure_channel(address, creds, channel_options) if creds
                         else grpc_module.insecure_channel(address, channel_options))
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    def _piece(self, event: pb.CompleteStreamResponse) -> str | None:
        """The text of a delta event; records the summary event; None for anything but a delta."""
        kind = event.WhichOneof("event")
        if kind == "summary":
            self.last_summary = event.summary
        return event.delta if kind == "delta" else None

    def _deadline(self, timeout_s: float | None) -> float:
        if timeout_s is not None and not 0 < timeout_s < math.inf:  # 0 is no deadline to keep, not the default one
            raise ValueError(f"timeout_s must be positive and finite, not {timeout_s}")
        return time.monotonic() + (timeout_s or self.options.timeout_s)


class RouterClient(_ClientBase):
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(self, address: str, options: ClientOptions | None = None):
        super().__init__(address, options, grpc)

    def route(self, query: str, strategy: str = "", head: str = "", timeout_s: float | None = None, *,
              traceparent: str | None = None, tracestate: str | None = None,
              quality_target: float | None = None) -> pb.RouteResponse:
        """The router's decision for `query` (`.tier`, `.model`, `.strategy`, `.estimated_cost_usd`, ...), held to
        `quality_target` of the frontier's quality when given (e.g. 0.99; None: the head's default)."""
        return self._unary(self._stub.Route, _route(query, strategy, head, quality_target), timeout_s,
                           _metadata(self.options, traceparent, tracestate))

    def complete(self, messages: Messages, strategy: str = "", max_tokens: int = 0,
                 temperature: float | None = None, head: str = "", timeout_s: float | None = None, *,
                 traceparent: str | None = None, tracestate: str | None = None, idempotency_key: str | None = None,
                 **sampling: Any) -> pb.CompleteResponse:
        """The answer. Its retries send the same `idempotency_key` (a random one by default; "" for none), so a
        call whose connection dropped is answered once and paid once."""
        return self._unary(self._stub.Complete, _request(messages, strategy, max_tokens, temperature, head, sampling),
                           timeout_s, _once(_metadata(self.options, traceparent, tracestate), idempotency_key))

    def stream(self, messages: Messages, strategy: str = "", max_tokens: int = 0, temperature: float | None = None,
               head: str = "", timeout_s: float | None = None, *, traceparent: str | None = None,
               tracestate: str | None = None, **sampling: Any) -> Iterator[str]:
        """Text pieces as they arrive; `last_summary` holds the totals once the stream ended."""
        request = _request(messages, strategy, max_tokens, temperature, head, sampling)
        metadata = _metadata(self.options, traceparent, tracestate)

        def pieces(timeout: float) -> Iterator[str]:
            for event in self._stub.CompleteStream(request, timeout=timeout, metadata=metadata):
                piece = self._piece(event)
                if piece is not None:
                    yield piece
        self.last_summary = None
        yield from self._retrying(pieces, timeout_s)

    def _unary(self, method: Callable[..., T], request, timeout_s: float | None, metadata) -> T:
        [response] = self._retrying(lambda t: (method(request, timeout=t, metadata=metadata),), timeout_s)
        return response

    def _retrying(self, call: Callable[[float], Iterable[T]], timeout_s: float | None) -> Iterator[T]:
        """What `call(timeout)` yields; called again after UNAVAILABLE, with backoff, while it has yielded nothing."""
        deadline = self._deadline(timeout_s)
        for attempt in range(self.options.retries + 1):
            yielded = False
            try:
                for item in call(_left(deadline)):
                    yielded = True
                    yield item
                return
            except grpc.RpcError as err:
                wait = _backoff(err, attempt, self.options, deadline, streamed=yielded)
                if wait is None:
                    raise
                time.sleep(wait)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RouterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRouterClient(_ClientBase):
    """asyncio client with the same API (`await route(...)`, `async for piece in stream(...)`). Create it inside
    the event loop that uses it."""

    def __init__(self, address: str, options: ClientOptions | None = None):
        super().__init__(address, options, grpc.aio)

    async def route(self, query: str, strategy: str = "", head: str = "", timeout_s: float | None = None, *,
                    traceparent: str | None = None, tracestate: str | None = None,
                    quality_target: float | None = None) -> pb.RouteResponse:
        return await self._unary(self._stub.Route, _route(query, strategy, head, quality_target),
                                 timeout_s, _metadata(self.options, traceparent, tracestate))

    async def complete(self, messages: Messages, strategy: str = "", max_tokens: int = 0,
                       temperature: float | None = None, head: str = "", timeout_s: float | None = None, *,
                       traceparent: str | None = None, tracestate: str | None = None,
                       idempotency_key: str | None = None, **sampling: Any) -> pb.CompleteResponse:
        return await self._unary(self._stub.Complete,
                                 _request(messages, strategy, max_tokens, temperature, head, sampling), timeout_s,
                                 _once(_metadata(self.options, traceparent, tracestate), idempotency_key))

    async def stream(self, messages: Messages, strategy: str = "", max_tokens: int = 0,
                     temperature: float | None = None, head: str = "", timeout_s: float | None = None, *,
                     traceparent: str | None = None, tracestate: str | None = None,
                     **sampling: Any) -> AsyncIterator[str]:
        request = _request(messages, strategy, max_tokens, temperature, head, sampling)
        metadata = _metadata(self.options, traceparent, tracestate)

        async def pieces(timeout: float) -> AsyncIterator[str]:
            call = self._stub.CompleteStream(request, timeout=timeout, metadata=metadata)
            try:
                async for event in call:
                    piece = self._piece(event)
                    if piece is not None:
                        yield piece
            finally:
                call.cancel()  # a caller that stopped reading ends the call now, not at its deadline
        self.last_summary = None
        async with aclosing(self._retrying(pieces, timeout_s)) as streamed:
            async for piece in streamed:
                yield piece

    async def _unary(self, method: Callable[..., Awaitable[T]], request, timeout_s: float | None, metadata) -> T:
        async def once(timeout: float) -> AsyncIterator[T]:
            yield await method(request, timeout=timeout, metadata=metadata)
        [response] = [r async for r in self._retrying(once, timeout_s)]
        return response

    async def _retrying(self, call: Callable[[float], AsyncIterable[T]], timeout_s: float | None) -> AsyncIterator[T]:
        """What `call(timeout)` yields; called again after UNAVAILABLE, with backoff, while it has yielded nothing."""
        deadline = self._deadline(timeout_s)
        for attempt in range(self.options.retries + 1):
            yielded = False
            try:
                async with aclosing(call(_left(deadline))) as items:  # closed with this one, so with the caller
                    async for item in items:
                        yielded = True
                        yield item
                return
            except grpc.aio.AioRpcError as err:
                wait = _backoff(err, attempt, self.options, deadline, streamed=yielded)
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncRouterClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
