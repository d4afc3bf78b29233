"""Decision 0021, the Route path: what the router adds to the classifier's own time at 200 requests/s.

One classifier and one double serve every target; each target gets the same open-loop load (`make bench`'s
router schedule: calls sent on time whatever the replies do, latency from each call's due time, unique queries;
paced by a thread, `bench.pacing`):

- `classify`: Classify sent straight to the classifier (the hop the router makes, without the router);
- `route <name>`: Route with the embedding strategy through a router started from source tree <name>;
- `heuristic <name>`: Route with the heuristic strategy (the router's floor, no classifier hop).

Targets take turns in short bursts (`--rounds` rounds), so a shared, noisy machine slows them alike; the
report gives each target's median of the bursts' p50 and p99, the p99 and maximum of all its calls together, and
each process's CPU per call. With D0021_GC_STATS=1 each router prints its full garbage collections.

    .venv/bin/python -m research.d0021_route_path [--rounds 6] [--seconds 3] [--no-heuristic]
        [--base DIR [--base-classifier]] [--switch-ms MS] [--profile FILE] [--rate 200]
        [--classifier-args '--keep-warm-ms 10'] [--router-keep-warm-ms 10] [--asyncio-pacing]

`--base DIR` adds a second router run from another source tree (e.g. `git archive HEAD | tar -x -C DIR`, with
DIR/build linked to this tree's build/), so a change can be compared with what it replaces in the same run;
`--base-classifier` adds Classify straight to a classifier run from DIR too. `--switch-ms` starts this tree's
router with that GIL switch interval; `--profile` runs its event loop thread under cProfile.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import grpc
import yaml

from bench.pacing import on_asyncio_timers, on_schedule
from bench.router_bench import paced
from bench.router_timing import KEY, texts
from bench.stats import cpu_seconds, own_cpu_seconds, percentile
from tests.servers import KEY_ENV, ServiceProcess, router_config, start, watch
from tierwise.v1 import classifier_pb2 as cpb
from tierwise.v1 import classifier_pb2_grpc as cpb_grpc
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
RATE = 200.0
TIMEOUT_S = 5.0


def _router(source: Path, config: Path, classifier: str, switch_ms: float | None,
            profile: Path | None) -> ServiceProcess:
    """A router process run from `source` (its own copy of the code), waited on until ready; with `profile`, its
    event loop thread under cProfile (stats written there when it stops)."""
    code = ""
    if switch_ms is not None:
        code += f"sys.setswitchinterval({switch_ms / 1e3})\n"
    if os.environ.get("D0021_GC_STATS"):  # each full collection's time, printed
        code += ("import gc, time\nT0 = time.perf_counter(); T = {}\n"
                 "def cb(phase, info):\n    if info['generation'] != 2: return\n"
                 "    if phase == 'start': T['t'] = time.perf_counter(); return\n"
                 "    print('gc2 at', round(T['t'] - T0, 1), 's took', round((time.perf_counter() - T['t']) * 1e3, 1),"
                 " 'ms', flush=True)\ngc.callbacks.append(cb)\n")
    return spawn(source, "router_service", code, profile, "--config", str(config), "--classifier", classifier)


def spawn(source: Path, module: str, code: str, profile: Path | None, *args: str) -> ServiceProcess:
    """`python -m module --listen 127.0.0.1:0 *args` with the code in `source`, `code` run first; waited on until
    ready."""
    run = f"runpy.run_module({module!r}, run_name='__main__')"
    code = f"import runpy, sys\nsys.argv[0] = {module!r}\n{code}"
    if profile is None:
        code += run
    else:
        code += (f"import cProfile; p = cProfile.Profile(); p.enable()\ntry:\n    {run}\n"
                 f"finally:\n    p.disable(); p.dump_stats({str(profile)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code, "--listen", "127.0.0.1:0", *args], cwd=source,
                            env=os.environ | {"PYTHONUNBUFFERED": "1", KEY_ENV: KEY, "PYTHONPATH": str(source)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    service = watch(proc)
    service.address = service.wait_for("listening on").split("listening on ")[1].split()[0]
    service.wait_for("ready on", timeout=120)
    return service


async def _burst(call, queries: list[str], rate: float = RATE, pace=on_schedule) -> tuple[list[float], int]:
    """(answered calls' latencies in ms, calls that failed or degraded)."""
    run = await paced(call, queries, rate, pace)
    return [s * 1e3 for s in run.latencies], run.rpc_errors + run.degraded


async def measure(targets: dict[str, tuple], pids: dict[str, int], rounds: int, seconds: float,
                  rate: float = RATE, pacers: dict | None = None) -> dict:
    """pacers: target name -> how its calls are paced (bench.pacing; default on_schedule)."""
    per_burst = int(rate * seconds)
    stats = {name: {"p50": [], "p99": [], "all": [], "failed": 0, "cpu": {p: 0.0 for p in pids} | {"client": 0.0}, "n": 0}
             for name in targets}
    for r in range(rounds + 1):  # round 0 warms every target up and is not counted
        order = list(targets) if r % 2 else list(reversed(targets))
        for name in order:
            call = targets[name]
            queries = texts(f"{name}-{r}", per_burst if r else 40)
            before = {p: cpu_seconds(pid) for p, pid in pids.items()} | {"client": own_cpu_seconds()}
            latencies, failed = await _burst(call, queries, rate, (pacers or {}).get(name, on_schedule))
            after = {p: cpu_seconds(pid) for p, pid in pids.items()} | {"client": own_cpu_seconds()}
            if not r:
                continue
            s = stats[name]
            s["p50"].append(percentile(latencies, 50))
            s["p99"].append(percentile(latencies, 99))
            s["all"] += latencies
            s["failed"] += failed
            s["n"] += len(queries)
            for p in s["cpu"]:
                s["cpu"][p] += after[p] - before[p]
            print(f"  round {r} {name:24s} p50 {s['p50'][-1]:6.2f}  p99 {s['p99'][-1]:6.2f} ms  load "
                  f"{os.getloadavg()[0]:.1f}", file=sys.stderr)
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--base", type=Path, help="a second source tree to run a router from")
    ap.add_argument("--base-classifier", action="store_true",
                    help="with --base, also Classify straight to a classifier run from that tree")
    ap.add_argument("--switch-ms", type=float, help="the work router's GIL switch interval (ms)")
    ap.add_argument("--profile", type=Path, help="profile the work router's event loop thread into this file")
    ap.add_argument("--no-heuristic", action="store_true", help="leave out the heuristic targets")
    ap.add_argument("--rate", type=float, default=RATE, help="calls a second (a quiet deployment: 10)")
    ap.add_argument("--classifier-args", default="", help="extra flags for the classifier, e.g. '--keep-warm-ms 10'")
    ap.add_argument("--router-keep-warm-ms", type=float, default=0.0, help="the routers' classifier.keep_warm_ms")
    ap.add_argument("--asyncio-pacing", action="store_true",
                    help="also run every target paced by asyncio's timers, as the benches did before decision 0034")
    args = ap.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="d0021-route-") as tmp:
        double = start("bench.router_double")
        stack.callback(double.stop)
        base_url = double.wait_for("ready on").split("ready on ")[1].strip()
        classifier = start("classifier_service", "--listen", "127.0.0.1:0", *args.classifier_args.split())
        stack.callback(classifier.stop)
        classifier.address = classifier.wait_for("listening on").split("listening on ")[1].split()[0]
        classifier.wait_for("ready on", timeout=120)
        base_classifier = None
        if args.base and args.base_classifier:  # the same classifier run from the other tree: Classify only
            base_classifier = spawn(args.base.resolve(), "classifier_service", "", None)
            stack.callback(base_classifier.stop)
        config = Path(tmp) / "tierwise.yaml"
        doc = router_config(base_url, strategy="embedding")
        doc.setdefault("classifier", {})["keep_warm_ms"] = args.router_keep_warm_ms
        config.write_text(yaml.safe_dump(doc))
        sources = {"work": ROOT} | ({"base": args.base.resolve()} if args.base else {})
        routers = {}
        for name, source in sources.items():
            routers[name] = _router(source, config, classifier.address, args.switch_ms if name == "work" else None,
                                    args.profile if name == "work" else None)
            stack.callback(routers[name].stop)
        pids = {"classifier": classifier.proc.pid} | (
            {"classifier base": base_classifier.proc.pid} if base_classifier else {}) | {f"router {n}": r.proc.pid for n, r in routers.items()}

        async def run() -> dict:
            channels = [grpc.aio.insecure_channel(classifier.address)]
            cstub = cpb_grpc.ClassifierServiceStub(channels[0])
            targets = {"classify": lambda q: cstub.Classify(cpb.ClassifyRequest(text=q), timeout=TIMEOUT_S)}
            if base_classifier is not None:
                channels.append(grpc.aio.insecure_channel(base_classifier.address))
                bstub = cpb_grpc.ClassifierServiceStub(channels[-1])
                targets["classify base"] = lambda q: bstub.Classify(cpb.ClassifyRequest(text=q), timeout=TIMEOUT_S)
            for name, router in routers.items():
                channels.append(grpc.aio.insecure_channel(router.address))
                stub = pb_grpc.RouterServiceStub(channels[-1])
                targets[f"route {name}"] = (lambda s: lambda q: s.Route(
                    pb.RouteRequest(query=q, strategy="embedding"), timeout=TIMEOUT_S))(stub)
                if not args.no_heuristic:
                    targets[f"heuristic {name}"] = (lambda s: lambda q: s.Route(
                        pb.RouteRequest(query=q, strategy="heuristic"), timeout=TIMEOUT_S))(stub)
            pacers = {}
            if args.asyncio_pacing:
                for name in list(targets):
                    targets[f"{name} (asyncio timers)"] = targets[name]
                    pacers[f"{name} (asyncio timers)"] = on_asyncio_timers
            try:
                return await measure(targets, pids, args.rounds, args.seconds, args.rate, pacers)
            finally:
                for channel in channels:
                    await channel.close()

        stats = asyncio.run(run())
        for name, router in routers.items():
            pauses = [line.strip() for line in router.output if line.startswith("gc2 at")]
            if pauses:
                print(f"router {name}: full collections: " + "; ".join(pauses), file=sys.stderr)
    print(f"\n{args.rounds} rounds of {args.seconds:g}-s bursts at {args.rate:g}/s, unique queries; medians of the "
          f"bursts' percentiles; CPU ms per call; load average at the end {os.getloadavg()[0]:.1f}")
    print("| target | p50 ms | p99 ms | all calls' p99 / max ms | failed | "
          + " | ".join(f"{p} CPU" for p in [*pids, "client"]) + " |")
    print("|---|---|---|---|---|" + "---|" * (len(pids) + 1))
    for name, s in stats.items():
        cpu = " | ".join(f"{s['cpu'][p] / s['n'] * 1e3:.2f}" for p in [*pids, "client"])
        print(f"| {name} | {statistics.median(s['p50']):.2f} | {statistics.median(s['p99']):.2f} "
              f"| {percentile(s['all'], 99):.1f} / {max(s['all']):.1f} | {s['failed']} "
              f"| {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
