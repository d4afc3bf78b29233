"""The HTTP API bench's target, judged from http_bench.json, and its Markdown section."""
from __future__ import annotations

from .report import table

ADDED_P50_MS = 3.0
CORES = ("client", "router", "classifier", "double", "other")
BUSY = 0.2  # other processes using more than this many cores while measuring: say so


def added(result: dict) -> dict[str, dict[str, float]]:
    """p50 and p99 added over the direct SDK call measured in the same process and loop."""
    calls = result["calls"]
    base = calls["direct_sdk"]
    out = {"tierwise_http": _minus(calls["tierwise_http"], base), "tierwise_grpc": _minus(calls["tierwise_grpc"], base)}
    lite = result["litellm"]
    if lite["kind"] == "proxy":
        out["litellm"] = _minus(calls["litellm_proxy"], base)
    else:
        out["litellm"] = _minus(lite["litellm_router"], lite["direct_sdk"])
    return out


def _minus(path: dict, base: dict) -> dict[str, float]:
    return {"p50_ms": path["p50_ms"] - base["p50_ms"], "p99_ms": path["p99_ms"] - base["p99_ms"]}


def targets(result: dict) -> list[dict]:
    tw = added(result)["tierwise_http"]["p50_ms"]
    clean = result["calls"]["tierwise_http"]["errors"] == 0
    return [{"target": f"HTTP API, heuristic: adds <= {ADDED_P50_MS:g} ms p50 over the direct openai SDK call",
             "measured": f"{tw:.2f} ms", "pass": bool(tw <= ADDED_P50_MS and clean)}]


def render(result: dict) -> str:
    m, calls, lite = result["machine"], result["calls"], result["litellm"]
    add = added(result)
    proxy = lite["kind"] == "proxy"
    n = calls["direct_sdk"]["n"]
    lines = [f"# Tierwise HTTP API bench ({result['mode']} run, {result['started_at']})", "",
             "Command: `make bench` (this part: `python -m bench.http_bench --baseline-python .venv-bench/bin/python`)."
             "", ""]
    lines += table(["target", "measured (median)", "result"],
                   [[t["target"], t["measured"], "PASS" if t["pass"] else "MISS"] for t in result["targets"]])
    lines += ["", f"## Added latency: {n} sequential chat completions per path, paths interleaved round-robin", "",
              "Every path but the gRPC row is the official `openai` SDK (AsyncOpenAI, no retries), all in one "
              "client process, each call with a unique query. Added = percentile(path) - percentile(direct SDK call) from the same run; "
              "ratio = added by LiteLLM / added by Tierwise.", ""]
    rows = [["direct openai SDK -> double", calls["direct_sdk"], "0 (reference)", "0 (reference)"],
            ["Tierwise HTTP API, model tierwise/heuristic", calls["tierwise_http"],
             f"{add['tierwise_http']['p50_ms']:+.2f}", f"{add['tierwise_http']['p99_ms']:+.2f}"],
            ["(same router over gRPC: Complete, heuristic, grpc.aio client)", calls["tierwise_grpc"],
             f"{add['tierwise_grpc']['p50_ms']:+.2f}", f"{add['tierwise_grpc']['p99_ms']:+.2f}"]]
    if proxy:
        rows.append([f"LiteLLM proxy {lite['version']} (1 worker)", calls["litellm_proxy"],
                     f"{add['litellm']['p50_ms']:+.2f}", f"{add['litellm']['p99_ms']:+.2f}"])
    else:
        rows += [["direct openai SDK -> double (LiteLLM's process)", lite["direct_sdk"], "0 (reference)",
                  "0 (reference)"],
                 [f"LiteLLM Router.acompletion {lite['versions']['litellm']} (in-process)", lite["litellm_router"],
                  f"{add['litellm']['p50_ms']:+.2f}", f"{add['litellm']['p99_ms']:+.2f}"]]
    lines += table(["path", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "errors"],
                   [[name, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", a50, a99, str(s["errors"])]
                    for name, s, a50, a99 in rows])
    tw, li = add["tierwise_http"]["p50_ms"], add["litellm"]["p50_ms"]
    ratio = f"**{li / tw:.2f}**" if tw > 0.05 else "no ratio (Tierwise's added p50 is within noise of zero)"
    lines += ["", f"Added p50: Tierwise HTTP {tw:.2f} ms, LiteLLM {'proxy' if proxy else 'Router'} {li:.2f} ms; "
              f"LiteLLM / Tierwise = {ratio} (above 1 favours Tierwise)."]
    errors = [f"- {name}: {s['errors']} errors, first: {s['first_error']}" for part in (calls, lite)
              for name, s in part.items() if isinstance(s, dict) and s.get("errors")]
    lines += ["", *errors] if errors else []
    cores = calls["cores"]
    lines += ["", "## Machine and caveats", "",
              "- Cores used while measuring: " + ", ".join(f"{c} {cores[c]:.2f}" for c in CORES) + "."
              + (f" **The machine was shared**: other processes used {cores['other']:.2f} cores, so every path is "
                 "slower and noisier than on an idle machine." if cores["other"] > BUSY else ""),
              f"- {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, openai {m['openai']}; load average "
              f"{_load(m['loadavg_start'])} at start, {_load(m['loadavg_end'])} at the end.",
              "- Router: tests.servers.router_config with strategy=heuristic (3 tiers on the double), HTTP API on "
              "127.0.0.1, no API keys; a real classifier runs but the heuristic never calls it. The router's "
              "answer goes to whichever tier the heuristic picks; every tier is the same double.",
              ("- LiteLLM: its proxy server (`litellm --config`, 1 worker) with t1-a and t1-b as the deployments, "
               "t1-b the fallback, no retries, measured from the same client loop as Tierwise."
               if proxy else
               f"- LiteLLM: its proxy could not run ({lite.get('why', '')[:200]}), so its in-process Router was "
               "measured, against a direct SDK call in its own process: that row has no HTTP hop of its own, "
               "so it understates what a LiteLLM proxy adds."),
              f"- The p99 of {n} sequential calls rests on the slowest ~{max(1, round(n / 100))}; added latencies "
              "are differences of two percentiles, so a few tenths of a ms is noise.",
              f"- OTLP trace export {'ON' if result['otlp_export'] else 'off'}."]
    return "\n".join(lines) + "\n"


def _load(loadavg: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in loadavg)
