"""Decision 0032: what a pause between calls costs, in-process and over gRPC, and whether encoding on the event loop
(`--inline-max-tokens`) helps a quiet deployment.

`--in-process`: the service's encoder in this process, runs alternating between no pause and a pause before each
step: a pure-Python loop first (is the CPU slow to wake?), then a 10 MiB read (are the caches cold?), then two
encodes one after the other (how long does the slowdown last?).
`--service` (default): `python -m classifier_service` started per variant in rotating rounds (`service_ab.rotate`):
32 callers of unique mixed and short texts (decision 0028's load), one caller back to back, the service's CPU
while nobody calls, then one caller pausing before each call. `--keep-warm` compares `--keep-warm-ms` settings
instead of `--inline-max-tokens` ones.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0032_idle_gap --in-process      # ~1 minute
    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0032_idle_gap --rounds 6        # ~8 minutes
    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0032_idle_gap --rounds 6 --keep-warm
"""
from __future__ import annotations

import argparse
import statistics
import time

import grpc
import numpy as np

from bench import queries
from bench.stats import cpu_seconds
from bench.router_timing import texts
from classifier_service.config import parse
from classifier_service.encoder import Encoder
from tierwise import blas
from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc as pb_grpc

from .service_ab import load_and_one_caller, rotate

VARIANTS = {"shipped": ("", []), "inline 64": ("", ["--inline-max-tokens", "64"]),
            "inline 32": ("", ["--inline-max-tokens", "32"])}
KEEP_WARM = {"shipped": ("", []), "keep warm 10 ms": ("", ["--keep-warm-ms", "10"]),
             "keep warm 5 ms": ("", ["--keep-warm-ms", "5"])}
IDLE_S = 5.0  # how long the idle service's CPU is read


def spin() -> int:
    x = 0
    for k in range(20_000):
        x += k
    return x


def in_process(pause_s: float, blocks: int = 12, per_block: int = 20) -> None:
    blas.one_thread()
    cfg = parse([])
    encoder = Encoder(cfg.encoder_dir, cfg.precision, cfg.ort_threads)
    qs = texts("idle-gap", blocks * per_block * 4 + 50)
    for q in qs[:50]:
        encoder.embed([q])
    buf = np.ones(10 * 2**20 // 8)
    steps = ("Python loop", "10 MiB read", "first encode", "second encode")
    got: dict[float, list[list[float]]] = {p: [[] for _ in steps] for p in (0.0, pause_s)}
    i = 50
    for _ in range(blocks):
        for pause, lists in got.items():
            for _ in range(per_block):
                if pause:
                    time.sleep(pause)
                t = [time.perf_counter()]
                spin(); t.append(time.perf_counter())
                buf.sum(); t.append(time.perf_counter())
                encoder.embed([qs[i]]); t.append(time.perf_counter())
                encoder.embed([qs[i + 1]]); t.append(time.perf_counter())
                i += 2
                for lst, a, b in zip(lists, t, t[1:]):
                    lst.append((b - a) * 1000)
    for pause, lists in got.items():
        print(f"pause {pause * 1000:.0f} ms: " + ", ".join(f"{s} p50 {statistics.median(v):.3f} ms"
                                                            for s, v in zip(steps, lists)))


def service(rounds: int, pause_s: float, variants: dict, calls: int = 300, seconds: float = 8.0) -> None:
    sets = queries.build(queries.FULL, 32 * 1024)
    short = queries.short_questions(calls * rounds * len(variants) + 100)
    paused = iter(queries.short_questions(60 * rounds * len(variants) + 10, start=20_000_000))
    loaded = load_and_one_caller(sets.load_mixed, short, calls, seconds, queries.short_questions(60_000, start=10_000_000))

    def measure(address: str, pid: int) -> dict[str, float]:
        got = loaded(address)
        cpu = cpu_seconds(pid)
        time.sleep(IDLE_S)
        got["idle cpu"] = (cpu_seconds(pid) - cpu) / IDLE_S
        latencies = []
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ClassifierServiceStub(channel)
            for _ in range(60):
                time.sleep(pause_s)
                t0 = time.perf_counter()
                stub.Classify(pb.ClassifyRequest(text=next(paused)))
                latencies.append((time.perf_counter() - t0) * 1000)
        return got | {"paused": statistics.median(latencies)}

    figures = rotate(variants, rounds, measure, with_pid=True)
    base = figures["shipped"]
    print(f"| variant | 32-caller mixed q/s (vs shipped, rounds higher) | 32-caller short q/s (vs shipped) | "
          f"p50 back to back | p50 after {pause_s * 1000:.0f} ms | cores used idle |\n|---|---|---|---|---|---|")
    for name, got in figures.items():
        cells = []
        for key in ("mixed", "short"):
            d = np.array(got[key]) / np.array(base[key]) - 1
            cells.append(f"{np.median(got[key]):.0f} ({np.median(d):+.1%}, {(d > 0).sum()} of {len(d)})")
        print(f"| {name} | {' | '.join(cells)} | {np.median(got['p50']):.2f} ms | {np.median(got['paused']):.2f} ms | "
              f"{np.median(got['idle cpu']):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in-process", action="store_true")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--pause-ms", type=float, default=queries.PAUSE_S * 1000)
    ap.add_argument("--keep-warm", action="store_true", help="compare --keep-warm-ms 10 and 5 with the shipped "
                    "service instead of --inline-max-tokens")
    args = ap.parse_args()
    if args.in_process:
        return in_process(args.pause_ms / 1000)
    service(args.rounds, args.pause_ms / 1000, KEEP_WARM if args.keep_warm else VARIANTS)


if __name__ == "__main__":
    main()
