"""Decision 0021: what serving adds to the encoder, and what running an idle call on the event loop saves and costs.

Four paths answer the same kind of query, one call at a time, in alternating blocks of 25 calls so that a shared,
noisy machine slows them alike: the service's encoder in this process (tokenise + one ONNX run), the classifier
service as shipped (every text handed to a worker thread), the same service with `--inline-max-tokens 64` (a lone
short text embedded on the event loop when the service looks idle), and a bare grpc.aio server that answers
Classify with an empty reply (what gRPC and asyncio cost with no work at all). Each service's CPU per call comes from /proc.

    .venv/bin/python -m research.d0021_serving_path [--blocks 20] [--kind short|mixed]

`--load` alternates 3-second bursts of 32 callers between the two services instead (unique queries): what the loop
path costs a busy service:

    .venv/bin/python -m research.d0021_serving_path --load [--rounds 5] [--kind short|mixed]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import grpc

from bench import grpc_load, queries
from bench.server import ClassifierServer
from bench.stats import cpu_seconds, percentile
from classifier_service.config import Config
from classifier_service.encoder import Encoder
from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 25
SERVICES = {"service (as shipped)": [], "service, --inline-max-tokens 64": ["--inline-max-tokens", "64"]}


class _Empty(pb_grpc.ClassifierServiceServicer):
    async def Classify(self, request, context):
        return pb.ClassifyResponse()


async def _echo_server() -> None:
    server = grpc.aio.server()
    pb_grpc.add_ClassifierServiceServicer_to_server(_Empty(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


class InProcess:
    def __init__(self):
        cfg = Config()
        self.encoder = Encoder(cfg.encoder_dir, cfg.precision, cfg.ort_threads)

    def __call__(self, text: str) -> None:
        self.encoder.embed_tokens(self.encoder.tokenize([text]))


def texts_for(kind: str, sets: queries.QuerySets, block: int, seed: int) -> list[str]:
    if kind == "short":
        return queries.short_questions(BLOCK, start=seed + block * BLOCK)
    pool = sets.mixed + sets.load_mixed
    return [f"{t} ({seed}.{block})" for t in pool[(block * BLOCK) % len(pool):][:BLOCK]]


def classify_calls(stack: ExitStack, targets: dict[str, str]) -> dict[str, Callable[[str], object]]:
    """One sync Classify call per target (name -> address), as `make bench` sends it, over a channel that is ready."""
    calls = {}
    for name, target in targets.items():
        channel = stack.enter_context(grpc.insecure_channel(target))
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ClassifierServiceStub(channel)
        calls[name] = lambda text, stub=stub: stub.Classify(pb.ClassifyRequest(text=text), timeout=30)
    return calls


def latency(blocks: int, kind: str) -> None:
    sets = queries.build(queries.FULL, Config().max_text_bytes)
    with ExitStack() as stack:
        calls, pids = {"encoder in-process": InProcess()}, {}
        echo = subprocess.Popen([sys.executable, "-m", "research.d0021_serving_path", "--echo-server"], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        stack.callback(lambda: (echo.kill(), echo.wait()))
        targets = {"bare grpc.aio, empty reply": f"127.0.0.1:{echo.stdout.readline().strip()}"}
        pids["bare grpc.aio, empty reply"] = echo.pid
        for name, args in SERVICES.items():
            server = stack.enter_context(ClassifierServer(ROOT, Path(f"/tmp/d0021-{len(targets)}.log"), args))
            targets[name], pids[name] = server.target, server.pid
        calls |= classify_calls(stack, targets)
        for call in calls.values():
            for text in sets.warmup:
                call(text)
        seed = int(time.time()) % 100_000 * 10_000
        ms: dict[str, list[float]] = {name: [] for name in calls}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for block in range(blocks):
            for i, (name, call) in enumerate(calls.items()):
                for text in texts_for(kind, sets, block * len(calls) + i, seed):
                    t0 = time.perf_counter()
                    call(text)
                    ms[name].append((time.perf_counter() - t0) * 1000)
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) * 1000 / len(ms[name]) for name, pid in pids.items()}
    own = percentile(ms["encoder in-process"], 50)
    print(f"{kind} queries, {blocks} blocks of {BLOCK} per path, alternating; ms")
    print(f"{'path':34s} {'min':>6s} {'p10':>6s} {'p50':>6s} {'p90':>6s} {'p50-enc':>8s} {'cpu/call':>9s}")
    for name, values in ms.items():
        p50 = percentile(values, 50)
        shown_cpu = f"{cpu[name]:9.2f}" if name in cpu else f"{'-':>9s}"
        print(f"{name:34s} {min(values):6.2f} {percentile(values, 10):6.2f} {p50:6.2f} {percentile(values, 90):6.2f} "
              f"{p50 - own:+8.2f} {shown_cpu}")


def load(rounds: int, kind: str, seconds: float = 3.0) -> None:
    sets = queries.build(queries.FULL, Config().max_text_bytes)
    qps: dict[str, list[float]] = {name: [] for name in SERVICES}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(ClassifierServer(ROOT, Path(f"/tmp/d0021-load-{i}.log"), args))
                   for i, (name, args) in enumerate(SERVICES.items())}
        seed = int(time.time()) % 1000 * 100_000
        for r in range(rounds):
            for i, (name, server) in enumerate(servers.items()):
                tag = f"{seed}.{r}.{i}"
                texts = (queries.short_questions(6000, start=seed + (r * 2 + i) * 6000) if kind == "short"
                         else [f"{t} ({tag})" for t in sets.load_mixed])
                qps[name].append(grpc_load.concurrent(server.target, texts, 32, seconds)["qps"])
    print(f"{kind} queries, 32 callers, {rounds} alternating bursts of {seconds:g} s each; unique q/s")
    for name, values in qps.items():
        print(f"{name:34s} median {statistics.median(values):6.0f}  all {[round(v) for v in values]}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m research.d0021_serving_path", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("short", "mixed"), default="short")
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--load", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        asyncio.run(_echo_server())
    elif args.load:
        load(args.rounds, args.kind)
    else:
        latency(args.blocks, args.kind)


if __name__ == "__main__":
    main()
