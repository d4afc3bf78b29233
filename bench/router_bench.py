"""python -m bench.router_bench --baseline-python PATH [--quick] [--out bench/results]

The router's own cost, on one machine: Route decision latency under an open-loop load, and what
Complete adds over calling the provider directly with the official SDK, next to LiteLLM's Router
(run under PATH, an interpreter with litellm). Providers are the OpenAI-compatible test double.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import openai
import yaml

from tests.servers import ServiceProcess, start
from tests.servers import KEY_ENV, router_config
from tierwise.v1 import classifier_pb2 as cpb
from tierwise.v1 import classifier_pb2_grpc as cpb_grpc
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc as pb_grpc

from . import report, router_report
from .__main__ import machine
from .pacing import on_schedule
from .router_timing import KEY, interleaved, sdk_call, summary, texts, user
from .stats import cpu_seconds, distribution, own_cpu_seconds, percentile, system_busy_seconds

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 5.0
CACHE_TEXT = "What is the capital of France?"
BASELINE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Sizes:
    rate: float  # Route requests per second, open loop
    route_seconds: float  # each unique-query Route run
    cache_seconds: float  # the repeated-query Route run
    complete: int  # sequential calls of each Complete kind
    warmup: int  # unmeasured calls before each measurement


FULL = Sizes(rate=200.0, route_seconds=10.0, cache_seconds=5.0, complete=300, warmup=30)
QUICK = Sizes(rate=200.0, route_seconds=3.0, cache_seconds=2.0, complete=60, warmup=10)


@dataclass
class Services:
    double: ServiceProcess
    base_url: str
    classifier: ServiceProcess
    router: ServiceProcess
    ready: dict[str, str]  # each service's ready line

    def pids(self) -> dict[str, int]:
        return {"router": self.router.proc.pid, "classifier": self.classifier.proc.pid,
                "double": self.double.proc.pid}


def _started(stack: ExitStack, module: str, *args: str, env: dict[str, str] | None = None
             ) -> tuple[ServiceProcess, str]:
    """tests.servers.start, with the stop registered before the ready wait (so a failed start is cleaned up too).

    The same waits as tests.servers.start_classifier/start_router; returns the service and its ready line."""
    service = start(module, *args, env=env)
    stack.callback(service.stop)
    if "--listen" in args:
        service.address = service.wait_for("listening on").split("listening on ")[1].split()[0]
    return service, service.wait_for("ready on", timeout=120).strip()


@contextmanager
def services(workdir: Path) -> Iterator[Services]:
    with ExitStack() as stack:
        double, double_ready = _started(stack, "bench.router_double")
        base_url = double_ready.split("ready on ")[1]
        classifier, classifier_ready = _started(stack, "classifier_service", "--listen", "127.0.0.1:0")
        config = workdir / "tierwise.yaml"
        config.write_text(yaml.safe_dump(router_config(base_url, strategy="embedding")))
        router, router_ready = _started(stack, "router_service", "--listen", "127.0.0.1:0", "--config", str(config),
                                        "--classifier", classifier.address, env={KEY_ENV: KEY})
        ready = {"double": double_ready, "classifier": classifier_ready, "router": router_ready}
        for line in ready.values():
            print(f"router-bench: {line}", file=sys.stderr)
        yield Services(double, base_url, classifier, router, ready)


@contextmanager
def cpu_split(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """Cores each process used over the block (CPU seconds / wall seconds); "other" is the rest of the machine."""
    read = {name: partial(cpu_seconds, pid) for name, pid in pids.items()} | {"client": own_cpu_seconds}
    before, busy, wall = {n: f() for n, f in read.items()}, system_busy_seconds(), time.perf_counter()
    cores: dict[str, float] = {}
    yield cores
    wall = time.perf_counter() - wall
    cores.update({n: (f() - before[n]) / wall for n, f in read.items()})
    cores["other"] = max(0.0, (system_busy_seconds() - busy) / wall - sum(cores.values()))


@dataclass
class Paced:
    """What a paced run of calls gave: latencies in seconds from each call's due time (answered calls only), the
    router's own decision time where a reply says it, calls that failed or degraded, and how late each started."""
    latencies: list[float] = field(default_factory=list)
    decisions: list[float] = field(default_factory=list)
    rpc_errors: int = 0
    degraded: int = 0
    lags_ms: list[float] = field(default_factory=list)


async def paced(call, queries: list[str], rate: float, pace=on_schedule) -> Paced:
    """`call(query)` for each query on `pace`'s fixed schedule (bench.pacing) whatever the replies do; latency counts
    from each call's due time, so a client that falls behind shows up in the numbers instead of hiding it."""
    run = Paced()

    async def one(i: int, due: float) -> None:
        try:
            reply = await call(queries[i])
        except grpc.aio.AioRpcError:
            run.rpc_errors += 1
            return
        if getattr(reply, "degraded", False):  # the classifier hop failed and the heuristic answered
            run.degraded += 1
            return
        run.latencies.append(time.perf_counter() - due)
        if hasattr(reply, "decision_ms"):
            run.decisions.append(reply.decision_ms / 1e3)

    run.lags_ms = await pace(len(queries), rate, one)
    return run


