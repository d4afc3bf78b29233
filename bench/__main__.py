"""python -m bench --seed-python PATH [--quick] [--out bench/results]"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import onnxruntime

from classifier_service.config import Config
from classifier_service.config import parse as parse_server_config

from . import grpc_load, local, queries, report
from .server import ClassifierServer
from .stats import cpu_account, cpu_seconds, memory_mb, own_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
HEAD = ROOT / "models" / "heads" / "default" / "head.json"
CLIENTS = 32


def machine() -> dict:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor() or "unknown")
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu_model,
            "python": platform.python_version(), "grpcio": grpc.__version__, "onnxruntime": onnxruntime.__version__,
            "kernel": platform.release(), "loadavg_start": os.getloadavg()}


def run_tierwise(cfg: Config, sets: queries.QuerySets, sizes: queries.Sizes, log_path: Path,
                 env: dict[str, str]) -> dict:
    with ClassifierServer(ROOT, log_path, env=env) as server:
        print(f"bench: {server.ready_line}", file=sys.stderr)
        result = {"server_config": dataclasses.asdict(cfg), "memory_ready": memory_mb(server.pid)}
        steps = [
            ("short", lambda: grpc_load.sequential(server.target, sets.short, warmup=sets.warmup)),
            ("mixed", lambda: grpc_load.sequential(server.target, sets.mixed)),
            ("short_after_pause", lambda: grpc_load.sequential(server.target, sets.after_pause,
                                                               pause_s=queries.PAUSE_S)),
            ("cache_hit", lambda: grpc_load.cache_hits(server.target, sets.cache_text, sizes.cache_repeats)),
            ("load_mixed", lambda: grpc_load.concurrent(server.target, sets.load_mixed, CLIENTS, sizes.load_seconds)),
            ("load_short", lambda: grpc_load.concurrent(server.target, sets.load_short, CLIENTS, sizes.load_seconds)),
        ]
        for name, step in steps:
            print(f"bench: tierwise {name} ...", file=sys.stderr)
            with cpu_account(lambda: cpu_seconds(server.pid)) as cpu:
                result[name] = step()
            result[name]["cpu"] = cpu
        result["memory_after_load"] = memory_mb(server.pid)
    return result


def run_seed(seed_python: str, sets: queries.QuerySets, workdir: Path) -> dict:
    print("bench: seed baseline ...", file=sys.stderr)
    query_file, out_file = workdir / "seed_queries.json", workdir / "seed_result.json"
    query_file.write_text(json.dumps({"short": sets.short, "mixed": sets.mixed, "warmup": sets.warmup}))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([seed_python, "-m", "bench.seed_baseline", "--queries", str(query_file), "--head", str(HEAD),
                    "--out", str(out_file)], cwd=ROOT, env=env, check=True)
    return json.loads(out_file.read_text()) | {"python": seed_python}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--seed-python", required=True, help="interpreter with torch, sentence-transformers, scikit-learn")
    ap.add_argument("--quick", action="store_true", help="small sets and short load runs (smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sizes = queries.QUICK if args.quick else queries.FULL
    # The server reads the same TIERWISE_CLASSIFIER_* variables, so this is the configuration it runs with; it
    # runs as deployed, while the in-process figures here keep to one core a thread (bench/local.py).
    cfg = parse_server_config(["--listen", "127.0.0.1:0"])
    server_env = dict(os.environ)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    sets = queries.build(sizes, cfg.max_text_bytes)
    print("bench: encoder in-process (single queries) ...", file=sys.stderr)
    encoder = local.encoder_for(cfg)
    with cpu_account(own_cpu_seconds, None) as single_cpu:
        in_process = local.measure(encoder, sets)
    result: dict = {"mode": "quick" if args.quick else "full",
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": machine(), "sizes": dataclasses.asdict(sizes),
                    "queries": {"source": sets.source, "tokens": in_process.pop("tokens")}, "in_process": in_process}
    in_process["single_cpu"] = single_cpu
    result["tierwise"] = run_tierwise(cfg, sets, sizes, args.out / "server.log", server_env)
    print("bench: encoder in-process, batched on the texts the load runs sent (one thread, two threads) ...",
          file=sys.stderr)
    sent = {name: getattr(sets, name)[: result["tierwise"][name]["sent"]] for name in local.CEILING_SETS}
    with cpu_account(own_cpu_seconds, None) as ceiling_cpu:
        in_process["batched"] = local.ceiling(encoder, sent, sets.warmup, cfg, sizes.ceiling_seconds)
    in_process["batched_cpu"] = ceiling_cpu
    with tempfile.TemporaryDirectory(prefix="tierwise-bench-") as tmp:
        result["seed"] = run_seed(args.seed_python, sets, Path(tmp))
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["targets"] = report.targets(result["tierwise"], result["seed"], result["in_process"])

    report.publish(args.out, "bench.json", "REPORT.md", result, report.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
