"""The Node, Go and Java example clients in clients/ against the real router: Route and CompleteStream over
the wire, and the caller's W3C trace context carried into the router's and the classifier's spans.

clients/build.sh installs each toolchain (apt, npm ci), generates the stubs from protos/ and builds the
examples, cached by stamp files. A language is skipped only when build.sh reports (exit status 3) that its
toolchain could not be installed; any other build failure fails the test."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .otlp_receiver import OtlpReceiver
from .servers import ROOT, router_stack

LANGS = ("node", "go", "java")
BUILD_SCRIPT = ROOT / "clients" / "build.sh"
BUILD_TIMEOUT_S = 600   # a cold apt/npm install plus the builds takes one to two minutes here
RUN_TIMEOUT_S = 60
TOOLCHAIN_UNAVAILABLE = 3   # build.sh's exit status when an install was impossible
# One trace per language; the parent is the caller's (the client process's) span.
TRACE_IDS = {"node": "4bf92f3577b34da6a3ce929d0e0e4736", "go": "5cf92f3577b34da6a3ce929d0e0e4737",
             "java": "6df92f3577b34da6a3ce929d0e0e4738"}
PARENT_SPAN_ID = "00f067aa0ba902b7"

# A test may wait for a cold toolchain install and build: longer than the suite's default timeout.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 120)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """clients/build.sh started for every language at once (apt runs are serialized by its lock)."""
    logs = tmp_path_factory.mktemp("client-builds")
    procs = {}
    for lang in LANGS:
        log = open(logs / f"{lang}.log", "w+")
        procs[lang] = (subprocess.Popen(["bash", str(BUILD_SCRIPT), lang], cwd=ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log)
    yield procs
    for proc, log in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def built(builds, lang: str) -> Path:
    """The example's launcher once its build is done; skips the test if the toolchain was not installable."""
    proc, log = builds[lang]
    try:
        rc = proc.wait(BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait(10)
    log.seek(0)
    output = log.read()
    if rc == TOOLCHAIN_UNAVAILABLE:
        reasons = [line for line in output.splitlines() if "toolchain unavailable" in line]
        pytest.skip(f"{lang} example client not built: {reasons[-1] if reasons else output[-500:]}")
    assert rc == 0, f"clients/build.sh {lang} failed with status {rc}:\n{output[-6000:]}"
    run = ROOT / "clients" / lang / "build" / "run"
    assert run.is_file() and os.access(run, os.X_OK), f"clients/build.sh {lang} did not write {run}"
    return run


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRACEPARENT", "TRACESTATE", "TIERWISE_ADDRESS")}
    return {**env, **extra}


def run_client(run: Path, address: str, *args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    """Run an example; its JSON lines keyed by call (Route, CompleteStream)."""
    out = subprocess.run([str(run), "--address", address, "--timeout", "20", *args], capture_output=True,
                         text=True, timeout=RUN_TIMEOUT_S, env=env or client_env(), stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"status {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    calls = {line["call"]: line for line in lines}
    assert sorted(calls) == ["CompleteStream", "Route"], out.stdout
    return calls


@pytest.fixture(scope="module")
def stack(tmp_path_factory, builds):
    with router_stack(tmp_path_factory.mktemp("polyglot"), "heuristic") as (double, _, router):
        yield double, router


@pytest.mark.parametrize("lang", LANGS)
def test_example_client_routes_and_streams(lang, builds, stack):
    run = built(builds, lang)
    double, router = stack
    double.reset()
    calls = run_client(run, router.address, "--strategy", "heuristic", "hi there")

    route = calls["Route"]
    assert (route["tier"], route["model"], route["strategy"]) == (1, "t1-a", "heuristic")
    assert route["estimated_cost_usd"] > 0 and not route["degraded"] and route["reason"]
    assert route["probabilities"] == []   # the heuristic produces none

    stream = calls["CompleteStream"]
    assert (stream["decision"]["tier"], stream["decision"]["model"]) == (1, "t1-a")
    summary = stream["summary"]
    assert stream["text"] == summary["content"] == "answer from t1-a: 2 words"
    assert stream["deltas"] > 1, "the answer arrives in pieces"
    assert (summary["tier"], summary["model"], summary["provider"]) == (1, "t1-a", "t1-a")
    assert summary["input_tokens"] > 0 and summary["output_tokens"] > 0 and summary["escalations"] == 0
    assert summary["cost_usd"] == pytest.approx((summary["input_tokens"] * 0.25 + summary["output_tokens"] * 1.25) / 1e6)
    # Route calls no model; CompleteStream called the tier-1 provider once, streaming.
    requests = double.requests_for("t1-a")
    assert len(requests) == 1 and requests[0].stream


@pytest.mark.parametrize("lang", LANGS)
def test_example_client_reports_the_grpc_status(lang, builds, stack):
    run = built(builds, lang)
    _, router = stack
    out = subprocess.run([str(run), "--address", router.address, "--strategy", "no-such-strategy", "hi"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=client_env(),
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 1 and out.stdout == "", out
    assert "INVALID_ARGUMENT" in out.stderr and "unknown strategy" in out.stderr, out.stderr


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory, builds):
    """Router and classifier exporting spans to a real OTLP receiver; the embedding strategy, so every
    decision calls the classifier."""
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with router_stack(tmp_path_factory.mktemp("polyglot-traced"), "embedding", env) as (_, _, router):
            yield receiver, router


@pytest.mark.parametrize("lang", LANGS)
def test_traceparent_joins_router_and_classifier_spans(lang, builds, traced_stack):
    run = built(builds, lang)
    receiver, router = traced_stack
    trace_id = TRACE_IDS[lang]
    calls = run_client(run, router.address, f"Which planet is the largest ({lang})?",
                       env=client_env(TRACEPARENT=f"00-{trace_id}-{PARENT_SPAN_ID}-01"))
    assert calls["Route"]["strategy"] == "embedding" and len(calls["Route"]["probabilities"]) == 3
    assert calls["CompleteStream"]["text"] == calls["CompleteStream"]["summary"]["content"]

    def ours(service: str):
        return lambda r, s: s.trace_id.hex() == trace_id and r.get("service.name") == service

    assert receiver.wait_for_spans(lambda r, s: ours("tierwise-router")(r, s) and s.name.endswith("/CompleteStream"))
    assert receiver.wait_for_spans(ours("tierwise-classifier")), "no classifier span joined the caller's trace"
    router_spans = {s.name: s for r, s in receiver.spans() if ours("tierwise-router")(r, s)}
    for method in ("Route", "CompleteStream"):
        span = router_spans.get(f"tierwise.v1.RouterService/{method}")
        assert span is not None, f"no router span for {method} in trace {trace_id}: {sorted(router_spans)}"
        assert span.parent_span_id.hex() == PARENT_SPAN_ID, "the router's span is a child of the caller's"
    other_traces = {s.trace_id.hex() for r, s in receiver.spans() if r.get("service.name") == "tierwise-router"
                    and s.name.startswith("tierwise.v1.RouterService/")} - set(TRACE_IDS.values())
    assert not other_traces, "every router call of the examples joined the caller's trace"
