"""Decision 0029: what would a native gRPC server's floor be, beside Python's, under the bench's own Python client?

Decisions 0021 and 0025 put most of the classifier's gap over the in-process encoder (issue 23 allows 0.6 ms) on
Python gRPC's own per-call cost with a busy handler. This probe measures that claim against a C++ server
(`research/native/floor_server.cc`, Debian's grpc++ 1.51) answering the same Classify method: an empty reply at once,
and after keeping its handler thread busy for `--spin-ms` (as an encode would). Beside it, the Python servers of the
same two shapes (sync and grpc.aio empty, sync busy), the shipped service and the encoder in this process.

One caller, blocks of 25 calls rotating over the paths, the same texts for each (d0021's blocks), the sync client
`make bench` uses; server CPU per call from /proc.

    apt-get install g++ pkg-config libgrpc++-dev protobuf-compiler-grpc   # once; the probe builds the server
    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0029_native_floor [--kind short|mixed|both] [--blocks 16]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from bench import queries
from bench.server import ClassifierServer
from bench.stats import cpu_account, cpu_seconds, percentile
from classifier_service.config import Config
from research import d0021_serving_path as d0021
from research.service_ab import port_server

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "research" / "native" / "floor_server.cc"
OUT = ROOT / "build" / "research" / "native"
TOOLS = ("g++", "pkg-config", "protoc", "grpc_cpp_plugin")
ENCODER, SHIPPED = "encoder in-process", "service (grpc.aio, shipped)"


def build(source: Path = SOURCE, flags: tuple[str, ...] = ()) -> Path:
    """A C++ server, compiled once per change of its source (stubs generated from protos/); `flags` are extra
    compiler and linker flags."""
    binary = OUT / source.stem
    header = source.parent / "serve.h"
    if binary.exists() and binary.stat().st_mtime > max(source.stat().st_mtime, header.stat().st_mtime):
        return binary
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install g++ pkg-config libgrpc++-dev "
                         "protobuf-compiler-grpc")
    OUT.mkdir(parents=True, exist_ok=True)
    proto = "tierwise/v1/classifier.proto"
    subprocess.run(["protoc", "-I", str(ROOT / "protos"), f"--cpp_out={OUT}", f"--grpc_out={OUT}",
                    f"--plugin=protoc-gen-grpc={shutil.which('grpc_cpp_plugin')}", proto], check=True)
    grpc_flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++", "protobuf"], check=True,
                                capture_output=True, text=True).stdout.split()
    stubs = [str(OUT / "tierwise" / "v1" / name) for name in ("classifier.pb.cc", "classifier.grpc.pb.cc")]
    subprocess.run(["g++", "-O2", "-std=c++17", f"-I{OUT}", f"-I{source.parent}", str(source), *stubs, *grpc_flags,
                    *flags, "-o", str(binary)], check=True)
    return binary


def spawn(stack: ExitStack, command: list[str]) -> tuple[str, int]:
    target, proc = port_server(stack, command)
    return target, proc.pid


def rotating(calls: dict[str, Callable[[str], object]], blocks: list[list[str]], pids: dict[str, int]
             ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """One call at a time, each block of texts through every path, the paths' order rotating from block to block:
    (ms of each call by path, server CPU ms a call for the paths in `pids`, the machine's CPU account)."""
    ms: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    with cpu_account(lambda: sum(cpu_seconds(pid) for pid in pids.values())) as account:
        for block, texts in enumerate(blocks):
            for name in names[block % len(names):] + names[: block % len(names)]:
                for text in texts:
                    t0 = time.perf_counter()
                    calls[name](text)
                    ms[name].append((time.perf_counter() - t0) * 1000)
    cpu = {name: (cpu_seconds(pid) - cpu0[name]) * 1000 / len(ms[name]) for name, pid in pids.items()}
    return ms, cpu, account


def run(blocks: int, kind: str, sets: queries.QuerySets, spin_ms: float) -> None:
    native = str(build())
    python = [sys.executable, "-m"]
    busy = f"handler busy {spin_ms:g} ms"
    with ExitStack() as stack:
        shipped = stack.enter_context(ClassifierServer(ROOT, Path("/tmp/d0029-latency.log")))
        targets = {
            SHIPPED: (shipped.target, shipped.pid),
            "C++ sync, empty reply": spawn(stack, [native, "0"]),
            f"C++ sync, {busy}": spawn(stack, [native, str(round(spin_ms * 1000))]),
            "Python grpc.aio, empty reply": spawn(stack, [*python, "research.d0021_serving_path", "--echo-server"]),
            "Python sync, empty reply": spawn(stack, [*python, "research.d0025_sync_server", "--serve", "empty"]),
            f"Python sync, {busy}": spawn(stack, [*python, "research.d0025_sync_server", "--serve", "spin",
                                                  "--spin-ms", str(spin_ms)]),
        }
        calls = {ENCODER: d0021.InProcess(),
                 **d0021.classify_calls(stack, {name: target for name, (target, _) in targets.items()})}
        for call in calls.values():
            for text in sets.warmup:
                call(text)
        seed = int(time.time()) % 100_000 * 10_000
        ms, cpu, account = rotating(calls, [d0021.texts_for(kind, sets, block, seed) for block in range(blocks)],
                                    {name: pid for name, (_, pid) in targets.items()})
    own = percentile(ms[ENCODER], 50)
    print(f"\n{kind} queries, one caller, {blocks} blocks of {d0021.BLOCK} per path, rotating; ms; other processes "
          f"{account['other_s'] / account['wall_s']:.2f} cores, load average now {os.getloadavg()[0]:.2f}")
    print("| path | min | p10 | p50 | p90 | p50 - encoder | p50 - handler time | server CPU ms/call |")
    print("|---|---|---|---|---|---|---|---|")
    for name, values in ms.items():
        p50 = percentile(values, 50)
        spent = spin_ms if busy in name else 0.0
        print(f"| {name} | {min(values):.2f} | {percentile(values, 10):.2f} | {p50:.2f} | {percentile(values, 90):.2f} "
              f"| {p50 - own:+.2f} | {p50 - spent:.2f} | {f'{cpu[name]:.2f}' if name in cpu else '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m research.d0029_native_floor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("short", "mixed", "both"), default="short")
    ap.add_argument("--blocks", type=int, default=16, help="blocks of 25 single calls per path")
    ap.add_argument("--spin-ms", type=float, default=1.6, help="the busy servers' handler time (an encode's)")
    args = ap.parse_args()
    sets = queries.build(queries.FULL, Config().max_text_bytes)
    print(f"{time.strftime('%H:%M', time.gmtime())} UTC, {os.cpu_count()} CPUs")
    for kind in ("short", "mixed") if args.kind == "both" else (args.kind,):
        run(args.blocks, kind, sets, args.spin_ms)


if __name__ == "__main__":
    main()
