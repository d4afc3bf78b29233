"""Decision 0036: a native gRPC server running the real encoder in its handler thread: how far over the in-process
encoder is it?

Decision 0029 measured a C++ server's floor with a handler that only spins as long as an encode, and left the real
encoder untried for want of onnxruntime's C headers. Debian's libonnxruntime-dev (trixie) ships them; this probe
fetches that package, takes its headers only, and links `research/native/encoder_server.cc` against the Python
wheel's own libonnxruntime, so both sides run the same ORT build on the same int8 graph with the same session
options. The C++ handler runs the encoder, then the default head and its support check, and answers Classify. It
does not tokenise: it looks each text up in a table of token ids this probe wrote with the product's tokenizer. So
beside it the probe times the in-process encoder both ways, tokenise + run (the issue's baseline) and run alone.

One caller, blocks of 25 calls rotating over the paths, the same texts for each, the sync client `make bench`
uses; server CPU per call from /proc. Before timing, the C++ replies are checked against the shipped service's on
texts not timed (tier, tokens, probabilities).

`--load` instead alternates 3-second bursts of 32 callers (`make bench`'s load client, unique texts) between the
shipped service and the C++ server, which runs every call on its own (no batching), beside the two-core ceiling as
`make bench` takes it (twice one thread's bucketed batch rate on the same texts).

    apt-get install g++ pkg-config libgrpc++-dev protobuf-compiler-grpc dpkg   # once
    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0036_native_encoder [--kind short|mixed|both] [--blocks 16]
    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0036_native_encoder --load [--kind ...] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import onnxruntime

from bench import grpc_load, queries
from bench.local import ceiling_rate
from bench.server import ClassifierServer
from bench.stats import cpu_account, cpu_seconds, percentile
from classifier_service.config import Config
from classifier_service.encoder import PRECISIONS, Encoder
from classifier_service.heads import TierHead
from research import d0021_serving_path as d0021
from research.d0029_native_floor import OUT, ROOT, build, rotating, spawn

SOURCE = ROOT / "research" / "native" / "encoder_server.cc"
ORT_DEB = "http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
ENCODER, RUN_ONLY, SHIPPED, NATIVE = ("encoder in-process (tokenise + run)", "encoder in-process, run only",
                                      "service (grpc.aio, shipped)", "C++ sync, encoder + head, no tokeniser")


def ort_headers() -> Path:
    """onnxruntime's C and C++ API headers, from Debian's package (headers only; nothing is installed)."""
    root = OUT / "ort"
    include = root / "usr" / "include" / "onnxruntime"
    if not (include / "onnxruntime_cxx_api.h").exists():
        root.mkdir(parents=True, exist_ok=True)
        deb = root / Path(ORT_DEB).name
        urllib.request.urlretrieve(ORT_DEB, deb)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return include


def ort_library() -> Path:
    """The wheel's libonnxruntime (the ORT build the Python service runs), linked under its soname."""
    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*"))
    if not found:
        raise SystemExit("this onnxruntime wheel has no libonnxruntime.so")
    link = OUT / "ortlib" / "libonnxruntime.so.1"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(found[-1])
    return link


def write_tokens(encoder: Encoder, texts: list[str], path: Path) -> None:
    with path.open("wb") as out:
        for text, tokens in zip(texts, encoder.tokenize(texts)):
            raw = text.encode()
            out.write(struct.pack("<I", len(raw)) + raw + struct.pack("<I", len(tokens)))
            out.write(tokens.ids.astype("<i8").tobytes())


def write_head(head: TierHead, path: Path) -> None:
    if head.support is None:
        raise SystemExit(f"head {head.name} has no support check; the probe expects one")
    d, k = head.coef.shape[1], len(head.support.bars)
    parts = [head.coef, head.intercept, np.asarray(head.relative_cost), np.asarray([head.tradeoff]),
             head.support.centroids, head.support.bars]
    path.write_bytes(struct.pack("<II", d, k) + b"".join(np.asarray(p, dtype="<f4").tobytes() for p in parts))


def agreement(shipped, native, texts: list[str]) -> str:
    """How the C++ replies compare with the shipped service's on the same texts."""
    a = [shipped(t) for t in texts]
    b = [native(t) for t in texts]
    tiers = sum(x.tier == y.tier for x, y in zip(a, b))
    tokens = sum(x.input_tokens == y.input_tokens for x, y in zip(a, b))
    gap = max(float(np.max(np.abs(np.subtract(x.probabilities, y.probabilities)))) for x, y in zip(a, b))
    return f"{tiers}/{len(texts)} tiers and {tokens}/{len(texts)} token counts equal; largest probability gap {gap:.1e}"


def native_server() -> Path:
    library = ort_library()
    return build(SOURCE, (f"-I{ort_headers()}", str(library), f"-Wl,-rpath,{library.parent}"))


def native_command(cfg: Config, tokens_file: Path, head_file: Path) -> list[str]:
    write_head(TierHead.load(cfg.heads_dir / "default" / "head.json"), head_file)
    return [str(native_server()), str(cfg.encoder_dir / PRECISIONS[cfg.precision]), str(tokens_file), str(head_file)]


