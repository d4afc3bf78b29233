"""A request's conversation as the providers take it, each message and the whole checked against the limits."""
from __future__ import annotations

import grpc

from tierwise.serving import Rejected, check_size, check_text, shown
from tierwise.v1 import router_pb2 as pb

from .config import LimitsConfig
from .images import check_image
from .tool_calls import tool_fields

ROLES = ("system", "user", "assistant", "tool")


def asked(messages) -> int | None:
    """The index of the message the tier is decided on: the last user message, or without one (as OpenAI takes a
    conversation of instructions alone) the last system message; None when there is neither."""
    for role in ("user", "system"):
        if found := [i for i, m in enumerate(messages) if m["role"] == role]:
            return found[-1]
    return None


def query_of(messages) -> str:
    """The text of the `asked` message: what the decision, the gates and the labels read; "" without one."""
    return "" if (i := asked(messages)) is None else messages[i].get("content", "")


def checked_messages(request: pb.CompleteRequest, limits: LimitsConfig) -> tuple[list[dict[str, str]], str]:
    """The conversation as the providers take it, and the text of its `asked` message (the query): every message
    and the whole conversation within the limits, or INVALID_ARGUMENT naming the message or `messages`."""
    if not request.messages:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "messages: must hold at least one message")
    if len(request.messages) > limits.max_messages:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"messages: {len(request.messages)} messages exceed the limit of {limits.max_messages}")
    messages, total, images = [], 0, 0
    for i, m in enumerate(request.messages):
        role, content = m.role, m.content
        if role not in ROLES:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"messages[{i}].role: {shown(role)} is not one of {', '.join(ROLES)}")
        total += check_size(content, f"messages[{i}].content", limits.max_message_bytes)
        messages.append({"role": role, "content": content})
        total += tool_fields(m, messages[-1], f"messages[{i}]")
        if m.images:
            if role != "user":
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"messages[{i}].images: only user messages carry "
                                                                 "images")
            for j, image in enumerate(m.images):
                check_image(image.url, image.detail, f"messages[{i}].images[{j}]")
                total += len(image.url.encode())
            messages[-1]["images"] = [{"url": image.url, "detail": image.detail} for image in m.images]
            images += len(m.images)
    if images > limits.max_images:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"messages: {images} images exceed the limit of {limits.max_images}")
    if total > limits.max_total_bytes:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"messages: {total} bytes in all exceed the limit of {limits.max_total_bytes} bytes")
    if (query := asked(messages)) is None:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "messages: need a user message (or a system message)")
    check_text(messages[query]["content"], f"messages[{query}].content", limits.max_message_bytes)
    return messages, messages[query]["content"]
