"""Decision 0025: a sync gRPC server that encodes in the handler thread, with leader/follower batching, against the
shipped grpc.aio service.

The prototype (`SyncClassifier`, `--serve`) answers Classify as the shipped service does (text checks, decision
cache, the default head's probabilities, support check and tier, server span, latency histogram) on `grpc.server`
with a thread pool, and the handler thread that encoded returns the reply. `LeaderFollower` batches under load: a
call that finds a free encode slot (2, `workers`) and nothing queued encodes its own text at once; calls arriving
while both slots run queue their text; when an encode finishes, the queue (up to 32, length-bucketed by
`embed_bucketed`) runs next, led by a queued handler woken for it (`promote`) or by the thread that finished
(`drain`, `--drain`: no wake-up first, but that thread's own reply waits for the batch).

One run, interleaved so that a shared machine slows every path alike: (1) one caller, blocks of 25 calls rotating
over the paths, the same texts for each: the encoder in this process (tokenise + one ONNX run), the shipped
service, the prototype, bare grpc.aio and sync servers answering an empty reply, and a bare sync server whose handler
spins `--spin-ms` first; server CPU per call from /proc; (2) 32 callers, unique queries, rotating 3-second bursts:
shipped service, prototype(s) and the two-core in-process ceiling (twice one thread's batched rate, as `make bench`).

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0025_sync_server [--kind short|mixed|both] [--blocks 16]
        [--rounds 5] [--phase latency|load|all] [--drain]

About 2 minutes with the defaults, 2.5 with `--drain`; `--rounds 10 --phase load` about 4.
"""
from __future__ import annotations

from tierwise.blas import one_thread

one_thread()  # before numpy loads, as classifier_service/__main__.py does

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
from opentelemetry import trace  # noqa: E402

from bench import grpc_load, queries  # noqa: E402
from bench.local import CORES, ceiling_rate  # noqa: E402
from bench.server import ClassifierServer  # noqa: E402
from bench.stats import cpu_account, cpu_seconds, own_cpu_seconds, percentile  # noqa: E402
from classifier_service.batching import MAX_PAD_RATIO, Embedded, embed_bucketed  # noqa: E402
from classifier_service.config import Config  # noqa: E402
from classifier_service.encoder import Encoder  # noqa: E402
from classifier_service.heads import HeadRegistry  # noqa: E402
from classifier_service.server import (SERVICE, ClassifierServicer, cache_entries, replies,  # noqa: E402
                                       requested_tradeoff)
from research import d0021_serving_path as d0021  # noqa: E402
from research.service_ab import port_server  # noqa: E402
from tierwise import serving  # noqa: E402
from tierwise.serving import Rejected, check_text, shown  # noqa: E402
from tierwise.telemetry import context_from_grpc  # noqa: E402
from tierwise.v1 import classifier_pb2 as pb  # noqa: E402
from tierwise.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HANDLER_THREADS = 64  # more than the 32 callers: a call waiting for a free handler thread waits inside gRPC
SHIPPED, SYNC, ME = "service (grpc.aio, shipped)", "sync leader/follower", "research.d0025_sync_server"
CEILING = "in-process ceiling (2 x one thread)"


class _Waiter:
    __slots__ = ("text", "woken", "result", "error", "batch")

    def __init__(self, text: str):
        self.text = text
        self.woken = threading.Lock()  # held until a leader answers this call or makes it lead
        self.woken.acquire()
        self.result: Embedded | None = None
        self.error: BaseException | None = None
        self.batch: list[_Waiter] | None = None  # set when this call leads an encode