def load(rounds: int, kind: str, sets: queries.QuerySets, seconds: float = 3.0) -> None:
    cfg = Config()
    encoder = Encoder(cfg.encoder_dir, cfg.precision, cfg.ort_threads)
    seed = int(time.time()) % 1000 * 100_000
    names = (SHIPPED, NATIVE)

    def texts(r: int, i: int) -> list[str]:
        if kind == "short":
            return queries.short_questions(6000, start=seed + (r * 2 + i) * 6000)
        return [f"{t} ({seed}.{r}.{i})" for t in sets.load_mixed]

    bursts = {(r, i): texts(r, i) for r in range(rounds) for i in range(len(names))}
    tokens_file = OUT / f"d0036-{kind}-load-tokens.bin"
    write_tokens(encoder, [t for block in bursts.values() for t in block], tokens_file)
    ceiling_texts = texts(rounds, 0)
    encoder.embed_tokens(encoder.tokenize(sets.warmup))
    ceiling = [2 * ceiling_rate(encoder, ceiling_texts, cfg, 1, 8.0)["qps"]]
    qps: dict[str, list[float]] = {name: [] for name in names}
    cores: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with ExitStack() as stack:
        shipped = stack.enter_context(ClassifierServer(ROOT, Path("/tmp/d0036-load.log")))
        targets = {SHIPPED: (shipped.target, shipped.pid),
                   NATIVE: spawn(stack, native_command(cfg, tokens_file, OUT / "d0036-head.bin"))}
        for r in range(rounds):
            for i, name in enumerate(names):
                target, pid = targets[name]
                with cpu_account(lambda pid=pid: cpu_seconds(pid)) as account:
                    qps[name].append(grpc_load.concurrent(target, bursts[r, i], 32, seconds)["qps"])
                cores[name].append((account["measured_s"] / account["wall_s"], account["client_s"] / account["wall_s"]))
    ceiling.append(2 * ceiling_rate(encoder, ceiling_texts, cfg, 1, 8.0)["qps"])
    top = statistics.median(ceiling)
    print(f"\n{kind} queries, 32 callers, {rounds} alternating bursts of {seconds:g} s; unique q/s; the two-core "
          f"ceiling before and after: {ceiling[0]:.0f}, {ceiling[1]:.0f}")
    for name, values in qps.items():
        server, client = (statistics.median(c[k] for c in cores[name]) for k in (0, 1))
        print(f"{name:40s} median {statistics.median(values):6.0f} ({statistics.median(values) / top:.0%} of the "
              f"ceiling)  all {[round(v) for v in values]}; cores: server {server:.2f}, client {client:.2f}")


def run(blocks: int, kind: str, sets: queries.QuerySets) -> None:
    cfg = Config()
    encoder = Encoder(cfg.encoder_dir, cfg.precision, cfg.ort_threads)
    seed = int(time.time()) % 100_000 * 10_000
    timed = [d0021.texts_for(kind, sets, block, seed) for block in range(blocks)]
    checked = d0021.texts_for(kind, sets, blocks, seed)
    tokens_file, head_file = OUT / f"d0036-{kind}-tokens.bin", OUT / "d0036-head.bin"
    write_tokens(encoder, sets.warmup + checked + [t for block in timed for t in block], tokens_file)
    with ExitStack() as stack:
        shipped = stack.enter_context(ClassifierServer(ROOT, Path("/tmp/d0036-latency.log")))
        targets = {SHIPPED: (shipped.target, shipped.pid),
                   NATIVE: spawn(stack, native_command(cfg, tokens_file, head_file))}
        remote = d0021.classify_calls(stack, {name: target for name, (target, _) in targets.items()})
        pretokenized = {}

        def run_only(text: str) -> None:
            encoder.embed_tokens([pretokenized[text]])

        calls = {ENCODER: d0021.InProcess(), RUN_ONLY: run_only, **remote}
        for block in timed:
            pretokenized |= dict(zip(block, encoder.tokenize(block)))
        pretokenized |= dict(zip(sets.warmup, encoder.tokenize(sets.warmup)))
        for call in calls.values():
            for text in sets.warmup:
                call(text)
        check = agreement(remote[SHIPPED], remote[NATIVE], checked)
        ms, cpu, account = rotating(calls, timed, {name: pid for name, (_, pid) in targets.items()})
    own = percentile(ms[ENCODER], 50)
    print(f"\n{kind} queries, one caller, {blocks} blocks of {d0021.BLOCK} per path, rotating; ms; other processes "
          f"{account['other_s'] / account['wall_s']:.2f} cores, load average now {os.getloadavg()[0]:.2f}")
    print(f"C++ against the shipped service on {len(checked)} untimed texts: {check}")
    print("| path | min | p10 | p50 | p90 | p50 - encoder (tokenise + run) | server CPU ms/call |")
    print("|---|---|---|---|---|---|---|")
    for name, values in ms.items():
        p50 = percentile(values, 50)
        print(f"| {name} | {min(values):.2f} | {percentile(values, 10):.2f} | {p50:.2f} | {percentile(values, 90):.2f} "
              f"| {p50 - own:+.2f} | {f'{cpu[name]:.2f}' if name in cpu else '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m research.d0036_native_encoder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("short", "mixed", "both"), default="short")
    ap.add_argument("--blocks", type=int, default=16, help="blocks of 25 single calls per path")
    ap.add_argument("--load", action="store_true", help="32 callers instead of one")
    ap.add_argument("--rounds", type=int, default=3, help="with --load: bursts per server")
    args = ap.parse_args()
    sets = queries.build(queries.FULL, Config().max_text_bytes)
    print(f"{time.strftime('%H:%M', time.gmtime())} UTC, {os.cpu_count()} CPUs, onnxruntime {onnxruntime.__version__}",
          file=sys.stdout)
    for kind in ("short", "mixed") if args.kind == "both" else (args.kind,):
        if args.load:
            load(args.rounds, kind, sets)
        else:
            run(args.blocks, kind, sets)


if __name__ == "__main__":
    main()
