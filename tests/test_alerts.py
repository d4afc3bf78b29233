"""The alerts (deploy/helm/tierwise/files/prometheus-rules.yaml) read only what the services export, and the
router's call counts they rest on count every call by its final code, over gRPC and HTTP.

Every expression is parsed, and each metric it selects, each label it filters or groups by, and each label its
annotations name must be on the real services' /metrics: the dashboard's classifier-and-router stack
(tests/test_dashboard.py), plus a router with API keys, a shadow and the HTTP API, after calls that end answered,
refused at the door, invalid and unavailable. Label values it matches (gRPC codes, outcomes, methods) must be ones
the services write.
"""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import grpc
import pytest
import yaml

from tierwise.v1 import router_pb2, router_pb2_grpc

from .provider_double import Fault, ProviderDouble
from .servers import KEY_ENV, router_config, running_router
from .exported_metrics import ask, scrape, value, wait_until
from .test_dashboard import ROOT, selectors
from .test_http_api import http_address

RULES = ROOT / "deploy" / "helm" / "tierwise" / "files" / "prometheus-rules.yaml"
KEY = "tw-alerts-5d1e8a2c97b3f046"
METHODS = {"Route", "Complete", "CompleteStream", "ChatCompletions", "ChatCompletionsStream", "Classify",
           "ClassifyBatch", "ListHeads"}
# The values the services write for the labels the alerts match on (docs/observability.md).
VALUES = {"code": set(grpc.StatusCode.__members__), "method": METHODS,
          ("tierwise_router_auth_total", "outcome"): {"ok", "unauthenticated", "rate_limited", "spend_limited"},
          ("tierwise_router_shadow_total", "outcome"): {"agree", "disagree", "labelled", "failed", "dropped_busy",
                                                         "over_budget", "cancelled_shutdown"}}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> dict[str, list[dict]]:
    """A router with API keys, a shadow comparing every cheap answer, and the HTTP API, after: Route and Complete
    answered, a Complete without a key, one invalid, one whose every provider fails, and an HTTP completion
    answered and two refused (one asking for a stream): its /metrics."""
    workdir = tmp_path_factory.mktemp("keyed")
    keys = workdir / "keys"
    keys.write_text(f"{KEY} id=alerts\n")
    with ProviderDouble() as double:
        double.set_reply("t1-a", '{"agree": true}')  # the shadow's judge (and the cheapest tier's answer)
        doc = router_config(double.base_url, strategy="cheapest", shadow={"share": 1.0})
        with running_router(doc, "127.0.0.1:1", workdir, "--api-keys-file", str(keys), "--metrics-listen",
                            "127.0.0.1:0", "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
            authorized = (("authorization", f"Bearer {KEY}"),)
            with grpc.insecure_channel(router.address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                stub.Route(router_pb2.RouteRequest(query="hello"), metadata=authorized, timeout=10)
                stub.Complete(ask("hello", "cheapest"), metadata=authorized, timeout=10)
                assert agreed(router, 1), "its shadow runs in the background; done before the providers fail"
                for metadata, request, code in (
                        ((), ask("hello", "cheapest"), grpc.StatusCode.UNAUTHENTICATED),
                        (authorized, ask("hello", "no-such-strategy"), grpc.StatusCode.INVALID_ARGUMENT)):
                    with pytest.raises(grpc.RpcError) as err:
                        stub.Complete(request, metadata=metadata, timeout=10)
                    assert err.value.code() == code
                for model in ("t1-a", "t1-b", "t2-a", "t3-a"):
                    double.set_persistent(model, Fault.http_error(500))
                with pytest.raises(grpc.RpcError) as err:
                    stub.Complete(ask("hello", "cheapest"), metadata=authorized, timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                for model in ("t1-a", "t1-b", "t2-a", "t3-a"):
                    double.set_persistent(model, None)
            url = f"http://{http_address(router)}/v1/chat/completions"
            for body, status in (({"model": "tierwise/cheapest", "messages": [{"role": "user", "content": "hi"}]}, 200),
                                 ({"model": "tierwise", "messages": []}, 400),
                                 ({"model": "tierwise", "messages": [{"role": "user", "content": "hi"}],
                                   "stream": True, "temperature": "hot"}, 400)):  # refused as the body is read
                request = urllib.request.Request(url, json.dumps(body).encode(),
                                                 {"authorization": f"Bearer {KEY}",
                                                  "content-type": "application/json"})
                try:
                    got = urllib.request.urlopen(request, timeout=10).status
                except urllib.error.HTTPError as err:
                    got = err.code
                assert got == status
            assert agreed(router, 2), "the HTTP answer's shadow too"
            return scrape(router)


def agreed(router, shadows: int) -> bool:
    """Whether `shadows` shadow comparisons have agreed, waiting for them a while."""
    return wait_until(lambda: value(scrape(router), "tierwise_router_shadow_total", outcome="agree") >= shadows)


@pytest.fixture(scope="module")
def exported(stack, keyed) -> dict[str, list[dict]]:
    merged = {name: list(samples) for name, samples in stack.exported.items()}
    for name, samples in keyed.items():
        merged.setdefault(name, []).extend(samples)
    return merged


def test_router_calls_are_counted_by_final_code_over_grpc_and_http(keyed):
    calls = "tierwise_router_calls_total"
    assert value(keyed, calls, method="Route", code="OK") == 1
    assert value(keyed, calls, method="Complete", code="OK") == 1
    assert value(keyed, calls, method="Complete", code="UNAUTHENTICATED") == 1, "refused at the door, counted too"
    assert value(keyed, calls, method="Complete", code="INVALID_ARGUMENT") == 1
    assert value(keyed, calls, method="Complete", code="UNAVAILABLE") == 1, "every provider failed"
    assert value(keyed, calls, method="ChatCompletions", code="OK") == 1
    assert value(keyed, calls, method="ChatCompletions", code="INVALID_ARGUMENT") == 1
    assert value(keyed, calls, method="ChatCompletionsStream", code="INVALID_ARGUMENT") == 1, "refused as it asked"
    assert value(keyed, calls) == 8
    assert value(keyed, "tierwise_router_duration_milliseconds_count", method="Route") == 1, "Route's latency too"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_alert_reads_exported_series(exported, rule):
    found = selectors(rule["expr"])
    assert found, f"{rule['alert']} selects no series"
    grouped = set()
    for name, matchers, grouped_by in found:
        assert name in exported, f"{rule['alert']}: {name} is not exported by either service"
        labels = set().union(*exported[name]) - {"__value"}
        for label, wanted in matchers.items():
            assert label in labels, f"{rule['alert']}: {name} has no label {label} ({sorted(labels)})"
            known = VALUES.get((name, label), VALUES.get(label))
            if known is not None:
                assert set(wanted.split("|")) <= known, f"{rule['alert']}: {label}={wanted!r}: not one of {known}"
        for label in grouped_by:
            assert label in labels, f"{rule['alert']}: groups {name} by {label}, which it does not carry"
        grouped |= set(grouped_by)
    text = " ".join(rule["annotations"].values())
    for label in re.findall(r"\$labels\.(\w+)", text):
        assert label in grouped, f"{rule['alert']}: its annotations name {label}, which the expression drops"


def test_every_alert_says_how_bad_and_what_to_do():
    seen = set()
    for rule in rules():
        assert rule["alert"].startswith("Tierwise") and rule["alert"] not in seen
        seen.add(rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, rule["alert"]
    assert {"TierwiseRouterCallsFailing", "TierwiseDecisionsDegraded", "TierwiseProviderBreakerOpen",
            "TierwiseClassifierCallsFailing", "TierwiseClassifierOverloaded", "TierwiseShadowBudgetSpent",
            "TierwiseQualityBelowTarget"} <= seen


def test_a_misspelt_metric_or_code_is_caught(exported):
    """Negative controls for the check above."""
    ((name, matchers, _),) = selectors('sum(rate(tierwise_router_calls_total{code="UNAVAILIBLE"}[5m]))')
    assert name in exported and not set(matchers["code"].split("|")) <= VALUES["code"]
    ((name, _, _),) = selectors("sum(rate(tierwise_router_call_total[5m]))")
    assert name not in exported
