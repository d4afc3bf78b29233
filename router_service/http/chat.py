"""POST /v1/chat/completions: OpenAI's chat completions API, as one chat.completion or a stream of chunks."""
from __future__ import annotations

from tierwise.v1 import router_pb2 as pb

from ..model_names import ModelNames
from . import sse
from .errors import OpenAIShapes
from .request import ChatRequest, parse

ROUTE = "/v1/chat/completions"


class ChatApi(OpenAIShapes):
    route = ROUTE
    method = "ChatCompletions"

    def parse(self, body: bytes, names: ModelNames) -> ChatRequest:
        return parse(body, names)

    def whole(self, chat: ChatRequest, summary: pb.CompleteResponse) -> dict:
        return sse.completion(sse.completion_id(), summary)

    def events(self, chat: ChatRequest, route: pb.RouteResponse) -> sse.Chunks:
        return sse.Chunks(sse.completion_id(), route.model, chat.include_usage)
