"""Method handlers as both services register them: rewrapped by an interceptor, and guarded so that bytes no
request decodes from reach no handler."""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager, aclosing
from typing import Callable

import grpc

from .telemetry import CallCounts


_HANDLER_KINDS = {"unary_unary": grpc.unary_unary_rpc_method_handler,
                  "unary_stream": grpc.unary_stream_rpc_method_handler,
                  "stream_unary": grpc.stream_unary_rpc_method_handler,
                  "stream_stream": grpc.stream_stream_rpc_method_handler}


Around = Callable[[object, object], AbstractAsyncContextManager]  # (request, context): what runs around a call


def rewrapped(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """`handler` with each call run inside `around(request, context)`: what a server interceptor returns to run its
    code around a method."""
    for kind, make in _HANDLER_KINDS.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            return make(_inside(behavior, handler.response_streaming, around),
                        request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler


def _inside(behavior: Callable, streaming: bool, around: Around) -> Callable:
    """`behavior` run inside `around`. A stream is closed before `around` ends, not when it is collected: what the
    call did inside (paid, logged) is done by the time the code around it looks."""
    if not streaming:
        async def call(request, context):
            async with around(request, context):
                return await behavior(request, context)
        return call

    async def stream(request, context):
        async with around(request, context), aclosing(behavior(request, context)) as messages:
            async for message in messages:
                yield message
    return stream


def add_servicer(add_to_server: Callable, servicer, server: grpc.aio.Server, counts: CallCounts | None = None) -> None:
    """Register `servicer` as its generated `add_*Servicer_to_server` does, with every method's request
    deserializer made total: bytes that are no valid request (a corrupt message, a string that is not UTF-8)
    reach no handler, and the call ends INVALID_ARGUMENT naming the field where there is one (counted in
    `counts`, as the servicer counts the calls it takes)."""
    collected = _Collected()
    add_to_server(servicer, collected)
    handlers = {name: _guarded(handler, name, counts) for name, handler in collected.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(collected.service, handlers),))
    server.add_registered_method_handlers(collected.service, handlers)


class _Collected:
    """Stands in for the server while generated code registers its handlers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


class _Undecodable:
    """What a guarded deserializer gives for bytes it cannot decode: the INVALID_ARGUMENT message to answer."""

    def __init__(self, message: str):
        self.message = message


def _guarded(handler: grpc.RpcMethodHandler, method: str, counts: CallCounts | None) -> grpc.RpcMethodHandler:
    if handler.request_streaming:
        raise ValueError("request streams are not guarded: each of their messages would need the check")
    parse = handler.request_deserializer
    descriptor = parse.__self__.DESCRIPTOR  # a generated message class's FromString

    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception:  # DecodeError, and anything else that bytes from the wire can make a parser raise
            field = _bad_utf8(data, descriptor)
            return _Undecodable(f"{field}: not valid UTF-8" if field
                                else f"request: not a valid {descriptor.full_name} message")

    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    return handler._replace(request_deserializer=deserialize, **{kind: _inside(
        getattr(handler, kind), handler.response_streaming, lambda request, context: _Checked(request, context,
                                                                                             method, counts))})


class _Checked:
    """Around a guarded call: one whose bytes decoded to no request ends INVALID_ARGUMENT before its handler."""
    __slots__ = ("request", "context", "method", "counts")

    def __init__(self, request, context, method: str, counts: CallCounts | None):
        self.request, self.context, self.method, self.counts = request, context, method, counts

    async def __aenter__(self) -> None:
        if isinstance(self.request, _Undecodable):
            _refused(self.method, self.counts)
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.request.message)

    async def __aexit__(self, *exc) -> bool:
        return False


def _refused(method: str, counts: CallCounts | None) -> None:
    if counts is not None:
        counts.add(method, grpc.StatusCode.INVALID_ARGUMENT.name)


def _bad_utf8(data: bytes, descriptor, prefix: str = "", depth: int = 0) -> str | None:
    """The path (`messages[2].content`) of the first string field in `data`, a `descriptor` message on the wire,
    whose bytes are not UTF-8; None when there is none or the wire format itself is broken."""
    seen: dict[str, int] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            wire_type = key & 7
            if wire_type == 0:
                pos = _varint(data, pos)[1]
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            elif wire_type != 2:
                return None
            else:
                size, pos = _varint(data, pos)
                if pos + size > len(data):
                    return None
                value, pos = data[pos:pos + size], pos + size
                field = descriptor.fields_by_number.get(key >> 3)
                if field is None or field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
                    continue
                path = prefix + field.name
                if field.is_repeated:
                    seen[field.name] = seen.get(field.name, -1) + 1
                    path += f"[{seen[field.name]}]"
                if field.type == field.TYPE_STRING:
                    value.decode("utf-8")
                elif depth < 32 and (found := _bad_utf8(value, field.message_type, path + ".", depth + 1)):
                    return found
    except UnicodeDecodeError:
        return path
    except IndexError:
        pass
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80 or shift > 63:
            return value, pos
