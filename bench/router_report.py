"""The router bench's targets, judged from router_bench.json, and its Markdown report."""
from __future__ import annotations

from .report import table

ROUTE_P50_MS = 4.0
ROUTE_P99_MS = 10.0
ADDED_P50_MS = 5.0
ROUTE_RUNS = (("embedding_unique", "embedding, unique queries (classifier hop)"),
              ("embedding_cache_hit", "embedding, one repeated query (classifier cache hits)"),
              ("heuristic", "heuristic, unique queries (no hop)"),
              ("classify_unique", "Classify sent straight to the classifier, unique queries (no router)"))
CORES = ("client", "router", "classifier", "double", "other")
OTHER_CORES = 0.2  # unrelated processes using more than this (in cores) while measuring: say so


def added(result: dict) -> dict[str, float]:
    """p50 added over the direct SDK call measured in the same process (and so the same environment)."""
    complete, lite = result["complete"], result["litellm"]
    return {"tierwise_heuristic": complete["tierwise_heuristic"]["p50_ms"] - complete["direct_sdk"]["p50_ms"],
            "tierwise_embedding": complete["tierwise_embedding"]["p50_ms"] - complete["direct_sdk"]["p50_ms"],
            "litellm_router": lite["litellm_router"]["p50_ms"] - lite["direct_sdk"]["p50_ms"]}


def targets(result: dict) -> list[dict]:
    run = result["route"]["embedding_unique"]
    clean = run["rpc_errors"] + run["degraded"] == 0
    rate = f"{run['target_rps']:g} req/s"
    emb_added = added(result)["tierwise_embedding"]
    rows = [(f"Route, embedding: p50 <= {ROUTE_P50_MS:g} ms (unique queries, open loop {rate}, no errors)",
             f"{run['latency']['p50_ms']:.2f} ms", run["latency"]["p50_ms"] <= ROUTE_P50_MS and clean),
            (f"Route, embedding: p99 <= {ROUTE_P99_MS:g} ms (same run)",
             f"{run['latency']['p99_ms']:.2f} ms", run["latency"]["p99_ms"] <= ROUTE_P99_MS and clean),
            (f"Complete, embedding: adds <= {ADDED_P50_MS:g} ms p50 over the direct SDK call",
             f"{emb_added:.2f} ms", emb_added <= ADDED_P50_MS)]
    return [{"target": t, "measured": m, "pass": bool(ok)} for t, m, ok in rows]


def _route_rows(route: dict) -> list[list[str]]:
    rows = []
    for key, label in ROUTE_RUNS:
        if key not in route:  # results from before the run was added
            continue
        r = route[key]
        rows.append([label, str(r["sent"]), f"{r['achieved_rps']:.0f}", f"{r['rpc_errors']} / {r['degraded']}",
                     f"{r['latency']['p50_ms']:.2f}", f"{r['latency']['p99_ms']:.2f}",
                     f"{r['router_decision']['p50_ms']:.2f}" if r.get("router_decision") else "—", _lag(r),
                     " / ".join(f"{r['cores'][c]:.2f}" for c in CORES)])
    return rows


def _lag(run: dict) -> str:
    return (f"{run['send_lag_p50_ms']:.2f} / " if "send_lag_p50_ms" in run else "") + f"{run['send_lag_p99_ms']:.2f}"


