"""Strategies in-process: the judge against real providers (the HTTP test double), composition, gates."""
from __future__ import annotations

import asyncio

import pytest
import yaml

from router_service.chains import build_chains
from router_service.config import parse
from router_service.dispatch import Dispatcher
from router_service.gates import HeuristicGate, SurfaceGate
from router_service.strategies import RouteInput, Strategies
from router_service.strategies.heuristic import heuristic_score
from router_service.strategies.judge import parse_tier
from router_service.telemetry import RouterMetrics

from .provider_double import Fault, ProviderDouble
from .servers import KEY_ENV, router_config


def strategies_for(doc: dict) -> Strategies:
    cfg = parse(yaml.safe_load(yaml.safe_dump(doc)))
    return Strategies(deps={"config": cfg, "classifier": None, "chains": build_chains(cfg, RouterMetrics())})


@pytest.mark.parametrize("bias, expected", [(0, 2), (1, 3), (2, 3)])
def test_judge_bias_moves_toward_the_higher_tier(monkeypatch, bias, expected):
    monkeypatch.setenv(KEY_ENV, "k")
    with ProviderDouble() as double:
        double.set_reply("t1-a", '{"tier": 2}')
        judge = strategies_for(router_config(double.base_url, judge={"tier": 1, "bias": bias})).get("judge")
        decision = asyncio.run(judge.decide(RouteInput("hi")))
    assert decision.tier == expected and not decision.degraded


def test_a_negative_judge_bias_moves_toward_cost_and_stops_at_tier_1(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    with ProviderDouble() as double:
        judge = strategies_for(router_config(double.base_url, judge={"tier": 1, "bias": -1})).get("judge")

        async def rated(verdict: int):
            double.set_reply("t1-a", f'{{"tier": {verdict}}}')
            return await judge.decide(RouteInput("hi"))

        async def both():  # one event loop: the chain's HTTP client belongs to it
            return await rated(3), await rated(1)

        high, low = asyncio.run(both())
    assert high.tier == 2 and low.tier == 1 and low.reason.endswith("rated tier 1 - bias 1")


def test_the_judges_call_is_part_of_the_decisions_cost_even_without_a_verdict(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    with ProviderDouble() as double:
        judge = strategies_for(router_config(double.base_url, judge={"tier": 1})).get("judge")

        async def three():  # one event loop: the chain's HTTP client belongs to it
            double.set_reply("t1-a", '{"tier": 2}')
            rated = await judge.decide(RouteInput("hi"))
            double.set_reply("t1-a", "a medium one, I think")
            fallen = await judge.decide(RouteInput("hi"))
            for model in ("t1-a", "t1-b"):
                double.set_persistent(model, Fault.http_error(500))
            return rated, fallen, await judge.decide(RouteInput("hi"))

        rated, fallen, failed = asyncio.run(three())
    assert rated.cost_usd > 0 and rated.cost_tier == 1 and not rated.degraded
    assert fallen.degraded and fallen.cost_usd > 0 and fallen.cost_tier == 1, "a reply without a verdict is billed"
    assert failed.degraded and failed.cost_usd == 0, "no reply, nothing billed"


@pytest.mark.parametrize("reply, tier", [('{"tier": 1}', 1), (' {"tier":3}\n', 3), ('```json\n{"tier": 2}\n```', 2)])
def test_parse_tier_accepts_json_verdicts(reply, tier):
    assert parse_tier(reply) == tier


@pytest.mark.parametrize("reply", ["2", '{"tier": 4}', '{"tier": "2"}', '{"tier": true}', "{not json}", "",
                                   'Verdict: {"tier": 3}.', '{"tier": 2, "why": "x"}'])
def test_parse_tier_rejects_everything_else(reply):
    with pytest.raises(ValueError):
        parse_tier(reply)


def test_composition_names_resolve_and_unknown_compositions_do_not(monkeypatch):
    with ProviderDouble() as double:
        strategies = strategies_for(router_config(double.base_url))
        assert strategies.get("heuristic+cascade").label == "heuristic+cascade"
        assert strategies.get("judge+cascade").start_name == "judge"
        cheapest = strategies.get("cheapest+cascade")
        long_question = "Prove the theorem step by step, then design a rigorous algorithm. " * 20
        assert asyncio.run(cheapest.decide(RouteInput(long_question))).tier == 1
        for bad in ("heuristic+embedding", "nope+cascade", "cascade+"):
            with pytest.raises(KeyError):
                strategies.get(bad)


def test_heuristic_rules():
    assert heuristic_score("What is the capital of France?")[0] == 0
    score, fired = heuristic_score("```python\ndef f(x):\n    return x\n```\nOptimize this algorithm. Why? How?")
    assert score >= 3 and "code" in fired


@pytest.mark.parametrize("answer, accept", [
    ("Paris.", True), ("", False), ("I cannot help with that request.", False),
    ("As an AI, I am not sure.", False), ("The answer is 42 because of the reasons below.", True)])
def test_surface_and_heuristic_gates(answer, accept):
    for gate in (SurfaceGate(), HeuristicGate()):
        assert gate.check("What is the capital of France?", answer).accept is accept
        assert not gate.check("q", "Paris", finish_reason="length").accept


def test_only_the_seeds_gate_rejects_a_short_answer_to_a_long_question():
    question = "Read the passage and pick the right option. " * 10 + "Which option is right: A, B, C or D?"
    assert SurfaceGate().check(question, "B").accept
    verdict = HeuristicGate().check(question, "B")
    assert not verdict.accept and verdict.reason.startswith("1-word answer")


def test_the_verify_gates_provider_attempts_are_reported_for_spans_and_metrics(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    with ProviderDouble() as double:
        double.set_reply("t2-a", '{"acceptable": true}')
        double.script("t2-a", Fault.http_error(500))  # the verifier's first attempt fails, its retry rules
        strategies = strategies_for(router_config(double.base_url, cascade={"start": "cheapest", "gate": "verify",
                                                                             "verifier_tier": 2}))
        seen = []
        dispatcher = Dispatcher(strategies.deps["config"], strategies.deps["chains"])
        result = asyncio.run(dispatcher.complete(
            [{"role": "user", "content": "What is 17 times 23?"}], 1, gate=strategies.get("cascade").gate,
            on_attempt=lambda tier, attempt, purpose: seen.append((tier, attempt.provider, str(attempt.outcome), purpose))))
    assert result.tier == 1 and result.completion.provider == "t1-a"
    assert seen == [(1, "t1-a", "ok", "answer"), (2, "t2-a", "error", "verify"), (2, "t2-a", "ok", "verify")]


def test_cascade_max_tier_holds_the_start_too_and_says_so(monkeypatch):
    with ProviderDouble() as double:
        strategies = strategies_for(router_config(double.base_url, cascade={"start": "heuristic", "gate": "surface",
                                                                            "max_tier": 2}))
        decision = asyncio.run(strategies.get("tier3+cascade").decide(RouteInput("hi")))
    assert decision.tier == 2 and "start at tier 3" in decision.reason
    assert "held at tier 2 by cascade.max_tier" in decision.reason