async def open_loop(call, queries: list[str], rate: float) -> dict:
    """A paced run of `call` over `queries`, summarised for the report."""
    started = time.perf_counter()
    run = await paced(call, queries, rate)
    elapsed = time.perf_counter() - started
    return {"target_rps": rate, "sent": len(queries), "ok": len(run.latencies),
            "achieved_rps": len(run.latencies) / elapsed,  # answers by this strategy: degraded ones not counted
            "rpc_errors": run.rpc_errors, "degraded": run.degraded,
            "latency": summary(run.latencies, run.rpc_errors + run.degraded),
            "router_decision": summary(run.decisions, 0) if run.decisions else None,
            "send_lag_p50_ms": percentile(run.lags_ms, 50), "send_lag_p99_ms": percentile(run.lags_ms, 99)}


async def route_runs(svc: Services, sizes: Sizes) -> dict:
    """Route with each strategy, and (for what the router adds) Classify sent straight to the classifier."""
    unique = int(sizes.rate * sizes.route_seconds)
    async with grpc.aio.insecure_channel(svc.router.address) as channel, \
            grpc.aio.insecure_channel(svc.classifier.address) as straight:
        stub, classifier = pb_grpc.RouterServiceStub(channel), cpb_grpc.ClassifierServiceStub(straight)

        def route(strategy: str):
            return lambda query: stub.Route(pb.RouteRequest(query=query, strategy=strategy), timeout=TIMEOUT_S)

        runs = {"embedding_unique": (route("embedding"), texts("route-embedding", unique)),
                "embedding_cache_hit": (route("embedding"), [CACHE_TEXT] * int(sizes.rate * sizes.cache_seconds)),
                "heuristic": (route("heuristic"), texts("route-heuristic", unique)),
                "classify_unique": (lambda query: classifier.Classify(cpb.ClassifyRequest(text=query),
                                                                      timeout=TIMEOUT_S),
                                    texts("route-classify", unique))}
        result = {}
        for name, (call, queries) in runs.items():
            print(f"router-bench: {name}: {len(queries)} calls at {sizes.rate:g}/s ...", file=sys.stderr)
            for query in texts(f"warm-{name}", sizes.warmup) + [CACHE_TEXT]:  # also fills the cache for the hit run
                await call(query)
            with cpu_split(svc.pids()) as cores:
                result[name] = await open_loop(call, queries, sizes.rate)
            result[name] |= {"cores": cores, "words": distribution([len(q.split()) for q in queries])}
    return result


async def complete_runs(svc: Services, sizes: Sizes) -> dict:
    async with grpc.aio.insecure_channel(svc.router.address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)

        def tierwise(strategy: str):
            async def call(text: str) -> pb.CompleteResponse:
                reply = await stub.Complete(pb.CompleteRequest(messages=[pb.Message(**m) for m in user(text)],
                                                               strategy=strategy), timeout=TIMEOUT_S)
                if reply.degraded:
                    raise RuntimeError("degraded: the classifier hop failed")
                return reply
            return call

        calls = {"direct_sdk": sdk_call(svc.base_url), "tierwise_heuristic": tierwise("heuristic"),
                 "tierwise_embedding": tierwise("embedding")}
        print(f"router-bench: Complete x{sizes.complete} per kind, interleaved ...", file=sys.stderr)
        with cpu_split(svc.pids()) as cores:
            result = await interleaved(calls, sizes.complete, sizes.warmup)
    return {**result, "cores": cores}


def litellm_run(baseline_python: str, base_url: str, sizes: Sizes, workdir: Path) -> dict:
    print(f"router-bench: LiteLLM Router x{sizes.complete} under {baseline_python} ...", file=sys.stderr)
    out = workdir / "litellm.json"
    subprocess.run([baseline_python, "-m", "bench.litellm_baseline", "--base-url", base_url,
                    "--count", str(sizes.complete), "--warmup", str(sizes.warmup), "--out", str(out)],
                   cwd=ROOT, env=os.environ | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, check=True,
                   timeout=BASELINE_TIMEOUT_S)
    return json.loads(out.read_text()) | {"python": baseline_python}


def parse_args(prog: str, doc: str | None, baseline: str) -> argparse.Namespace:
    """The flags of a benchmark against LiteLLM (this one and bench.http_bench); `baseline`: what the
    --baseline-python interpreter must have. The output directory exists on return."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-python", required=True, help=f"interpreter with {baseline} (and the openai SDK)")
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def main() -> int:
    args = parse_args("python -m bench.router_bench", __doc__, "litellm")
    sizes = QUICK if args.quick else FULL
    # Fail before anything starts if the baseline cannot run; a SIGTERM unwinds like Ctrl-C (services stopped).
    subprocess.run([args.baseline_python, "-c", "import litellm, openai"], check=True, timeout=BASELINE_TIMEOUT_S)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    result: dict = {"mode": "quick" if args.quick else "full",
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": machine() | {"openai": openai.__version__}, "sizes": dataclasses.asdict(sizes),
                    "otlp_export": any(k.startswith("OTEL_EXPORTER_OTLP") for k in os.environ)}
    with tempfile.TemporaryDirectory(prefix="tierwise-router-bench-") as tmp, services(Path(tmp)) as svc:
        result["services"] = svc.ready
        result["route"] = asyncio.run(route_runs(svc, sizes))
        result["complete"] = asyncio.run(complete_runs(svc, sizes))
        result["litellm"] = litellm_run(args.baseline_python, svc.base_url, sizes, Path(tmp))
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["targets"] = router_report.targets(result)

    report.publish(args.out, "router_bench.json", "ROUTER_REPORT.md", result, router_report.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