def _complete_rows(result: dict) -> list[list[str]]:
    complete, lite, add = result["complete"], result["litellm"], added(result)
    serving, baseline = "serving env", f"baseline env (litellm {lite['versions']['litellm']})"
    rows = [("direct OpenAI SDK -> double", serving, complete["direct_sdk"], "0 (reference)"),
            ("Tierwise Complete, heuristic", serving, complete["tierwise_heuristic"],
             f"{add['tierwise_heuristic']:+.2f}"),
            ("Tierwise Complete, embedding (classifier hop)", serving, complete["tierwise_embedding"],
             f"{add['tierwise_embedding']:+.2f}"),
            ("direct OpenAI SDK -> double", baseline, lite["direct_sdk"], "0 (reference)"),
            ("LiteLLM Router.acompletion", baseline, lite["litellm_router"], f"{add['litellm_router']:+.2f}")]
    return [[name, env, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", extra, str(s["errors"])]
            for name, env, s, extra in rows]


def _ratio(result: dict) -> str:
    add = added(result)
    lite, tw, heur = add["litellm_router"], add["tierwise_embedding"], add["tierwise_heuristic"]
    ratios = "; ".join(f"LiteLLM / Tierwise {name} = **{lite / ms:.2f}**" if ms > 0.05
                       else f"Tierwise {name} adds {ms:+.2f} ms, within noise of zero: no ratio"
                       for name, ms in (("embedding", tw), ("heuristic", heur)))
    return (f"Added p50: LiteLLM Router {lite:.2f} ms, Tierwise embedding {tw:.2f} ms, "
            f"Tierwise heuristic {heur:.2f} ms. {ratios} (above 1 favours Tierwise). The classifier hop alone "
            f"(embedding - heuristic) costs {tw - heur:.2f} ms p50 per call.")


def _saturation(result: dict) -> list[str]:
    """Runs during which the machine's cores were all busy: their latencies are queueing, not per-call cost."""
    nproc = result["machine"]["nproc"]
    notes = []
    for key, label in ROUTE_RUNS:
        run = result["route"][key]
        used = sum(run["cores"].values())
        if used >= 0.9 * nproc:
            busy = ", ".join(f"{c} {run['cores'][c]:.2f}" for c in CORES)
            notes.append(f"- **Saturated:** during \"{label}\" {used:.2f} of the {nproc} cores were busy ({busy}), "
                         "so calls queued for CPU: latencies there are mostly waiting, not the cost of one call "
                         f"(router-internal decision p50 {run['router_decision']['p50_ms']:.1f} ms).")
    return notes


def render(result: dict) -> str:
    m, sizes, lite = result["machine"], result["sizes"], result["litellm"]
    n = result["complete"]["direct_sdk"]["n"]
    lines = [f"# Tierwise router bench ({result['mode']} run, {result['started_at']})", "",
             "## Targets", ""]
    lines += table(["target", "measured (median unless stated)", "result"],
                    [[t["target"], t["measured"], "PASS" if t["pass"] else "MISS"] for t in result["targets"]])
    lines += [*_contention(result), "", f"## Route decision latency: open loop at {sizes['rate']:g} req/s over gRPC, "
              f"{sizes['route_seconds']:g} s per unique-query run, {sizes['cache_seconds']:g} s repeated", "",
              f"Queries: {_words(result['route'])}. Latency is client-side from each call's scheduled send time; "
              "a thread keeps the schedule (bench/pacing.py), and the send lag is how late calls started. The last "
              "row sends Classify straight to the classifier at the same rate: `Route`'s p50 less it is the router's "
              "own share. "
              "Errors: failed RPCs / degraded (classifier hop failed, heuristic answered); both are left out of the "
              "percentiles.", ""]
    lines += table(["run", "sent", "achieved req/s", "errors / degraded", "p50 ms", "p99 ms",
                     "router-internal decision p50 ms", "client send lag p50 / p99 ms",
                     "cores used: " + " / ".join(CORES)], _route_rows(result["route"]))
    lines += ["", f"## Complete overhead: {n} sequential calls per path, paths interleaved round-robin", "",
              "Added = p50(path) - p50(direct SDK in the same process). Every call carries a unique query, "
              "so no cache answers it.", ""]
    lines += table(["path", "process", "p50 ms", "p99 ms", "added p50 ms", "errors (incl. warm-up)"],
                    _complete_rows(result))
    errors = [f"- {name}: {s['errors']} errors, first: {s['first_error']}" for part in (result["complete"], lite)
              for name, s in part.items() if isinstance(s, dict) and s.get("errors")]
    lines += ["", *errors] if errors else []
    cores = result["complete"]["cores"]
    lines += ["", "Cores used during the Tierwise rows: " + ", ".join(f"{c} {cores[c]:.2f}" for c in CORES) + "."]
    lines += ["", _ratio(result), "", "## Machine and caveats", "", *_saturation(result),
              f"- {m['nproc']} cores ({m['cpu_model']}), kernel {m['kernel']}, Python {m['python']}, grpcio "
              f"{m['grpcio']}, openai {m['openai']} (baseline env: openai {lite['versions']['openai']}, litellm "
              f"{lite['versions']['litellm']}, {lite['python']}); load average {_load(m['loadavg_start'])} at start, "
              f"{_load(m['loadavg_end'])} at the end.",
              "- The repeated-query run is the floor of the embedding path: both gRPC hops, the classifier "
              "answering from its cache, no encoder run.",
              "- Everything shares those cores: the bench client, the provider test double (its own process), "
              "the router and the classifier (and, for the LiteLLM rows, the baseline process). The cores "
              "column shows who used what; Route latencies include that contention.",
              f"- Medians are the numbers to quote. The p99 of {n} sequential calls rests on the slowest "
              f"~{max(1, round(n / 100))} of them and moves from run to run; "
              "Complete added latencies are differences of two medians, so a few tenths of a ms is noise.",
              "- The double is tests/provider_double.py run by bench/router_double.py with TCP_NODELAY on "
              "(with Nagle on, delayed ACKs add ~40 ms to every call); its answers are a few words, so the "
              "numbers are routing and client overhead, not generation.",
              "- Router config: tests.test_router_complete.router_config with strategy=embedding "
              "(classifier timeout 500 ms, 3 tiers on the double); OTLP trace export "
              f"{'ON (an OTEL_EXPORTER_OTLP_* variable was set)' if result['otlp_export'] else 'off'}."]
    return "\n".join(lines) + "\n"


def _words(route: dict) -> str:
    w, repeated = route["embedding_unique"]["words"], route["embedding_cache_hit"]["words"]["p50"]
    return (f"unique generated texts of {w['min']:.0f}-{w['max']:.0f} words (median {w['p50']:.0f}), a fresh set per "
            f"run, so the classifier's cache cannot answer; the repeated run sends one {repeated:.0f}-word text")


def _contention(result: dict) -> list[str]:
    """A warning when unrelated processes took a noticeable share of the machine while we measured."""
    runs = {**{key: result["route"][key]["cores"] for key, _ in ROUTE_RUNS}, "complete": result["complete"]["cores"]}
    busy = {name: cores["other"] for name, cores in runs.items() if cores["other"] > OTHER_CORES}
    if not busy:
        return []
    listed = ", ".join(f"{name} {other:.2f}" for name, other in busy.items())
    return ["", f"**Warning: the machine was shared.** Unrelated processes used this many cores during: {listed}. "
            "Those numbers are slower and noisier than on an otherwise idle machine."]


def _load(loadavg: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in loadavg)
