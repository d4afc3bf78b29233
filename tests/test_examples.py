"""examples/local.yaml, the README's local set-up, is a valid config that answers through a keyless server, and
the README's first requests (the `openai` SDK over HTTP, grpcurl over gRPC) run as written against it."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess

import grpc
import yaml

from router_service.config import load
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import ProviderDouble
from .servers import ROOT, http_address, running_router

LOCAL = ROOT / "examples" / "local.yaml"
OLLAMA = "http://127.0.0.1:11434/v1"


def test_local_example_loads_with_three_keyless_local_tiers():
    cfg = load(LOCAL)
    providers = [p for t in sorted(cfg.tiers) for p in cfg.tiers[t].providers]
    assert sorted(cfg.tiers) == [1, 2, 3]
    assert [p.base_url for p in providers] == [OLLAMA] * 3
    assert all(p.api_key_env == "" for p in providers)
    assert len({p.model for p in providers}) == 3
    prices = [cfg.tiers[t].cost(1_000_000, 1_000_000) for t in (1, 2, 3)]
    assert 0 < prices[0] < prices[1] < prices[2]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def test_readme_first_requests_answer_through_the_local_example(classifier, tmp_path):
    doc = yaml.safe_load(LOCAL.read_text())
    models = {t["tier"]: t["providers"][0]["model"] for t in doc["tiers"]}
    sdk_code = next(b for b in readme_blocks("python") if "chat.completions.create" in b)
    grpcurl = next(b for b in readme_blocks("bash") if "grpcurl" in b)
    with ProviderDouble() as server:
        for tier in doc["tiers"]:
            for provider in tier["providers"]:
                provider["base_url"] = server.base_url  # the same kind of server, on a free port instead of Ollama's
        with running_router(doc, classifier.address, tmp_path, "--http-listen", "127.0.0.1:0") as router:
            http = http_address(router)
            with grpc.insecure_channel(router.address) as channel:
                reply = router_pb2_grpc.RouterServiceStub(channel).Complete(pb.CompleteRequest(
                    messages=[pb.Message(role="user", content="What is 2 + 2?")]), timeout=30)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(sdk_code.replace("127.0.0.1:8080", http), {})  # noqa: S102 - the README's own snippet
            command = shlex.split(grpcurl.replace("\\\n", " ").replace("127.0.0.1:50052", router.address))
            decision = json.loads(subprocess.run([str(ROOT / command[0]), *command[1:]], capture_output=True,
                                                 text=True, check=True, timeout=30).stdout)
    assert reply.content and reply.model == models[reply.tier]
    answered_by, _, content = printed.getvalue().strip().partition(" ")
    assert answered_by in models.values() and content
    assert decision["tier"] in (1, 2, 3) and decision["model"] == models[decision["tier"]] and decision["reason"]
    asked = [r.model for r in server.requests if r.path.endswith("/chat/completions")]
    assert asked == [reply.model, answered_by]
