"""The Node, Go and Java clients in clients/ against the real router: Route and CompleteStream over the wire, the
caller's W3C trace context carried into the router's and the classifier's spans, and the packages' build files
(npm package, Go module, Maven pom).

clients/build.sh installs each toolchain (apt, npm ci), generates the stubs from protos/ and builds the
examples, cached by stamp files. A language is skipped only when build.sh reports (exit status 3) that its
toolchain could not be installed; any other build failure fails the test."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from xml.etree import ElementTree

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
def test_example_client_asks_for_a_quality_target(lang, builds, stack):
    """--quality-target reaches the router in Route and CompleteStream: the head's 0.99 tradeoff sends a query to
    tier 3 that its default target answers at tier 1 (margins: tests/test_quality_target.py's QUERY)."""
    run = built(builds, lang)
    double, router = stack
    double.reset()
    query = "Who painted the Mona Lisa?"
    plain = run_client(run, router.address, "--strategy", "embedding", query)
    held = run_client(run, router.address, "--strategy", "embedding", "--quality-target", "0.99", query)
    assert (plain["Route"]["tier"], plain["CompleteStream"]["decision"]["tier"]) == (1, 1)
    assert (held["Route"]["tier"], held["CompleteStream"]["decision"]["tier"]) == (3, 3)
    assert "calibrated for quality 0.99" in held["Route"]["reason"]


@pytest.mark.parametrize("lang", LANGS)
def test_example_client_refuses_bad_arguments_with_status_2(lang, builds):
    """Every example: a bad argument is a usage error (exit 2) before any call, alike in each language."""
    run = built(builds, lang)
    for args in (["--timeout", "0"], ["--timeout", "1e10"], ["--quality-target", "1.5"], ["--quality-target", "0"]):
        out = subprocess.run([str(run), "--address", "127.0.0.1:1", *args, "hi"], capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_S, env=client_env(), stdin=subprocess.DEVNULL)
        assert out.returncode == 2, (args, out.returncode, out.stderr)


@pytest.mark.parametrize("lang", LANGS)
def test_example_client_reports_the_grpc_status(lang, builds, stack):
    run = built(builds, lang)
    _, router = stack
    out = subprocess.run([str(run), "--address", router.address, "--strategy", "no-such-strategy", "hi"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=client_env(),
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 1 and out.stdout == "", out
    assert "INVALID_ARGUMENT" in out.stderr and "unknown strategy" in out.stderr, out.stderr


NODE_COMPLETE = """
const { RouterClient } = require(process.argv[1]);
const tw = new RouterClient(process.argv[2], { timeoutS: 20 });
tw.complete("hi there", { strategy: "heuristic", maxTokens: 30, topP: 0.5, stop: "END", seed: 9,
                          presencePenalty: 0.25, frequencyPenalty: -0.5, responseFormat: { type: "json_object" },
                          logprobs: true, topLogprobs: 2 })
  .then((reply) => {
    console.log(JSON.stringify({ content: reply.content, tokens: reply.logprobs.map((t) => t.token).join("") }));
    tw.close();
  })
  .catch((err) => { console.error(err.message); process.exit(1); });
"""


def node_library(builds, stack, script: str) -> dict:
    """What `script`, run by node with the built library and the router's address, printed as JSON."""
    run = built(builds, "node")
    double, router = stack
    double.reset()
    out = subprocess.run(["node", "-e", script, str(run.parent / "src" / "index.js"), router.address],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=client_env(),
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_node_library_sends_the_generation_options(builds, stack):
    double = stack[0]
    assert node_library(builds, stack, NODE_COMPLETE) == {"content": "answer from t1-a: 2 words",
                                                          "tokens": "answer from t1-a: 2 words"}
    [sent] = [r.body for r in double.requests_for("t1-a")]
    assert {k: sent.get(k) for k in ("max_tokens", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                                     "response_format", "logprobs", "top_logprobs")} == {
        "max_tokens": 30, "top_p": 0.5, "stop": ["END"], "seed": 9, "presence_penalty": 0.25,
        "frequency_penalty": -0.5, "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 2}


NODE_ONCE = """
const { RouterClient } = require(process.argv[1]);
const tw = new RouterClient(process.argv[2], { timeoutS: 20 });
const ask = (options) => tw.complete("hi there", { strategy: "heuristic", ...options });
(async () => {
  const kept = [await ask({ idempotencyKey: "node-once-1" }), await ask({ idempotencyKey: "node-once-1" })];
  const fresh = [await ask({}), await ask({})];
  console.log(JSON.stringify({ kept: kept.map((r) => r.content), fresh: fresh.map((r) => r.content) }));
  tw.close();
})().catch((err) => { console.error(err.message); process.exit(1); });
"""


def test_node_library_sends_one_idempotency_key_per_complete(builds, stack):
    """A key given is sent (the router answers its second use from the first); without one, each call has its
    own, which every retry of that call sends (grpc-js resends a call's metadata)."""
    double = stack[0]
    out = node_library(builds, stack, NODE_ONCE)
    assert out["kept"][0] == out["kept"][1] and out["fresh"][0] == out["fresh"][1]
    assert len(double.requests_for("t1-a")) == 3, "the kept answer's second call asked no provider"


NODE_TOOLS = """
const { RouterClient } = require(process.argv[1]);
const tw = new RouterClient(process.argv[2], { timeoutS: 20 });
const weather = { type: "function", function: { name: "get_weather", parameters: { type: "object" } } };
tw.complete("hi there", { strategy: "heuristic", tools: [weather], toolChoice: "required", parallelToolCalls: false })
  .then((reply) => {
    console.log(JSON.stringify({ finish: reply.finish_reason, calls: reply.tool_calls }));
    tw.close();
  })
  .catch((err) => { console.error(err.message); process.exit(1); });
"""


def test_node_library_offers_tools_and_reads_the_calls(builds, stack):
    double = stack[0]
    assert node_library(builds, stack, NODE_TOOLS) == {"finish": "tool_calls", "calls": [
        {"id": "call_0_get_weather", "name": "get_weather", "arguments": '{"words": 2}'}]}
    [sent] = [r.body for r in double.requests_for("t1-a")]
    assert (sent["tool_choice"], sent["parallel_tool_calls"], sent["tools"][0]["function"]["name"]) == (
        "required", False, "get_weather")


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


# ------------------------------------------------------------------------------------- the packages' build files
# What a user builds with the public registries (npm, the Go module proxy, Maven Central); the proxy and Maven
# Central are not reachable here, so their files are checked for what can be checked offline.


def test_node_package_is_publishable_and_packs_the_built_library(builds):
    built(builds, "node")
    package = json.loads((ROOT / "clients" / "node" / "package.json").read_text())
    assert "private" not in package and package["name"] == "@tierwise/client" and package["version"]
    out = subprocess.run(["npm", "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=ROOT / "clients" / "node",
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    files = {f["path"] for f in json.loads(out.stdout)[0]["files"]}
    for path in (package["main"], package["types"], *package["bin"].values(), "proto/tierwise/v1/router.proto",
                 "build/gen/tierwise/v1/RouteResponse.d.ts", "README.md"):
        assert path in files, f"{path} not in the package: {sorted(files)}"
    assert not any(f.startswith(("src/", "gen/", "node_modules/", "build/run", "build/.")) for f in files), files


def test_node_package_installs_into_a_new_project_and_routes(builds, stack, tmp_path):
    """`npm install` of the packed tarball (its dependencies from the npm registry), then the library's
    RouterClient from plain JavaScript against the real router."""
    built(builds, "node")
    _, router = stack
    node = ROOT / "clients" / "node"
    packed = subprocess.run(["npm", "pack", "--ignore-scripts", "--json", "--pack-destination", str(tmp_path)],
                            cwd=node, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert packed.returncode == 0, packed.stderr
    tarball = tmp_path / json.loads(packed.stdout)[0]["filename"]
    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "version": "1.0.0", "private": true}')
    install = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", str(tarball)],
                             cwd=project, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if install.returncode != 0 and "ENOTFOUND" in install.stderr + install.stdout:
        pytest.skip(f"npm registry unreachable: {install.stderr[-300:]}")
    assert install.returncode == 0, install.stdout + install.stderr
    script = """
const { RouterClient } = require("@tierwise/client");
(async () => {
  const tw = new RouterClient(process.argv[1], { timeoutS: 20 });
  const decision = await tw.route("What time does the store close?", { strategy: "heuristic" });
  const pieces = [];
  let summary = null;
  for await (const e of tw.stream("hi there", { strategy: "heuristic" })) {
    if (e.type === "delta") pieces.push(e.text); else if (e.type === "summary") summary = e.summary;
  }
  tw.close();
  console.log(JSON.stringify({ tier: decision.tier, text: pieces.join(""), content: summary.content }));
})().catch((e) => { console.error(e); process.exit(1); });
"""
    out = subprocess.run(["node", "-e", script, router.address], cwd=project, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S, env=client_env())
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["tier"] in (1, 2, 3) and reply["text"] == reply["content"] == "answer from t1-a: 2 words"


def test_go_module_file_parses_and_requires_grpc_and_protobuf(builds, tmp_path):
    built(builds, "go")
    out = subprocess.run(["go", "mod", "edit", "-json"], cwd=ROOT / "clients" / "go", capture_output=True,
                         text=True, timeout=RUN_TIMEOUT_S, env={**os.environ, "GOFLAGS": "", "GOPROXY": "off"})
    assert out.returncode == 0, out.stderr
    module = json.loads(out.stdout)
    assert module["Module"]["Path"] == "github.com/tierwise/tierwise/clients/go" and module["Go"]
    assert {r["Path"] for r in module["Require"]} >= {"google.golang.org/grpc", "google.golang.org/protobuf"}
    # The checked-in stubs are what the generator makes from protos/ today.
    regen = subprocess.run(["bash", str(BUILD_SCRIPT), "go-stubs", str(tmp_path)], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)
    assert regen.returncode == 0, regen.stderr
    checked_in = ROOT / "clients" / "go" / "tierwisev1"
    fresh = sorted(p.name for p in (tmp_path / "tierwisev1").iterdir())
    assert fresh == sorted(p.name for p in checked_in.iterdir()), "run `clients/build.sh go-stubs`"
    for name in fresh:
        assert (tmp_path / "tierwisev1" / name).read_text() == (checked_in / name).read_text(), \
            f"clients/go/tierwisev1/{name} is stale: run `clients/build.sh go-stubs`"


def test_java_build_file_declares_grpc_protobuf_and_the_protoc_plugin():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ElementTree.parse(ROOT / "clients" / "java" / "pom.xml").getroot()
    props = {p.tag.split("}")[1]: p.text for p in pom.find("m:properties", ns)}

    def value(element, tag: str) -> str:
        """The element's text with the pom's own properties filled in."""
        text = element.findtext(f"m:{tag}", default="", namespaces=ns)
        return re.sub(r"\$\{([\w.]+)\}", lambda m: props.get(m[1], m[0]), text)

    deps = {(value(d, "groupId"), value(d, "artifactId")): value(d, "version")
            for d in pom.findall("m:dependencies/m:dependency", ns)}
    grpc_version = props["grpc.version"]
    for artifact in ("grpc-stub", "grpc-protobuf", "grpc-netty-shaded"):
        assert deps.get(("io.grpc", artifact)) == grpc_version, deps
    assert deps.get(("com.google.protobuf", "protobuf-java")) == props["protobuf.version"]
    [plugin] = [p for p in pom.findall("m:build/m:plugins/m:plugin", ns)
                if value(p, "artifactId") == "protobuf-maven-plugin"]
    config = plugin.find("m:configuration", ns)
    assert f"protoc-gen-grpc-java:{grpc_version}" in value(config, "pluginArtifact")
    assert f"protoc:{props['protobuf.version']}" in value(config, "protocArtifact")
    proto_root = Path(value(config, "protoSourceRoot").replace("${project.basedir}", str(ROOT / "clients" / "java")))
    assert (proto_root / "tierwise" / "v1" / "router.proto").is_file()
    sources = ROOT / "clients" / "java" / pom.findtext("m:build/m:sourceDirectory", namespaces=ns)
    assert (sources / "dev" / "tierwise" / "example" / "Example.java").is_file()
