"""The Grafana dashboard (deploy/grafana/dashboards/tierwise.json) reads only what the services export: every metric
its PromQL names, and every label it selects or groups by, is on the real classifier's and router's /metrics after
a few calls. And the classifier's metrics move with the calls it serves.

Both services also send the same metrics over OTLP to the Collector in deploy/compose.yaml, whose Prometheus
exporter must name them as the services' own endpoints do (counters _total, units as suffixes): the services run
here with OTLP export to a real OTLP receiver too, and the names the Collector makes of what arrives are checked
against the dashboard as well. The Collector's own metrics are not on the dashboard.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import grpc
import promql_parser
import pytest
import yaml

from tierwise.v1 import classifier_pb2, classifier_pb2_grpc

from .exported_metrics import Stack, scrape, value
from .servers import router_config, start_classifier

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tierwise.json"
# Grafana's variables in the expressions, as Grafana substitutes them before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s"}


def panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query on the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def parse(expr: str):
    for variable, substitute in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, substitute)
    return promql_parser.parse(expr)


def selectors(expr: str) -> list[tuple[str, dict[str, str], list[str]]]:
    """(metric name, label matchers, labels an enclosing aggregation groups by) of each series selector."""
    found, grouping = [], []

    def enter(node):
        if isinstance(node, promql_parser.AggregateExpr):
            grouping.append(list(node.modifier.labels) if node.modifier else [])
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: m.value for m in node.matchers.matchers}
            name = node.name or matchers.pop("__name__")
            found.append((name, matchers, [label for group in grouping for label in group]))

    def leave(node):
        if isinstance(node, promql_parser.AggregateExpr):
            grouping.pop()

    promql_parser.walk(parse(expr), enter, leave)
    return found


@pytest.fixture(scope="module")
def exported(stack: Stack) -> dict[str, list[dict]]:
    return stack.exported


@pytest.mark.parametrize("title,expr", expressions())
def test_every_dashboard_query_is_valid_promql_over_exported_series(exported, title, expr):
    found = selectors(expr)
    assert found, f"{title}: {expr} selects no series"
    for name, matchers, grouped_by in found:
        assert name in exported, f"{title}: {name} is not exported by either service"
        labels = set().union(*exported[name]) - {"__value"}
        for label, wanted in matchers.items():
            assert label in labels or wanted == "", f"{title}: {name} has no label {label} ({sorted(labels)})"
        for label in grouped_by:
            assert label in labels, f"{title}: groups {name} by {label}, which it does not carry ({sorted(labels)})"


def test_the_dashboard_shows_what_the_issue_asks_for():
    queries = " ".join(expr for _, expr in expressions())
    for needed in ("tierwise_router_requests_total", "tierwise_router_frontier_cost_USD_total",
                   "tierwise_router_escalations_total", "tierwise_router_breaker_state",
                   "tierwise_router_duration_milliseconds_bucket", "tierwise_classifier_duration_milliseconds_bucket",
                   "tierwise_router_degraded_total", "tierwise_classifier_batch_size", "tierwise_classifier_queue_depth",
                   "tierwise_classifier_decisions_total", "tierwise_classifier_cache_lookups_total",
                   "tierwise_router_answer_cache_total", "tierwise_router_health_checks_total",
                   "tierwise_router_shadow_total"):
        assert needed in queries, f"no panel reads {needed}"
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_savings_compare_the_answers_cost_with_their_tokens_at_tier_3_prices(stack):
    exported, answers = stack.exported, stack.answers
    tier3 = router_config("http://unused")["tiers"][2]["price_per_mtok"]
    frontier = sum(a.usage.input_tokens * tier3["input"] + a.usage.output_tokens * tier3["output"]
                   for a in answers) / 1e6
    assert value(exported, "tierwise_router_frontier_cost_USD_total") == pytest.approx(frontier)
    spent = value(exported, "tierwise_router_cost_USD_total") - value(exported, "tierwise_router_cost_USD_total",
                                                                       purpose="shadow")
    assert spent == pytest.approx(sum(a.cost_usd for a in answers))
    assert 0 < spent < frontier, "an answer at tier 2 costs less than at tier 3"


def test_the_quality_estimate_reads_requests_and_verdicts_by_the_same_tiers(stack):
    """The panel's arithmetic on what the router exported: every answer below tier 3 (one from the cache) was judged
    worse than tier 3's, so the estimate is the share of answers given at tier 3."""
    exported = stack.exported
    answered = {t: value(exported, "tierwise_router_requests_total", tier=t) - value(
        exported, "tierwise_router_requests_total", tier=t, method="Route") for t in ("1", "2", "3")}
    verdicts = {t: (value(exported, "tierwise_router_shadow_total", tier=t, outcome="agree"),
                    value(exported, "tierwise_router_shadow_total", tier=t, outcome="disagree")) for t in ("1", "2")}
    worse = sum(answered[t] * d / (a + d) for t, (a, d) in verdicts.items() if a + d)
    assert all(a + d for a, d in verdicts.values()), "both tiers below 3 were judged"
    assert 1 - worse / sum(answered.values()) == pytest.approx(answered["3"] / sum(answered.values()))
    below = sum(a.tier < 3 for a in stack.answers) + 1  # and the cache's answer, at tier 1
    assert (answered["1"] + answered["2"], answered["3"]) == (below, sum(a.tier == 3 for a in stack.answers))


# How an OpenTelemetry Collector's prometheus exporter (add_metric_suffixes: true, deploy/otel-collector.yaml) names
# an OTLP metric: characters outside [a-zA-Z0-9_:] become _, the unit is appended as a word (annotations in braces
# dropped), a monotonic sum gets _total, a histogram is served as _bucket, _sum and _count.
COLLECTOR_UNITS = {"ms": "milliseconds", "s": "seconds", "By": "bytes", "1": ""}


def collector_names(metric) -> set[str]:
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", metric.name)
    unit = COLLECTOR_UNITS.get(metric.unit, re.sub(r"\{[^}]*\}", "", metric.unit))
    if unit and not name.endswith(f"_{unit}"):
        name += f"_{unit}"
    kind = metric.WhichOneof("data")
    if kind == "sum" and metric.sum.is_monotonic:
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_{part}" for part in ("bucket", "sum", "count")}
    return {name}


def test_metrics_through_the_collector_have_the_dashboards_names(stack: Stack):
    """Compose's Prometheus reads both services' metrics from the Collector, which got them over OTLP: the names
    it makes of them are the names on the services' own endpoints, so every dashboard query finds them there."""
    by_service = defaultdict(set)
    for resource, metric in stack.otlp:
        by_service[resource["service.name"]] |= collector_names(metric)
    assert set(by_service) == {"tierwise-classifier", "tierwise-router"}
    through_collector = set().union(*by_service.values())
    ours = {name for name in stack.exported if name.startswith("tierwise_")}
    assert ours <= through_collector, f"only on /metrics: {sorted(ours - through_collector)}"
    for title, expr in expressions():
        for name, _, _ in selectors(expr):
            assert name in through_collector, f"{title}: {name} does not arrive through the Collector"


def test_a_name_the_services_do_not_export_is_caught(exported):
    """Negative control: the check above fails on a metric no service exports."""
    ((name, _, _),) = selectors("sum(rate(tierwise_router_requestz_total[$__rate_interval]))")
    assert name == "tierwise_router_requestz_total" and name not in exported


def test_classifier_metrics_move_with_the_calls_it_serves(tmp_path):
    classifier = start_classifier("--metrics-listen", "127.0.0.1:0")
    try:
        before = scrape(classifier)
        with grpc.insecure_channel(classifier.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            # Refused first: an aborted call's status reaches the caller before the server has finished with the
            # call (and counted it); the calls after it are answered only once it has.
            with pytest.raises(grpc.RpcError) as refused:
                stub.Classify(classifier_pb2.ClassifyRequest(text="hi", head="no-such-head"), timeout=10)
            heads = [h.name for h in stub.ListHeads(classifier_pb2.ListHeadsRequest(), timeout=10).heads]
            tiers = [stub.Classify(classifier_pb2.ClassifyRequest(text=text, head=heads[0]), timeout=10).tier
                     for text in ("What time does the store close?", "What time does the store close?")]
            batch = stub.ClassifyBatch(classifier_pb2.ClassifyBatchRequest(
                texts=["Translate 'thank you' into French.", "Prove there are infinitely many primes."]), timeout=10)
        after = scrape(classifier)
    finally:
        classifier.stop()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    calls = "tierwise_classifier_requests_total"
    assert moved(calls, method="Classify", code="OK") == 2 and moved(calls, method="ClassifyBatch", code="OK") == 1
    assert moved(calls, method="Classify", code="INVALID_ARGUMENT") == 1
    assert moved(calls, method="ListHeads", code="OK") == 1
    assert moved("tierwise_classifier_duration_milliseconds_count", method="Classify") == 3
    # Each head's tier mix: the four texts decided, under the head that decided them.
    decided = [*tiers, *(r.tier for r in batch.results)]
    for tier in set(decided):
        assert moved("tierwise_classifier_decisions_total", head=heads[0], tier=str(tier)) == decided.count(tier)
    assert moved("tierwise_classifier_decisions_total") == len(decided)
    # The second text is the first again: a cache hit. The others were misses, embedded in encoder runs.
    assert moved("tierwise_classifier_cache_lookups_total", result="hit") == 1
    assert moved("tierwise_classifier_cache_lookups_total", result="miss") == 3
    assert moved("tierwise_classifier_batch_size_sum") == 3 and moved("tierwise_classifier_batch_size_count") >= 2
    assert value(after, "tierwise_classifier_queue_depth") == 0 and value(after, "tierwise_classifier_in_flight") == 0


def test_a_bad_or_taken_metrics_address_is_a_clean_error(tmp_path):
    config = tmp_path / "tierwise.yaml"
    config.write_text(yaml.safe_dump(router_config("http://127.0.0.1:9")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        for module, args, says in (
                ("classifier_service", ["--metrics-listen", "9464"], "--metrics-listen: '9464' is not HOST:PORT"),
                ("router_service", ["--config", str(config), "--metrics-listen", "localhost"], "is not HOST:PORT"),
                ("router_service", ["--config", str(config), "--metrics-listen", busy], f"cannot serve metrics on {busy}"),
                ("router_service", ["--config", str(config), "--metrics-listen", busy, "--metrics-port", "1"],
                 "--metrics-listen or --metrics-port, not both")):
            proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 2 and says in proc.stdout + proc.stderr, (module, args, proc.stdout, proc.stderr)
            assert "Traceback" not in proc.stdout + proc.stderr
