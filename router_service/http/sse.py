"""OpenAI's response shapes: a chat.completion, and the chat.completion.chunk events of a stream as server-sent
events (`data: {...}` lines, ending `data: [DONE]`)."""
from __future__ import annotations

import secrets
import time

from tierwise.v1 import router_pb2 as pb

from .errors import as_json

DONE = b"data: [DONE]\n\n"


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(summary: pb.CompleteResponse) -> dict:
    u = summary.usage
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens}}


def extension(summary: pb.CompleteResponse) -> dict:
    """Tierwise's own account of the answer, beside OpenAI's fields (the SDK keeps unknown fields)."""
    return {"tier": summary.tier, "strategy": summary.strategy, "provider": summary.provider,
            "cost_usd": summary.cost_usd, "estimated_cost_usd": summary.decision.estimated_cost_usd,
            "degraded": summary.degraded, "escalations": summary.escalations, "decided_tier": summary.decision.tier,
            "cache_hit": summary.cache_hit}


def completion(cid: str, summary: pb.CompleteResponse) -> dict:
    message = {"role": "assistant", "content": summary.content, "refusal": None}
    if summary.tool_calls:
        message |= {"content": summary.content or None, "tool_calls": tool_calls(summary)}
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": summary.model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs(summary),
                         "finish_reason": summary.finish_reason or "stop"}],
            "usage": usage(summary), "tierwise": extension(summary)}


def tool_calls(summary: pb.CompleteResponse) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in summary.tool_calls]


def logprobs(summary: pb.CompleteResponse) -> dict | None:
    """OpenAI's choice.logprobs for the answer's tokens; None when there are none (not asked, or not given)."""
    return {"content": tokens(summary), "refusal": None} if summary.logprobs else None


def tokens(summary: pb.CompleteResponse) -> list[dict]:
    """The answer's tokens in OpenAI's logprob shape ([] when none were asked for or given)."""
    return [{**_token(t), "top_logprobs": [_token(a) for a in t.top_logprobs]} for t in summary.logprobs]


def _token(t: pb.TokenLogprob) -> dict:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}


class Chunks:
    """The chunks of one streamed answer, as SSE bytes."""

    def __init__(self, cid: str, model: str, include_usage: bool):
        self.cid, self.model, self.include_usage = cid, model, include_usage
        self.created = int(time.time())

    def delta(self, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None, **extra) -> bytes:
        return self._event({"choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish_reason}], **extra})

    def opening(self) -> bytes:
        return self.delta({"role": "assistant", "content": ""})

    def text(self, text: str) -> bytes:
        return self.delta({"content": text})

    def end(self, summary: pb.CompleteResponse) -> bytes:
        """The answer's tool calls, whole, in one chunk, and its tokens' log probabilities in one; the last chunk
        (finish_reason, the model that answered, Tierwise's account); the usage chunk when asked for; then [DONE]."""
        self.model = summary.model
        calls = [{"index": i, **call} for i, call in enumerate(tool_calls(summary))]
        out = self.delta({"tool_calls": calls}) if calls else b""
        out += self.delta({}, logprobs=logprobs(summary)) if summary.logprobs else b""
        out += self.delta({}, summary.finish_reason or "stop", tierwise=extension(summary))
        if self.include_usage:
            out += self._event({"choices": [], "usage": usage(summary)})
        return out + DONE

    def failure(self, body: dict) -> bytes:
        """An error after the stream began (the status line is gone): OpenAI's SDKs raise it as an APIError."""
        return _data(body)

    def _event(self, body: dict) -> bytes:
        full = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                **body}
        if self.include_usage and "usage" not in full:
            full["usage"] = None
        return _data(full)


def _data(body: dict) -> bytes:
    return b"data: " + as_json(body) + b"\n\n"
