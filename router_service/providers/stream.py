"""An open SDK stream, read one text delta at a time; the tool calls it sends in pieces are put together."""
from __future__ import annotations

import asyncio

from openai import AsyncStream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob

from .errors import IncompleteStream, shaped
from .types import ToolCall, valid_text


class LiveStream:
    """An open SDK stream and what has been read from it."""

    def __init__(self, sdk_stream: AsyncStream[ChatCompletionChunk]) -> None:
        self._sdk_stream = sdk_stream
        self._chunks = sdk_stream.__aiter__()
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: CompletionUsage | None = None
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        self._logprobs: list[ChatCompletionTokenLogprob] = []

    async def next_delta(self, timeout: float) -> str | None:
        """The next non-empty text delta, or None once the stream has properly ended."""
        while True:
            try:
                async with asyncio.timeout(timeout):
                    chunk = await anext(self._chunks)
            except StopAsyncIteration:
                if self._finish_reason is None:
                    raise IncompleteStream("stream ended without a finish_reason") from None
                return None
            with shaped("a stream chunk"):
                if (text := self._read(chunk)) is not None:
                    return text

    def _read(self, chunk: ChatCompletionChunk) -> str | None:
        """What `chunk` adds; its text, if it holds any."""
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices[:1]:
            self._finish_reason = choice.finish_reason or self._finish_reason
            if choice.logprobs is not None:
                self._logprobs += choice.logprobs.content or ()
            for piece in choice.delta.tool_calls or ():
                call = self._calls.setdefault(piece.index, ["", "", ""])
                function = piece.function
                call[0] = piece.id or call[0]
                call[1] = (function and function.name) or call[1]
                call[2] += (function and function.arguments) or ""
            if text := choice.delta.content:
                if not isinstance(text, str):
                    raise TypeError("content")
                text = valid_text(text)  # a surrogate pair split across two deltas ends as two U+FFFD
                self._parts.append(text)
                return text
        return None

    async def aclose(self) -> None:
        await self._sdk_stream.close()

    @property
    def content(self) -> str:
        return "".join(self._parts)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(*map(valid_text, self._calls[index])) for index in sorted(self._calls))

    @property
    def logprobs(self) -> list[ChatCompletionTokenLogprob]:
        return self._logprobs

    @property
    def usage(self) -> CompletionUsage | None:
        return self._usage

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason
