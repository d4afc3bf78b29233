"""examples/local.yaml, the README's local set-up, is a valid config that answers through a keyless server."""
from __future__ import annotations

import grpc
import yaml

from router_service.config import load
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import ProviderDouble
from .servers import ROOT, running_router

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


def test_local_example_answers_through_an_openai_compatible_server_without_a_key(classifier, tmp_path):
    doc = yaml.safe_load(LOCAL.read_text())
    with ProviderDouble() as server:
        for tier in doc["tiers"]:
            for provider in tier["providers"]:
                provider["base_url"] = server.base_url  # the same server, on a free port instead of Ollama's
        with running_router(doc, classifier.address, tmp_path) as router:
            with grpc.insecure_channel(router.address) as channel:
                reply = router_pb2_grpc.RouterServiceStub(channel).Complete(pb.CompleteRequest(
                    messages=[pb.Message(role="user", content="What time does the store close?")]), timeout=30)
    models = {t["tier"]: t["providers"][0]["model"] for t in doc["tiers"]}
    assert reply.content and reply.model == models[reply.tier]
    assert [r.model for r in server.requests if r.path.endswith("/chat/completions")] == [reply.model]