class LeaderFollower:
    """At most `slots` encodes at once, each run by a handler thread; everything else queues for the next one."""

    def __init__(self, encoder: Encoder, slots: int, max_batch: int, handoff: str = "promote",
                 run_tokens: int | None = None):
        self.encoder, self.slots, self.max_batch, self.handoff = encoder, slots, max_batch, handoff
        self.run_tokens = run_tokens
        self._lock, self._running, self._queue = threading.Lock(), 0, []  # _queue: _Waiters
        self.encodes = self.texts = 0  # for the stage report; += under the GIL is close enough for a probe
        self.encode_ms: list[tuple[float, float]] = []  # (wall, thread CPU) of each encode of one text

    def embed(self, text: str) -> Embedded:
        me = _Waiter(text)
        with self._lock:
            if self._running < self.slots and not self._queue:
                self._running += 1
                me.batch = [me]
            else:
                self._queue.append(me)
        if me.batch is None:
            me.woken.acquire()
        if me.batch is not None:  # leading: its own text at once, or (promoted) what queued
            self._lead(me)
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _lead(self, me: _Waiter) -> None:
        batch = me.batch
        while batch:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                texts = [w.text for w in batch]
                out, error = embed_bucketed(self.encoder, texts, MAX_PAD_RATIO, self.max_batch, self.run_tokens), None
            except Exception as err:  # every caller of the batch gets it, none hangs
                out, error = [None] * len(batch), err
            if len(batch) == 1:
                self.encode_ms.append(((time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3))
            self.encodes, self.texts = self.encodes + 1, self.texts + len(batch)
            with self._lock:
                take = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                if not take:
                    self._running -= 1  # the slot is free; else it passes to whoever runs `take`
            if take and self.handoff == "promote":
                take[0].batch = take  # woken first, so the next encode starts while this batch is answered
                take[0].woken.release()
            for w, e in zip(batch, out):
                w.result, w.error = e, error
                if w is not me:
                    w.woken.release()
            batch = take if self.handoff == "drain" else None


class SyncClassifier(pb_grpc.ClassifierServiceServicer):
    """Classify as classifier_service.server does it, on a handler thread; `base` is a loaded ClassifierServicer
    whose encoder, heads, cache, tracer and metrics it uses (its worker pool never starts: no call reaches it)."""

    def __init__(self, base: ClassifierServicer, handoff: str):
        self.base, self.cfg, self.heads, self.encoder = base, base.cfg, base.heads, base.encoder
        self.batcher = LeaderFollower(base.encoder, base.cfg.workers, base.cfg.micro_batch, handoff,
                                      base.cfg.run_cap)
        self._cache_lock = threading.Lock()  # DecisionCache is made for one thread
        self.handler_ms: list[tuple[float, float]] = []  # (wall, thread CPU) of each Classify

    def stages(self) -> dict:
        """Medians since the last report (then reset): where a call's time goes inside this server."""
        lf = self.batcher
        out = {"calls": len(self.handler_ms), "encodes": lf.encodes, "texts": lf.texts}
        for name, rows in (("handler", self.handler_ms), ("encode", lf.encode_ms)):
            if rows:
                out[f"{name}_wall_ms"] = statistics.median(r[0] for r in rows)
                out[f"{name}_cpu_ms"] = statistics.median(r[1] for r in rows)
        self.handler_ms, lf.encode_ms, lf.encodes, lf.texts = [], [], 0, 0
        return out

    def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            with self.base.tracer.start_as_current_span(
                f"{SERVICE}/Classify", context=context_from_grpc(context), kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "Classify"},
                record_exception=False, set_status_on_exception=False,
            ) as span:
                try:
                    head = self.heads.get(request.head)
                    if head is None:
                        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"head: unknown head {shown(request.head)}")
                    check_text(request.text, "text", self.cfg.max_text_bytes)
                    result = self._classify(request.text, head, span, *requested_tradeoff(request, head))
                except Rejected as err:
                    span.set_attribute("rpc.grpc.status_code", err.code.value[0])
                    context.abort(err.code, str(err))
                span.set_attributes({"tierwise.tier": result.tier, "tierwise.top_probability": result.confidence,
                                     "tierwise.outside_support": result.outside_support,
                                     "tierwise.cache_hit": result.cache_hit})
                return result
        finally:
            wall = (time.perf_counter() - started) * 1e3
            self.base.metrics.latency.record(wall, {"method": "Classify"})
            self.handler_ms.append((wall, (time.thread_time() - cpu) * 1e3))

    def _classify(self, text: str, head, span, tradeoff: float | None, kept: float = 0.0) -> pb.ClassifyResponse:
        encoder, cache = self.encoder, self.base.cache
        key = cache.key(f"{head.version}|{encoder.version}", text)
        with self._cache_lock:
            cached = cache.get(key)
        span.set_attributes({"tierwise.head": head.name, "tierwise.head_version": head.version,
                             "tierwise.encoder_version": encoder.version, "tierwise.batch_size": 1})
        hit = cached is not None
        if not hit:
            cached = cache_entries(head, [self.batcher.embed(text)])[0]
            with self._cache_lock:
                cache.put(key, cached)
        if tradeoff is not None:
            span.set_attribute("tierwise.tradeoff", tradeoff)
        tiers, (reply,) = replies(head, encoder.version, [cached], [hit], tradeoff, kept)
        self.base.metrics.decided(head.name, tiers)
        return reply


class _Bare(pb_grpc.ClassifierServiceServicer):
    """An empty reply, after keeping the handler thread busy for `spin_ms` (0: at once)."""

    def __init__(self, spin_ms: float):
        self.spin_s = spin_ms / 1e3

    def Classify(self, request, context):
        until = time.perf_counter() + self.spin_s
        while time.perf_counter() < until:  # busy, as an encoder would keep the core
            pass
        return pb.ClassifyResponse()


def _serve(kind: str, spin_ms: float) -> None:
    """A sync server on a free port (printed once ready): the prototype (`promote`, `drain`) or `_Bare`."""
    sys.setswitchinterval(0.001)  # as classifier_service/__main__.py
    cfg = Config()
    servicer: pb_grpc.ClassifierServiceServicer = _Bare(spin_ms if kind == "spin" else 0.0)
    if kind in ("promote", "drain"):
        base = ClassifierServicer(cfg, HeadRegistry.from_dir(cfg.heads_dir, cfg.default_head))
        base.load()
        servicer = SyncClassifier(base, kind)
        signal.signal(signal.SIGUSR1, lambda *_: print(json.dumps(servicer.stages()), flush=True))
    server = grpc.server(ThreadPoolExecutor(HANDLER_THREADS, thread_name_prefix="handler"),
                         options=serving.server_options(("grpc.max_receive_message_length", cfg.max_message_bytes)))
    pb_grpc.add_ClassifierServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gc.collect()
    gc.freeze()  # as tierwise.serving.run
    print(port, flush=True)
    server.wait_for_termination()


_procs: dict[int, subprocess.Popen] = {}  # by pid: the servers _spawn started


def _spawn(stack: ExitStack, *args: str) -> tuple[str, int]:
    """A server subprocess (`python -m args`) printing its port when ready: (target, pid)."""
    target, proc = port_server(stack, [sys.executable, "-m", *args])
    _procs[proc.pid] = proc
    return target, proc.pid


def _stages(pid: int) -> dict:
    """The prototype's in-server timings since the last ask (SIGUSR1: it prints them as a JSON line)."""
    os.kill(pid, signal.SIGUSR1)
    return json.loads(_procs[pid].stdout.readline())


def _machine(others: list[float]) -> str:
    return (f"other processes {statistics.median(others):.2f} cores (median; {min(others):.2f}-{max(others):.2f}), "
            f"load average now {os.getloadavg()[0]:.2f}")


def latency(blocks: int, kind: str, sets: queries.QuerySets, spin_ms: float) -> None:
    with ExitStack() as stack:
        calls: dict = {"encoder in-process": d0021.InProcess()}
        shipped = stack.enter_context(ClassifierServer(ROOT, Path("/tmp/d0025-latency.log")))
        targets = {SHIPPED: (shipped.target, shipped.pid), SYNC: _spawn(stack, ME, "--serve", "promote"),
                   "bare grpc.aio, empty reply": _spawn(stack, "research.d0021_serving_path", "--echo-server"),
                   "bare sync grpc, empty reply": _spawn(stack, ME, "--serve", "empty"),
                   f"bare sync grpc, handler busy {spin_ms:g} ms": _spawn(stack, ME, "--serve", "spin",
                                                                           "--spin-ms", str(spin_ms))}
        pids = {name: pid for name, (_, pid) in targets.items()}
        calls |= d0021.classify_calls(stack, {name: target for name, (target, _) in targets.items()})
        checked = sets.mixed[:20]  # real texts of many lengths, none sent again below
        answers = {name: [calls[name](text) for text in checked] for name in (SHIPPED, SYNC)}
        same = sum(a.tier == b.tier and a.input_tokens == b.input_tokens for a, b in zip(*answers.values()))
        gap = max(abs(p - q) for a, b in zip(*answers.values()) for p, q in zip(a.probabilities, b.probabilities))
        for call in calls.values():
            for text in sets.warmup:
                call(text)
        seed = int(time.time()) % 100_000 * 10_000
        ms: dict[str, list[float]] = {name: [] for name in calls}
        own_cpu: list[float] = []  # this thread's CPU per in-process call
        names = list(calls)
        _stages(pids[SYNC])
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        with cpu_account(lambda: sum(cpu_seconds(pid) for pid in pids.values())) as account:
            for block in range(blocks):
                texts = d0021.texts_for(kind, sets, block, seed)  # the same texts for every path: each has its own cache
                for name in names[block % len(names):] + names[: block % len(names)]:
                    call = calls[name]
                    for text in texts:
                        t0, c0 = time.perf_counter(), time.thread_time()
                        call(text)
                        ms[name].append((time.perf_counter() - t0) * 1000)
                        if name == "encoder in-process":
                            own_cpu.append((time.thread_time() - c0) * 1000)
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) * 1000 / len(ms[name]) for name, pid in pids.items()}
        inside = _stages(pids[SYNC])
    own = percentile(ms["encoder in-process"], 50)
    print(f"\n{kind} queries, one caller, {blocks} blocks of {d0021.BLOCK} per path, rotating; ms; "
          f"{_machine([account['other_s'] / account['wall_s']])}")
    print(f"replies of the prototype vs the shipped service on {len(checked)} texts: same tier and tokens "
          f"{same}/{len(checked)}, largest probability difference {gap:.2g}")
    print("| path | min | p10 | p50 | p90 | p50 - encoder | server CPU ms/call |\n|---|---|---|---|---|---|---|")
    for name, values in ms.items():
        p50 = percentile(values, 50)
        print(f"| {name} | {min(values):.2f} | {percentile(values, 10):.2f} | {p50:.2f} | "
              f"{percentile(values, 90):.2f} | {p50 - own:+.2f} | {f'{cpu[name]:.2f}' if name in cpu else '-'} |")
    print(f"inside the prototype, medians of {inside['calls']} calls: handler {inside['handler_wall_ms']:.2f} ms wall, "
          f"{inside['handler_cpu_ms']:.2f} ms its thread's CPU; of which the encode (tokenise + run) "
          f"{inside['encode_wall_ms']:.2f} ms wall, {inside['encode_cpu_ms']:.2f} ms CPU; the same encode in this "
          f"process: {own:.2f} ms wall, {statistics.median(own_cpu):.2f} ms CPU")


def load(rounds: int, kind: str, sets: queries.QuerySets, drain: bool, seconds: float = 3.0) -> None:
    with ExitStack() as stack:
        shipped = stack.enter_context(ClassifierServer(ROOT, Path("/tmp/d0025-load.log")))
        targets = {SHIPPED: (shipped.target, shipped.pid), SYNC: _spawn(stack, ME, "--serve", "promote")}
        if drain:
            targets[SYNC + " (drain)"] = _spawn(stack, ME, "--serve", "drain")
        cfg, encoder = Config(), d0021.InProcess().encoder
        encoder.embed_tokens(encoder.tokenize(sets.warmup))
        for target, _ in targets.values():
            grpc_load.concurrent(target, [f"{t} (warm-up)" for t in sets.warmup * 4], 32, 2.0)
        names = [*targets, CEILING]
        stats = {name: {"qps": [], "p50": [], "cpu": [], "other": [], "errors": 0} for name in names}
        batching = {name: _stages(pid) for name, (_, pid) in targets.items() if name != SHIPPED}
        seed = int(time.time()) % 1000 * 100_000
        for r in range(rounds):
            # The same texts for every path in a round (each server has its own cache); new ones each round.
            texts = (queries.short_questions(6000, start=seed + r * 6000) if kind == "short"
                     else [f"{t} ({seed}.{r})" for t in sets.load_mixed])
            for name in names[r % len(names):] + names[: r % len(names)]:
                s = stats[name]
                if name == CEILING:
                    with cpu_account(own_cpu_seconds, client=None) as account:
                        s["qps"].append(CORES * ceiling_rate(encoder, texts, cfg, 1, seconds)["qps"])
                    s["other"].append(account["other_s"] / account["wall_s"])
                    continue
                target, pid = targets[name]
                with cpu_account(lambda: cpu_seconds(pid)) as account:
                    out = grpc_load.concurrent(target, texts, 32, seconds)
                s["other"].append(account["other_s"] / account["wall_s"])
                s["cpu"].append(account["measured_s"] * 1000 / out["completed"])
                s["qps"].append(out["qps"])
                s["p50"].append(out["latency_under_load"]["p50_ms"])
                s["errors"] += out["errors"]
        batching = {name: _stages(targets[name][1]) for name in batching}
    top = statistics.median(stats[CEILING]["qps"])
    print(f"\n{kind} queries, 32 callers, unique, {rounds} rotating bursts of {seconds:g} s per path; medians; "
          f"{_machine([v for s in stats.values() for v in s['other']])}")
    print("| path | q/s | of ceiling | all bursts q/s | other processes' cores | p50 ms under load "
          "| server CPU ms/call | errors |\n|---|---|---|---|---|---|---|---|")
    for name, s in stats.items():
        qps = statistics.median(s["qps"])
        extra = (f"{statistics.median(s['p50']):.1f} | {statistics.median(s['cpu']):.2f} | {s['errors']}"
                 if s["p50"] else "- | - | -")
        print(f"| {name} | {qps:.0f} | {qps / top:.0%} | {' '.join(str(round(v)) for v in s['qps'])} | "
              f"{' '.join(f'{v:.1f}' for v in s['other'])} | {extra} |")
    for name, b in batching.items():
        print(f"{name}: {b['texts']} texts in {b['encodes']} encodes, {b['texts'] / b['encodes']:.1f} a run")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m research.d0025_sync_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("short", "mixed", "both"), default="both")
    ap.add_argument("--phase", choices=("latency", "load", "all"), default="all")
    ap.add_argument("--blocks", type=int, default=16, help="blocks of 25 single calls per path")
    ap.add_argument("--rounds", type=int, default=5, help="3-second bursts of 32 callers per path")
    ap.add_argument("--drain", action="store_true", help="also the variant where the finishing thread runs the queue")
    ap.add_argument("--spin-ms", type=float, default=1.6, help="the busy bare server's handler time")
    ap.add_argument("--serve", choices=("promote", "drain", "empty", "spin"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve, args.spin_ms)
        return
    sets = queries.build(queries.FULL, Config().max_text_bytes)
    kinds = ("short", "mixed") if args.kind == "both" else (args.kind,)
    print(f"{time.strftime('%H:%M', time.gmtime())} UTC, {os.cpu_count()} CPUs, mixed set: {sets.source}")
    for kind in kinds if args.phase in ("latency", "all") else ():
        latency(args.blocks, kind, sets, args.spin_ms)
    for kind in kinds if args.phase in ("load", "all") else ():
        load(args.rounds, kind, sets, args.drain)


if __name__ == "__main__":
    main()
