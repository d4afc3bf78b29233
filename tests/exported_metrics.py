"""What the real classifier and router export, on /metrics and over OTLP, after calls that make each series exist:
built once a session (tests/conftest.py's `stack`) for the dashboard's and the alerts' tests."""
from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from typing import NamedTuple

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierwise.v1 import classifier_pb2, classifier_pb2_grpc, router_pb2, router_pb2_grpc

from .otlp_receiver import OtlpReceiver
from .provider_double import Fault, ProviderDouble
from .servers import KEY_ENV, ServiceProcess, router_config, running_router, start_classifier


def scrape(service: ServiceProcess) -> dict[str, list[dict]]:
    """Every sample on the service's /metrics (its address printed at start-up), by name: its labels and, under
    "__value", its value."""
    (line,) = [line for line in service.output if " metrics on http://" in line]
    text = urllib.request.urlopen(line.split(" metrics on ")[1].strip(), timeout=5).read().decode()
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append({**sample.labels, "__value": sample.value})
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples `name` whose labels include `labels` (0 when there is none)."""
    return sum(s["__value"] for s in samples.get(name, []) if labels.items() <= s.items())


def wait_until(check, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.1)
    return check()


def ask(text: str, strategy: str) -> router_pb2.CompleteRequest:
    return router_pb2.CompleteRequest(messages=[router_pb2.Message(role="user", content=text)], strategy=strategy)


class Stack(NamedTuple):
    exported: dict[str, list[dict]]  # both services' /metrics
    answers: list[router_pb2.CompleteResponse]
    otlp: list  # (resource attributes, OTLP metric) the same services sent over OTLP


def exporting_stack(tmp_path_factory) -> Stack:
    """What a classifier and a router export, on /metrics and over OTLP, after the calls that make each dashboard
    series exist: answers at two tiers (one escalated past failing tier-1 providers), shadowed and judged, one
    answered again from the answer cache, a provider's health checks, classifier calls OK and refused, then a decision
    degraded because the classifier has gone."""
    with ProviderDouble() as double, OtlpReceiver() as receiver:
        env = {KEY_ENV: "k", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "60000"}
        classifier = start_classifier("--metrics-listen", "127.0.0.1:0", env=env)
        try:
            # Every answer below tier 3 is shadowed, and tier 2's model, the shadow's judge, finds it worse.
            doc = router_config(double.base_url, strategy="embedding", cache={"max_entries": 16},
                                shadow={"share": 1.0, "judge_tier": 2})
            double.set_reply("t2-a", '{"agree": false}')
            doc["tiers"][2]["providers"][0]["health_check_s"] = 1.0
            with running_router(doc, classifier.address,
                                tmp_path_factory.mktemp("router"), "--metrics-listen", "127.0.0.1:0", env=env,
                                check_exit=False) as router:
                with grpc.insecure_channel(router.address) as channel:
                    stub = router_pb2_grpc.RouterServiceStub(channel)
                    stub.Route(router_pb2.RouteRequest(query="What time does the store close?"), timeout=10)
                    answers = [stub.Complete(ask("Prove that sqrt(2) is irrational.", "embedding"), timeout=10)]
                    repeated = ask("What is 2 + 2?", "heuristic")
                    repeated.temperature = 0.0
                    answers.append(stub.Complete(repeated, timeout=10))
                    assert stub.Complete(repeated, timeout=10).cache_hit, "asked again, answered from the cache"
                    for model in ("t1-a", "t1-b"):
                        double.set_persistent(model, Fault.http_error(500))
                    answers.append(stub.Complete(ask("hello", "heuristic"), timeout=10))
                    assert answers[-1].escalations == 1 and answers[-1].tier == 2
                    with grpc.insecure_channel(classifier.address) as direct:
                        classify = classifier_pb2_grpc.ClassifierServiceStub(direct)
                        classify.ClassifyBatch(classifier_pb2.ClassifyBatchRequest(texts=["hi", "Hi", "Sort a list"]))
                        with pytest.raises(grpc.RpcError):
                            classify.Classify(classifier_pb2.ClassifyRequest(text=" "))
                    from_classifier = scrape(classifier)
                    classifier.stop()
                    degraded = stub.Route(router_pb2.RouteRequest(query="What time does the store close?"), timeout=10)
                    assert degraded.degraded, "with the classifier gone the decision must be the fallback's"
                    judged = lambda: value(scrape(router), "tierwise_router_shadow_total", outcome="disagree") >= 1
                    assert wait_until(judged), "the shadows' verdicts are counted"
                from_router = scrape(router)
        finally:
            classifier.stop()
        # Each service exports its metrics once more as it shuts down: everything counted is in by now.
        return Stack({**from_classifier, **from_router}, answers, receiver.metrics())
