"""`make fuzz`: bad requests at both services, over real sockets, and what became of them.

Starts the provider test double, a classifier and a router wired to both on 127.0.0.1 (as the router bench
does), sends `--requests` generated bad requests spread over every method of both services (random bytes,
mutated and truncated messages, invalid UTF-8 in string fields, blank and oversized texts, conversations over
the limits, bad roles, options out of range, unknown names of any length), `--concurrency` at a time, then
prints the status counts per method, whether both servers are alive and still answer, and their memory.
Exit status 1 when any call ended UNKNOWN, INTERNAL or CANCELLED (an unhandled error, or a call dropped
without a status), or when a server died or stopped answering; 0 otherwise.

    .venv/bin/python -m bench.fuzz [--requests 10000] [--concurrency 64] [--seed 21] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import grpc

from tierwise.v1 import classifier_pb2 as cpb
from tierwise.v1 import router_pb2 as pb

from .router_bench import services
from .stats import memory_mb

ROUTER, CLASSIFIER = "/tierwise.v1.RouterService/", "/tierwise.v1.ClassifierService/"
METHODS = [ROUTER + "Route", ROUTER + "Complete", ROUTER + "CompleteStream",
           CLASSIFIER + "Classify", CLASSIFIER + "ClassifyBatch", CLASSIFIER + "ListHeads"]
FAILURES = {"UNKNOWN", "INTERNAL", "CANCELLED"}
BLANKS = ["", " ", "\x00", "\x00" * 64, "\u200b", "\u200b\u200c\u200d\ufeff", "\t\n\u2060\x7f", "\u3164\ufe0f"]
TIMEOUT_S = 30.0


class Generator:
    """Bad requests, as the bytes on the wire, for each method; deterministic for a seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def text(self) -> str:
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            return r.choice(BLANKS)
        if kind == 1:
            return "".join(chr(r.choice([r.randrange(0x20), r.randrange(0x80, 0xD800), r.randrange(0xE000, 0x110000)]))
                           for _ in range(r.randrange(1, 40)))
        if kind == 2:
            return r.choice(["x", "\x00", "🙂", "\u200b"]) * (r.choice([1000, 40_000]) if r.random() < 0.9 else 300_000)
        return r.choice(["hi", "What is 2 + 2?", "Prove that sqrt(2) is irrational.", "a\u0301" * 5])

    def name(self) -> str:
        return self.rng.choice(["", "heuristic", "cheapest", "telepathy", "default", "\x00", "n" * 100_000,
                                "heuristic+cascade", "\u200b", "no-such-head"])

    def sampling(self) -> dict:
        """The generation options, mostly unset, else out of range, malformed or huge."""
        r = self.rng
        if r.random() < 0.5:
            return {}
        number = lambda: r.choice([None, -3.0, 2.5, float("nan"), float("-inf"), 0.5])  # noqa: E731
        return {"top_p": number(), "presence_penalty": number(), "frequency_penalty": number(),
                "seed": r.choice([None, -(2**63), 2**63 - 1, 7]),
                "stop": r.choice([[], [""], ["END"] * 5, [self.text()], ["x" * 5000]]),
                "response_format": r.choice(["", "{", "[]", '{"type": "xml"}', '{"type": "json_schema"}',
                                             '{"type": "json_object"}', "[" * 100_000, self.text()]),
                "logprobs": r.choice([None, True, False]), "top_logprobs": r.choice([0, 5, 21, -1, 2**31 - 1]),
                **self.tools()}

    def tools(self) -> dict:
        """Tools offered, mostly none; else malformed, misnamed, too many, huge, and choices naming none of them."""
        r = self.rng
        if r.random() < 0.6:
            return {}
        def tool(name: str) -> dict:
            return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        tools = r.choice(["", "{", "[]", '[{"type": "code"}]', "[" * 100_000, self.text(),
                          json.dumps([tool("f"), tool("f")]), json.dumps([tool("bad name")]),
                          json.dumps([tool(f"f{i}") for i in range(r.choice([1, 200]))]),
                          json.dumps([tool("f" * 64 + "x")]), json.dumps([tool("f")] + [tool("g" * 60)] * 2000)])
        choice = r.choice(["", "auto", "none", "required", "any", '{"type": "function", "function": {"name": "zz"}}',
                           '{"type": "function"}', "{" * 50_000, self.text()])
        return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": r.choice([None, True, False])}

    def tool_fields(self) -> dict:
        """A message's tool calls and call id: mostly none; else empty ids and names, huge arguments."""
        r = self.rng
        if r.random() < 0.85:
            return {}
        huge = r.random() < 0.1  # one call's arguments past the message limit; else many small calls at most
        calls = [pb.ToolCall(id=r.choice(["", "c1", "i" * 1000]), name=r.choice(["", "f", self.text()[:100]]),
                             arguments="x" * 300_000 if huge else r.choice(["", "{}", self.text()[:100]]))
                 for _ in range(1 if huge else r.choice([0, 1, 3, 50]))]
        return {"tool_calls": calls, "tool_call_id": r.choice(["", "c1", self.text()])}

    def images(self) -> list:
        """Mostly none; else URLs of every kind (bad schemes, huge data URLs) and details, up to many."""
        r = self.rng
        if r.random() < 0.8:
            return []
        urls = ["https://example.com/a.png", "ftp://x", "", "data:image/png;base64," + "A" * r.choice([4, 300_000]),
                "javascript:alert(1)", self.text()]
        return [pb.Image(url=r.choice(urls), detail=r.choice(["", "low", "high", "ultra", "\x00"]))
                for _ in range(r.choice([1, 2, 20]))]

    def message(self, method: str):
        r = self.rng
        if method.endswith("/Route"):
            return pb.RouteRequest(query=self.text(), strategy=self.name(), head=self.name())
        if method.endswith("Complete") or method.endswith("CompleteStream"):
            roles = ["user", "system", "assistant", "tool", "", "wizard", "USER", "r" * 10_000]
            count = r.choice([0, 1, 2, 5, 300]) if r.random() < 0.9 else 1
            messages = [pb.Message(role=r.choice(roles), content=self.text() if r.random() < 0.7 else "hi",
                                   images=self.images(), **self.tool_fields()) for _ in range(count)]
            if r.random() < 0.05:  # a whole conversation over the limits: one huge system message before "hi"
                messages = [pb.Message(role="system", content="s" * 3_500_000), pb.Message(role="user", content="hi")]
            temperature = r.choice([None, -1.0, 2.5, float("nan"), float("inf"), 0.5])
            return pb.CompleteRequest(messages=messages, strategy=r.choice(["", "cheapest", self.name()]),
                                      max_tokens=r.choice([0, -1, -(2**31), 16]), temperature=temperature,
                                      head=self.name() if r.random() < 0.2 else "", **self.sampling())
        if method.endswith("/Classify"):
            return cpb.ClassifyRequest(text=self.text(), head=self.name() if r.random() < 0.3 else "",
                                       tradeoff=r.choice([None, -1.0, float("nan"), float("inf"), 0.1]))
        if method.endswith("ClassifyBatch"):
            texts = [self.text() for _ in range(r.choice([0, 1, 3, 8]))]
            if r.random() < 0.05:
                texts = ["hi"] * 300
            return cpb.ClassifyBatchRequest(texts=texts, head=self.name() if r.random() < 0.3 else "",
                                            tradeoff=r.choice([None, -1.0, float("nan")]))
        return cpb.ListHeadsRequest()

    def payload(self, method: str) -> bytes:
        """Bytes that a well-formed client would not send, or a well-formed message with bad values."""
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:
            return r.randbytes(r.randrange(1, 64))
        wire = self.message(method).SerializeToString()
        if kind == 1 and wire:  # mutated: a few bytes changed
            data = bytearray(wire)
            for _ in range(r.randrange(1, 4)):
                data[r.randrange(len(data))] = r.randrange(256)
            return bytes(data)
        if kind == 2 and len(wire) > 1:  # cut short
            return wire[: r.randrange(1, len(wire))]
        if kind == 3:  # a string field that is not UTF-8
            return _invalid_utf8(method, r)
        return wire


def _invalid_utf8(method: str, r: random.Random) -> bytes:
    bad = r.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xfe"])
    if method.startswith(CLASSIFIER):
        number = 1  # text / texts[0] / (ListHeads: an unknown field)
    else:
        number = r.choice([1, 2, 3])  # query/strategy/head, or messages
    if method.startswith(ROUTER) and "Complete" in method and number == 1:
        inner = bytes([0x12, len(bad)]) + bad  # messages[0].content
        return bytes([0x0A, len(inner)]) + inner
    return bytes([number << 3 | 2, len(bad)]) + bad


async def fuzz(addresses: dict[str, str], requests: int, concurrency: int, seed: int) -> dict:
    gen = Generator(seed)
    plan = [(METHODS[i % len(METHODS)], gen.payload(METHODS[i % len(METHODS)])) for i in range(requests)]
    counts: dict[str, collections.Counter] = {m: collections.Counter() for m in METHODS}
    examples: dict[str, str] = {}
    channels = {s: grpc.aio.insecure_channel(a) for s, a in addresses.items()}
    gate = asyncio.Semaphore(concurrency)

    async def one(method: str, payload: bytes) -> None:
        channel = channels[ROUTER if method.startswith(ROUTER) else CLASSIFIER]
        streaming = method.endswith("CompleteStream")
        make = channel.unary_stream if streaming else channel.unary_unary
        rpc = make(method, request_serializer=None, response_deserializer=None)
        async with gate:
            try:
                call = rpc(payload, timeout=TIMEOUT_S)
                if streaming:
                    async for _ in call:
                        pass
                else:
                    await call
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
                if code not in examples:
                    examples[code] = f"{method} {payload[:80]!r}: {err.details()}"
        counts[method][code] += 1

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(m, p) for m, p in plan))
    finally:
        for channel in channels.values():
            await channel.close()
    return {"requests": requests, "seconds": round(time.monotonic() - started, 1),
            "by_method": {m: dict(c.most_common()) for m, c in counts.items()},
            "total": dict(sum(counts.values(), collections.Counter()).most_common()), "examples": examples}


async def still_answers(addresses: dict[str, str]) -> dict[str, bool]:
    """Whether each server answers a good request after the fuzz."""
    out = {}
    for service, method, request in [
        (ROUTER, "Route", pb.RouteRequest(query="What is 2 + 2?", strategy="heuristic")),
        (CLASSIFIER, "Classify", cpb.ClassifyRequest(text="What is 2 + 2?")),
    ]:
        async with grpc.aio.insecure_channel(addresses[service]) as channel:
            rpc = channel.unary_unary(service + method, request_serializer=None, response_deserializer=None)
            try:
                await rpc(request.SerializeToString(), timeout=10)
                out[service.strip("/")] = True
            except grpc.aio.AioRpcError:
                out[service.strip("/")] = False
    return out


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as workdir, services(Path(workdir)) as svc:
        addresses = {ROUTER: svc.router.address, CLASSIFIER: svc.classifier.address}
        summary = asyncio.run(fuzz(addresses, args.requests, args.concurrency, args.seed))
        answers = asyncio.run(still_answers(addresses))
        procs = {"router": svc.router.proc, "classifier": svc.classifier.proc}
        summary["servers"] = {name: {"alive": proc.poll() is None, "answers": answers[f"tierwise.v1.{kind}"],
                                     **(memory_mb(proc.pid) if proc.poll() is None else {})}
                              for (name, proc), kind in zip(procs.items(), ["RouterService", "ClassifierService"])}
    failures = sum(n for code, n in summary["total"].items() if code in FAILURES)
    healthy = all(s["alive"] and s["answers"] for s in summary["servers"].values())
    summary["passed"] = failures == 0 and healthy
    for method, counts in summary["by_method"].items():
        print(f"{method:42} " + ", ".join(f"{code} {n}" for code, n in counts.items()))
    print(f"{'all':42} " + ", ".join(f"{code} {n}" for code, n in summary["total"].items())
          + f"  ({summary['requests']} requests in {summary['seconds']} s)")
    for name, s in summary["servers"].items():
        print(f"{name}: alive={s['alive']} answers={s['answers']} "
              f"rss={s.get('vmrss_mb', 0):.0f} MB peak={s.get('vmhwm_mb', 0):.0f} MB")
    for code, example in summary["examples"].items():
        print(f"first {code}: {example[:300]}")
    print("fuzz: " + ("passed" if summary["passed"] else "FAILED"))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
