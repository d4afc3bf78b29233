"""python -m bench.http_bench --baseline-python PATH [--quick] [--out bench/results]

What Tierwise's OpenAI-compatible HTTP API adds to a chat completion: the official `openai` SDK calling the
provider double directly, and the same SDK calling Tierwise's HTTP API (heuristic strategy, no classifier hop),
interleaved in one client process with the same router's gRPC Complete (what the transport alone costs); beside them, in the same run and the same loop, the same SDK calling LiteLLM's
proxy (run under PATH, an interpreter with `litellm[proxy]`) in front of the same double. Without the proxy's
extras, LiteLLM's in-process Router is measured instead (bench.litellm_baseline), and the report says so.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
import openai
import yaml
from openai import AsyncOpenAI

from tests.provider_double import unused_port
from tests.servers import KEY_ENV, ServiceProcess, router_config, start
from tierwise.run import stop
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc as pb_grpc

from . import http_report, report
from .__main__ import machine
from .router_bench import cpu_split, litellm_run, parse_args
from .router_timing import KEY, MODEL, interleaved, sdk_call, user

SIZES = {"full": {"count": 400, "warmup": 40}, "quick": {"count": 60, "warmup": 10}}
PROXY_START_S = 120.0


def started(stack: ExitStack, module: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
    service = start(module, *args, env=env)
    stack.callback(service.stop)
    return service


def tierwise_http(address: str) -> callable:
    client = AsyncOpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0, timeout=10.0)

    async def call(text: str):
        reply = await client.chat.completions.create(model="tierwise/heuristic", messages=user(text))
        if reply.tierwise["degraded"]:
            raise RuntimeError("degraded decision")
        return reply
    return call


def tierwise_grpc(channel) -> callable:
    """The same router's gRPC Complete, for what the transport alone costs."""
    stub = pb_grpc.RouterServiceStub(channel)

    async def call(text: str):
        reply = await stub.Complete(pb.CompleteRequest(messages=[pb.Message(**m) for m in user(text)],
                                                       strategy="heuristic"), timeout=10.0)
        if reply.degraded:
            raise RuntimeError("degraded decision")
        return reply
    return call


def litellm_proxy(stack: ExitStack, baseline_python: str, base_url: str, workdir: Path) -> tuple[str, str]:
    """LiteLLM's proxy in front of the double, mirroring Tierwise's tier 1 (t1-a, then t1-b, no retries): its base
    URL and version. Raises when the proxy cannot start (its extras are not installed, say)."""
    check = subprocess.run([baseline_python, "-c", "import litellm.proxy.proxy_server"], capture_output=True,
                           text=True, timeout=PROXY_START_S)
    if check.returncode:
        raise RuntimeError("the proxy's extras (litellm[proxy]) are not installed: "
                           + (check.stderr.strip().splitlines() or ["?"])[-1])

    def deployment(name: str) -> dict:
        return {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": base_url,
                                                        "api_key": KEY, "max_retries": 0}}
    config = workdir / "litellm.yaml"
    config.write_text(yaml.safe_dump({"model_list": [deployment(MODEL), deployment("t1-b")],
                                      "router_settings": {"fallbacks": [{MODEL: ["t1-b"]}], "num_retries": 0}}))
    port = unused_port()
    proc = subprocess.Popen([str(Path(baseline_python).parent / "litellm"), "--config", str(config), "--host",
                             "127.0.0.1", "--port", str(port), "--num_workers", "1"], cwd=workdir,
                            env=os.environ | {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
                            stdout=(workdir / "litellm.log").open("w"), stderr=subprocess.STDOUT)
    stack.callback(stop, proc)
    deadline = time.monotonic() + PROXY_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM proxy exited {proc.returncode}: "
                               + (workdir / "litellm.log").read_text()[-1500:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        raise RuntimeError(f"LiteLLM proxy not up within {PROXY_START_S:g} s")
    version = subprocess.run([baseline_python, "-c", "from importlib.metadata import version; "
                              "print(version('litellm'))"], capture_output=True, text=True, check=True).stdout.strip()
    return f"http://127.0.0.1:{port}", version


def proxy_call(base_url: str) -> callable:
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10.0)
    return lambda text: client.chat.completions.create(model=MODEL, messages=user(text))


async def measure(calls: dict, grpc_address: str, sizes: dict) -> dict:
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        return await interleaved(calls | {"tierwise_grpc": tierwise_grpc(channel)}, sizes["count"], sizes["warmup"])


def run(baseline_python: str, mode: str, workdir: Path) -> dict:
    sizes = SIZES[mode]
    result: dict = {"mode": mode, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": machine() | {"openai": openai.__version__}, "sizes": sizes,
                    "otlp_export": any(k.startswith("OTEL_EXPORTER_OTLP") for k in os.environ)}
    with ExitStack() as stack:
        double = started(stack, "bench.router_double")
        base_url = double.wait_for("ready on").split("ready on ")[1].strip()
        classifier = started(stack, "classifier_service", "--listen", "127.0.0.1:0")
        classifier.address = classifier.wait_for("listening on").split("listening on ")[1].split()[0]
        classifier.wait_for("ready on", timeout=120)
        config = workdir / "tierwise.yaml"
        config.write_text(yaml.safe_dump(router_config(base_url, strategy="heuristic")))
        router = started(stack, "router_service", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                         "--config", str(config), "--classifier", classifier.address, env={KEY_ENV: KEY})
        ready = router.wait_for("ready on", timeout=120).strip()
        result["router"] = ready
        calls = {"direct_sdk": sdk_call(base_url), "tierwise_http": tierwise_http(ready.split(" http=")[1].split()[0])}
        router.address = ready.split(" ready on ")[1].split()[0]
        try:
            proxy_url, version = litellm_proxy(stack, baseline_python, base_url, workdir)
            calls["litellm_proxy"] = proxy_call(proxy_url)
            result["litellm"] = {"kind": "proxy", "version": version, "python": baseline_python}
        except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
            print(f"http-bench: LiteLLM proxy unavailable ({err}); measuring its in-process Router", file=sys.stderr)
            result["litellm"] = {"kind": "router", "why": str(err)[:500]}
        pids = {"router": router.proc.pid, "double": double.proc.pid, "classifier": classifier.proc.pid}
        print(f"http-bench: {', '.join(calls)}: {sizes['count']} calls each, interleaved ...", file=sys.stderr)
        with cpu_split(pids) as cores:
            result["calls"] = asyncio.run(measure(calls, router.address, sizes))
        result["calls"]["cores"] = cores
        if result["litellm"]["kind"] == "router":
            sized = argparse.Namespace(complete=sizes["count"], warmup=sizes["warmup"])
            result["litellm"] |= litellm_run(baseline_python, base_url, sized, workdir)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["targets"] = http_report.targets(result)
    return result


def main() -> int:
    args = parse_args("python -m bench.http_bench", __doc__, "litellm[proxy]")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="tierwise-http-bench-") as tmp:
        result = run(args.baseline_python, "quick" if args.quick else "full", Path(tmp))
    report.publish(args.out, "http_bench.json", "HTTP_REPORT.md", result, http_report.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
