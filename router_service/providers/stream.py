"""An open SDK stream, read one text delta at a time."""
from __future__ import annotations

import asyncio

from openai import AsyncStream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk

from .errors import IncompleteStream


class LiveStream:
    """An open SDK stream and what has been read from it."""

    def __init__(self, sdk_stream: AsyncStream[ChatCompletionChunk]) -> None:
        self._sdk_stream = sdk_stream
        self._chunks = sdk_stream.__aiter__()
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: CompletionUsage | None = None

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
            if chunk.usage is not None:
                self._usage = chunk.usage
            for choice in chunk.choices[:1]:
                self._finish_reason = choice.finish_reason or self._finish_reason
                if choice.delta.content:
                    self._parts.append(choice.delta.content)
                    return choice.delta.content

    async def aclose(self) -> None:
        await self._sdk_stream.close()

    @property
    def content(self) -> str:
        return "".join(self._parts)

    @property
    def usage(self) -> CompletionUsage | None:
        return self._usage

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason
