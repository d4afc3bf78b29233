"""An OpenAI-compatible HTTP TEST DOUBLE for the provider layer: real HTTP on 127.0.0.1, scripted faults.

It serves POST /v1/chat/completions (JSON, or SSE with `stream: true`) and GET /v1/models from a
background ThreadingHTTPServer on an ephemeral port. Answers are deterministic and name the model that
produced them ("answer from <model>: <n> words"), so a test can tell which provider answered.

Faults are scripted per model: `script(model, *faults)` queues faults consumed one per request (FIFO);
`set_persistent(model, fault)` applies one to every request once the queue is empty. `set_reply(model,
text)` replaces a model's answer (e.g. a judge's verdict); `set_alternatives(model, {token: logprob}, when=text)`
scripts the log probabilities sent with `logprobs: true` (for requests whose last message holds `text`; every
other token is certain); `reset()` forgets all of that. An answer longer
than the request's `max_tokens` (or `max_completion_tokens`) is cut there with finish_reason "length", as real
providers do. Every request is
recorded (model, stream flag, headers, body, fault applied) so tests can assert none was lost or repeated.
Offered tools, it calls them as double_tools.py says.
Every wait inside the double is bounded and released at once when the double shuts down.
"""
from __future__ import annotations

import json
import re
import socket
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

from .double_tools import call_chunks, calls_for

HOST = "127.0.0.1"
MAX_WAIT_S = 5.0


class FaultKind(Enum):
    DELAY = "delay"                  # answer normally after delay_s
    HTTP_ERROR = "http_error"        # status with an OpenAI-style error body
    HANG = "hang"                    # send nothing for delay_s (longer than the client's timeout)
    DROP_CONNECTION = "drop_connection"  # close the socket without answering
    DISCONNECT_MID_STREAM = "disconnect_mid_stream"  # stream after_chunks text chunks, then close
    STALL_MID_STREAM = "stall_mid_stream"  # stream after_chunks text chunks, send nothing for delay_s, then the rest
    ODD_BODY = "odd_body"            # 200 with `body` as it is, of `content_type` (an HTML page, a null message, ...)


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    delay_s: float = 0.0
    status: int = 0
    retry_after: str | None = None
    after_chunks: int = 0
    message: str = ""  # an HTTP error's own message (default: "injected HTTP <status>")
    body: str = ""
    content_type: str = ""

    @classmethod
    def delay(cls, delay_s: float) -> Fault:
        return cls(FaultKind.DELAY, delay_s=delay_s)

    @classmethod
    def http_error(cls, status: int = 500, retry_after: float | str | None = None, message: str = "") -> Fault:
        return cls(FaultKind.HTTP_ERROR, status=status, retry_after=None if retry_after is None else str(retry_after),
                   message=message)

    @classmethod
    def rate_limited(cls, retry_after: float | str | None = None) -> Fault:
        return cls.http_error(429, retry_after)

    @classmethod
    def hang(cls, delay_s: float = MAX_WAIT_S) -> Fault:
        return cls(FaultKind.HANG, delay_s=delay_s)

    @classmethod
    def malformed_json(cls) -> Fault:
        return cls.odd_body('{"id": "chatcmpl-broken", "choices": [')

    @classmethod
    def odd_body(cls, body: str, content_type: str = "application/json") -> Fault:
        """A 200 whose body the API does not promise; for a stream, `body` is the events' text."""
        return cls(FaultKind.ODD_BODY, body=body, content_type=content_type)

    @classmethod
    def drop_connection(cls) -> Fault:
        return cls(FaultKind.DROP_CONNECTION)

    @classmethod
    def disconnect_mid_stream(cls, after_chunks: int) -> Fault:
        return cls(FaultKind.DISCONNECT_MID_STREAM, after_chunks=after_chunks)

    @classmethod
    def stall_mid_stream(cls, after_chunks: int, delay_s: float = MAX_WAIT_S) -> Fault:
        return cls(FaultKind.STALL_MID_STREAM, after_chunks=after_chunks, delay_s=delay_s)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any] | None
    fault: Fault | None

    @property
    def model(self) -> str | None:
        return (self.body or {}).get("model")

    @property
    def stream(self) -> bool:
        return bool((self.body or {}).get("stream"))

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def answer_for(model: str, messages: list[dict[str, Any]]) -> str:
    """The double's deterministic answer: which model answered, and how many words the last message had."""
    last = str(messages[-1].get("content", "")) if messages else ""
    return f"answer from {model}: {len(last.split())} words"


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def unused_port() -> int:
    """A loopback port nothing listens on (bound then released), for connection-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def refused_base_url() -> str:
    return f"http://{HOST}:{unused_port()}/v1"


@dataclass
class _Script:
    queued: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    persistent: dict[str, Fault] = field(default_factory=dict)
    replies: dict[str, str] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    alternatives: dict[str, list[tuple[str, dict[str, float]]]] = field(default_factory=lambda: defaultdict(list))

    def next_fault(self, model: str) -> Fault | None:
        queue = self.queued.get(model)
        if queue:
            return queue.popleft()
        return self.persistent.get(model)


class ProviderDouble:
    """The TEST DOUBLE server. `with ProviderDouble() as double: ... double.base_url ...`."""

    def __init__(self, models: Iterable[str] = ()) -> None:
        self.models = tuple(models)
        self._lock = threading.Lock()
        self._script = _Script()
        self._requests: list[RecordedRequest] = []
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="provider-double", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._server.server_port}/v1"

    def script(self, model: str, *faults: Fault) -> None:
        with self._lock:
            self._script.queued[model].extend(faults)

    def set_persistent(self, model: str, fault: Fault | None) -> None:
        with self._lock:
            if fault is None:
                self._script.persistent.pop(model, None)
            else:
                self._script.persistent[model] = fault

    def set_reply(self, model: str, content: str | None) -> None:
        """Answer `model`'s requests with `content` (None: the default answer_for text)."""
        with self._lock:
            if content is None:
                self._script.replies.pop(model, None)
            else:
                self._script.replies[model] = content

    def set_cached_tokens(self, model: str, tokens: int) -> None:
        """Report up to `tokens` of each of `model`'s prompts as read from its prompt cache, as OpenAI's usage does
        (prompt_tokens_details.cached_tokens)."""
        with self._lock:
            self._script.cached[model] = tokens

    def cached_tokens(self, model: str) -> int:
        with self._lock:
            return self._script.cached.get(model, 0)

    def set_alternatives(self, model: str, logprobs: dict[str, float], when: str = "") -> None:
        """With `logprobs: true`, a generated token found in `logprobs` gets these alternatives, likeliest
        first, and its own log probability from them; e.g. {" true": -0.2, " false": -1.7}. With `when`, only
        in replies to requests whose last message contains it; the first rule set that matches applies."""
        with self._lock:
            self._script.alternatives[model].append((when, dict(logprobs)))

    def reset(self) -> None:
        """Forget scripted faults, replies and recorded requests (for a double shared across tests)."""
        with self._lock:
            self._script = _Script()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    def start(self) -> ProviderDouble:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never ran
            self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            _hard_close(conn)
        self._server.server_close()
        self._thread.join(MAX_WAIT_S)

    def __enter__(self) -> ProviderDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the handler threads --

    def _record(self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None) -> Fault | None:
        with self._lock:
            fault = self._script.next_fault(body.get("model", "")) if body else None
            self._requests.append(RecordedRequest(method, path, headers, body, fault))
            return fault

    def _answer(self, model: str, messages: list[dict[str, Any]]) -> str:
        with self._lock:
            reply = self._script.replies.get(model)
        return reply if reply is not None else answer_for(model, messages)

    def _alternatives(self, model: str, messages: list[dict[str, Any]]) -> dict[str, float]:
        last = str(messages[-1].get("content", "")) if messages else ""
        with self._lock:
            rules = list(self._script.alternatives.get(model, ()))
        return next((logprobs for when, logprobs in rules if when in last), {})

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds` (never past MAX_WAIT_S); False if the double shut down meanwhile."""
        return not self._closing.wait(min(seconds, MAX_WAIT_S))

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            (self._connections.add if open_ else self._connections.discard)(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, double: ProviderDouble) -> None:
        self.double = double
        super().__init__((HOST, 0), _Handler)

    def process_request(self, request, client_address) -> None:
        self.double._track(request, True)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.double._track(request, False)
        super().shutdown_request(request)


def _hard_close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers: the SDK reuses pooled connections
    timeout = MAX_WAIT_S  # idle keep-alive connections end on their own
    # Headers and body go out in separate writes: with Nagle on, delayed ACKs add ~40 ms to every call.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    @property
    def double(self) -> ProviderDouble:
        return self.server.double

    def do_GET(self) -> None:
        self.double._record("GET", self.path, self._headers(), None)
        if self.path.rstrip("/") != "/v1/models":
            return self._send_error(404, f"no route GET {self.path}", "not_found")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "provider-double"} for m in self.double.models]
        self._send_json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        body = self._read_json()
        fault = self.double._record("POST", self.path, self._headers(), body)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send_error(404, f"no route POST {self.path}", "not_found")
        if body is None or not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return self._send_error(400, "body must be JSON with a string 'model' and a list 'messages'",
                                    "invalid_request_error")
        if self.double.models and body["model"] not in self.double.models:
            return self._send_error(404, f"model {body['model']!r} not found", "model_not_found")
        if fault is not None and not self._apply_fault_before_answer(fault):
            return
        calls = calls_for(body)
        if calls:
            return self._send_calls(body, calls)
        answer, finish_reason = _within_max_tokens(self.double._answer(body["model"], body["messages"]), body)
        if body.get("stream"):
            self._send_stream(body, answer, fault, finish_reason)
        else:
            alternatives = self.double._alternatives(body["model"], body["messages"]) if body.get("logprobs") else None
            self._send_json(200, _completion(body, answer, finish_reason, alternatives,
                                             self.double.cached_tokens(body["model"])))

    def _apply_fault_before_answer(self, fault: Fault) -> bool:
        """Play the fault; True if a normal answer should follow."""
        if fault.kind is FaultKind.DELAY:
            return self.double._wait(fault.delay_s)
        if fault.kind is FaultKind.HANG:
            self.double._wait(fault.delay_s)
            self._drop()
        elif fault.kind is FaultKind.HTTP_ERROR:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._send_error(fault.status, fault.message or f"injected HTTP {fault.status}", "injected_fault", headers)
        elif fault.kind is FaultKind.ODD_BODY:
            self._send_raw(200, fault.body.encode(), fault.content_type)
        elif fault.kind is FaultKind.DROP_CONNECTION:
            self._drop()
        return fault.kind in (FaultKind.DISCONNECT_MID_STREAM, FaultKind.STALL_MID_STREAM)

    def _send_stream(self, body: dict[str, Any], answer: str, fault: Fault | None, finish_reason: str) -> None:
        self._start_events()
        disconnect_after = fault.after_chunks if fault and fault.kind is FaultKind.DISCONNECT_MID_STREAM else None
        stall_after = fault.after_chunks if fault and fault.kind is FaultKind.STALL_MID_STREAM else None
        model = body["model"]
        alternatives = self.double._alternatives(model, body["messages"]) if body.get("logprobs") else None
        self._send_event(_chunk(model, {"role": "assistant", "content": ""}))
        for sent, piece in enumerate(_pieces(answer)):
            if sent == disconnect_after:
                return self._drop()
            if sent == stall_after and not self.double._wait(fault.delay_s):
                return self._drop()
            chunk = _chunk(model, {"content": piece})
            if alternatives is not None:  # each chunk's own tokens, as OpenAI streams them
                chunk["choices"][0]["logprobs"] = _logprobs(piece, alternatives, body)
            self._send_event(chunk)
        self._send_event(_chunk(model, {}, finish_reason=finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            self._send_event({**_chunk(model, {}), "choices": [],
                              "usage": _usage(body, answer, self.double.cached_tokens(model))})
        self._end_events()

    def _send_calls(self, body: dict[str, Any], calls: list[dict[str, Any]]) -> None:
        """Tool calls in place of an answer (double_tools.py), whole or streamed."""
        model = body["model"]
        if not body.get("stream"):
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            return self._send_json(200, {"id": "chatcmpl-double", "object": "chat.completion", "created": 0,
                                         "model": model,
                                         "usage": _usage(body, json.dumps(calls), self.double.cached_tokens(model)),
                                         "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}]})
        self._start_events()
        for delta in [{"role": "assistant", "content": None}, *call_chunks(calls)]:
            self._send_event(_chunk(model, delta))
        self._send_event(_chunk(model, {}, finish_reason="tool_calls"))
        self._end_events()

    def _start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _end_events(self) -> None:
        self._send_chunk(b"data: [DONE]\n\n")
        self._send_chunk(b"")

    def _send_event(self, payload: dict[str, Any]) -> None:
        self._send_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_error(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": code, "code": code}}, headers)

    def _send_raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        _hard_close(self.connection)

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _read_json(self) -> dict[str, Any] | None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


def _pieces(answer: str) -> list[str]:
    """The answer split into word-sized stream chunks whose concatenation is the answer."""
    words = answer.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _usage(body: dict[str, Any], answer: str, cached: int = 0) -> dict[str, Any]:
    prompt = estimate_tokens("".join(str(m.get("content", "")) for m in body["messages"]))
    completion = estimate_tokens(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(cached, prompt)}}


def _within_max_tokens(answer: str, body: dict[str, Any]) -> tuple[str, str]:
    """(the answer, "stop"), or, like a real provider, the answer cut at the request's max_tokens (or
    max_completion_tokens, as OpenAI's newer field) and "length"."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and limit > 0 and estimate_tokens(answer) > limit:
        return answer[:limit * 4], "length"
    return answer, "stop"


def _completion(body: dict[str, Any], answer: str, finish_reason: str = "stop",
                alternatives: dict[str, float] | None = None, cached: int = 0) -> dict[str, Any]:
    choice = {"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": answer}}
    if alternatives is not None:
        choice["logprobs"] = _logprobs(answer, alternatives, body)
    return {"id": "chatcmpl-double", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [choice], "usage": _usage(body, answer, cached)}


def _logprobs(text: str, alternatives: dict[str, float], body: dict[str, Any]) -> dict[str, Any]:
    return {"content": [_token(t, alternatives, int(body.get("top_logprobs") or 0)) for t in _TOKEN.findall(text)]}


_TOKEN = re.compile(r"\s*\w+|\s*[^\w\s]+|\s+")  # word-like pieces, a leading space kept, as BPE vocabularies do


def _token(text: str, alternatives: dict[str, float], top: int) -> dict[str, Any]:
    """One generated token in the OpenAI logprobs shape: certain, unless the script gives it alternatives."""
    ranked = sorted(alternatives.items(), key=lambda kv: -kv[1]) if text in alternatives else [(text, 0.0)]
    entry = lambda token, logprob: {"token": token, "logprob": logprob, "bytes": list(token.encode())}  # noqa: E731
    return {**entry(text, dict(ranked)[text]), "top_logprobs": [entry(t, lp) for t, lp in ranked[:top]]}


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
