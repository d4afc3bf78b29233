"""RouterService.Complete / CompleteStream end to end: real classifier, real router, providers replaced
by the OpenAI-compatible test double (tests/provider_double.py) on 127.0.0.1 with scripted faults."""
from __future__ import annotations

import json
import math
import re
import socket
import time
import urllib.request

import grpc
import pytest

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .provider_double import Fault, refused_base_url, unused_port
from .servers import KEY_ENV, router_config, running_router, start_classifier


@pytest.fixture(scope="module")
def classifier():
    service = start_classifier()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def router(double, classifier, tmp_path_factory):
    with running_router(router_config(double.base_url), classifier.address, tmp_path_factory.mktemp("router"),
                        env={KEY_ENV: "test-key"}) as service:
        yield service


@pytest.fixture
def stub(router, double):
    """A client of the shared router, for tests that leave every provider healthy."""
    double.reset()
    with grpc.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest.fixture
def fresh(double, classifier, tmp_path):
    """A router of its own (fresh breakers), for tests that inject provider faults."""
    double.reset()
    with running_router(router_config(double.base_url), classifier.address, tmp_path,
                        env={KEY_ENV: "test-key"}) as service:
        with grpc.insecure_channel(service.address) as channel:
            yield router_pb2_grpc.RouterServiceStub(channel), service
    double.reset()


def ask(text: str, strategy: str = "", **kw) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role="user", content=text)], strategy=strategy, **kw)


def stream(stub, request, timeout=20, metadata=None):
    """(decision, text, summary) of a CompleteStream call."""
    decision, pieces, summary = None, [], None
    for event in stub.CompleteStream(request, timeout=timeout, metadata=metadata):
        kind = event.WhichOneof("event")
        if kind == "decision":
            assert decision is None and not pieces, "decision must come first, once"
            decision = event.decision
        elif kind == "delta":
            pieces.append(event.delta)
        else:
            summary = event.summary
    return decision, "".join(pieces), summary


def gate_rejections(reply) -> list[tuple[int, str]]:
    return [(a.tier, a.error) for a in reply.attempts if a.outcome == "gate_rejected"]


def test_complete_answers_at_the_decided_tier_and_prices_the_usage(stub, double):
    reply = stub.Complete(ask("What is the capital of France?", "heuristic"), timeout=10)
    assert (reply.tier, reply.model, reply.provider) == (1, "t1-a", "t1-a")
    assert reply.content == "answer from t1-a: 6 words"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
    expected = (reply.usage.input_tokens * 0.25 + reply.usage.output_tokens * 1.25) / 1e6
    assert reply.cost_usd == pytest.approx(expected)
    assert [a.outcome for a in reply.attempts] == ["ok"] and reply.escalations == 0
    assert len(double.requests_for("t1-a")) == 1 and double.requests_for("t1-a")[0].authorization == "Bearer test-key"


@pytest.mark.parametrize("strategy", ["heuristic", "embedding", "judge", "cheapest", "cascade", "embedding+cascade"])
def test_every_strategy_completes_and_streams(stub, double, strategy):
    double.set_reply("t1-a", '{"tier": 1}')  # the judge's verdict; other strategies just get this answer
    reply = stub.Complete(ask("Name a primary colour.", strategy), timeout=15)
    assert reply.strategy == strategy and reply.content and reply.tier in (1, 2, 3)
    assert reply.decision.strategy == strategy and not reply.degraded
    decision, text, summary = stream(stub, ask("Name a primary colour.", strategy))
    assert decision.strategy == strategy and text == summary.content and summary.tier == reply.tier


def test_the_decisions_estimate_prices_the_whole_conversation(stub):
    short = stub.Complete(ask("Name a colour.", "tier1"), timeout=10)
    long = stub.Complete(pb.CompleteRequest(messages=[pb.Message(role="system", content="Be careful. " * 2000),
                                                      pb.Message(role="user", content="Name a colour.")],
                                            strategy="tier1"), timeout=10)
    more = (long.usage.input_tokens - short.usage.input_tokens) * 0.25e-6  # tier 1's input price, pinned
    assert long.decision.estimated_cost_usd - short.decision.estimated_cost_usd == pytest.approx(more, rel=0.2)
    assert long.decision.estimated_cost_usd == pytest.approx(long.cost_usd, rel=0.5), "about what it cost"


def test_judge_verdict_picks_the_tier(stub, double):
    double.set_reply("t1-a", '{"tier": 3}')
    reply = stub.Route(pb.RouteRequest(query="hi", strategy="judge"), timeout=10)
    assert reply.tier == 3 and "rated tier 3" in reply.reason


def test_an_answer_decided_by_the_judge_costs_the_judges_call_too(stub, double):
    double.set_reply("t1-a", '{"tier": 1}')
    judged = stub.Complete(ask("hi", "judge"), timeout=10)
    fixed = stub.Complete(ask("hi", "tier1"), timeout=10)
    assert (judged.tier, judged.model) == (fixed.tier, fixed.model) == (1, "t1-a")
    assert judged.cost_usd > fixed.cost_usd > 0


def test_judge_parse_failure_falls_back_to_heuristic(stub, double):
    double.set_reply("t1-a", "I think this is a medium one.")
    double.set_reply("t1-b", "no json here either")
    reply = stub.Route(pb.RouteRequest(query="hi", strategy="judge"), timeout=10)
    assert reply.degraded and reply.strategy == "judge" and "fell back to heuristic" in reply.reason


def test_cascade_gate_rejects_a_refusal_and_escalates(fresh, double):
    stub, _ = fresh
    double.set_reply("t1-a", "I cannot help with that.")
    reply = stub.Complete(ask("What is 17 times 23?", "cascade"), timeout=15)
    assert reply.tier == 2 and reply.escalations == 1 and reply.content.startswith("answer from t2-a")
    assert "gate_rejected" in [a.outcome for a in reply.attempts]
    assert reply.cost_usd > (reply.usage.input_tokens * 3.0 + reply.usage.output_tokens * 15.0) / 1e6, \
        "a cascade pays for every tier it tried"


SAMPLING = {"top_p": 0.25, "stop": ["\n\n", "END"], "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -1.5,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}}


def test_generation_options_go_to_every_tier_a_cascade_asks(fresh, double):
    stub, _ = fresh
    double.set_reply("t1-a", "I cannot help with that.")
    request = ask("What is 17 times 23?", "cascade", max_tokens=50, temperature=0.5,
                  **{**SAMPLING, "response_format": json.dumps(SAMPLING["response_format"])})
    assert stub.Complete(request, timeout=15).escalations == 1
    for model in ("t1-a", "t2-a"):
        [sent] = [r.body for r in double.requests_for(model)]
        assert {k: sent.get(k) for k in SAMPLING} == SAMPLING, model
        assert (sent["max_tokens"], sent["temperature"]) == (50, 0.5)


def test_generation_options_left_unset_are_not_sent(stub, double):
    stub.Complete(ask("hello there", "heuristic"), timeout=10)
    [sent] = [r.body for r in double.requests]
    assert not set(sent) & {*SAMPLING, "temperature", "max_tokens"}, sent


def test_cascade_gate_escalates_an_answer_cut_off_at_max_tokens(fresh, double):
    stub, _ = fresh
    double.set_reply("t2-a", "391")
    reply = stub.Complete(ask("What is 17 times 23?", "cascade", max_tokens=2), timeout=15)
    assert (reply.tier, reply.content, reply.escalations) == (2, "391", 1)
    assert gate_rejections(reply) == [(1, "answer cut off at max_tokens")]


@pytest.fixture
def verifying(double, classifier, tmp_path):
    """Asks "What is 17 times 23?" of a router of its own whose `cheapest+cascade` runs the verify gate, and
    returns the reply. Tier 3 verifies unless a test says otherwise; `settings` override the cascade section."""
    def complete(verifier_tier: int = 3, asked: dict | None = None, **settings) -> pb.CompleteResponse:
        cascade = {"start": "cheapest", "gate": "verify", "max_tier": 3, "verifier_tier": verifier_tier,
                   "verifier_timeout_ms": 3000, **settings}
        with running_router(router_config(double.base_url, cascade=cascade), classifier.address, tmp_path,
                            env={KEY_ENV: "test-key"}) as router, grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            return stub.Complete(ask("What is 17 times 23?", "cascade", **(asked or {})), timeout=15)
    double.reset()
    yield complete
    double.reset()



def verifier_calls(double, model: str) -> list[dict]:
    return [r.body for r in double.requests_for(model) if r.body["messages"][0]["role"] == "system"]


def test_verify_gate_returns_the_cheap_answer_a_verifier_accepts_and_bills_its_call(verifying, double):
    double.set_reply("t3-a", '```json\n{"acceptable": true}\n```')
    reply = verifying()
    assert (reply.tier, reply.escalations) == (1, 0) and reply.content.startswith("answer from t1-a")
    [call] = verifier_calls(double, "t3-a")
    assert "What is 17 times 23?" in call["messages"][1]["content"] and reply.content in call["messages"][1]["content"]
    assert call["max_tokens"] == 16 and call["temperature"] == 0.0
    answer_cost = (reply.usage.input_tokens * 0.25 + reply.usage.output_tokens * 1.25) / 1e6
    verifier_cost = (len("".join(m["content"] for m in call["messages"])) // 4 * 15.0
                     + len('```json\n{"acceptable": true}\n```') // 4 * 75.0) / 1e6
    assert reply.cost_usd == pytest.approx(answer_cost + verifier_cost), "the verifier's call is paid with the answer"


def test_the_verifier_is_asked_its_own_way_not_with_the_callers_options(verifying, double):
    double.set_reply("t3-a", '```json\n{"acceptable": true}\n```')
    verifying(asked={"seed": 3, "stop": ["END"], "response_format": '{"type": "json_object"}'})
    [answer] = [r.body for r in double.requests_for("t1-a")]
    assert (answer["seed"], answer["stop"], answer["response_format"]) == (3, ["END"], {"type": "json_object"})
    [call] = verifier_calls(double, "t3-a")
    assert not set(call) & set(SAMPLING), call


def test_verify_gate_escalates_what_its_verifier_rejects(verifying, double):
    double.set_reply("t3-a", '{"acceptable": false}')
    reply = verifying()
    assert (reply.tier, reply.escalations) == (3, 2)
    assert gate_rejections(reply) == [(1, "verifier t3-a rated it acceptable with p=0.00, below the bar 0.5"),
                                      (2, "verifier t3-a rated it acceptable with p=0.00, below the bar 0.5")]
    assert len(verifier_calls(double, "t3-a")) == 2, "tier 3's answer is the last word: nobody verifies it"


@pytest.mark.parametrize("bar, tier", [(0.6, 1), (0.8, 3)])
def test_verify_gate_weighs_the_verdicts_log_probabilities_against_its_bar(verifying, double, bar, tier):
    """The verifier says true, but only at p = 0.7 / (0.7 + 0.2): the bar decides, not the word."""
    double.set_reply("t3-a", '{"acceptable": true}')
    double.set_alternatives("t3-a", {" true": math.log(0.7), " false": math.log(0.2), " maybe": math.log(0.1)})
    reply = verifying(verifier_bar=bar)
    assert reply.tier == tier
    calls = verifier_calls(double, "t3-a")
    assert calls and all(c["logprobs"] is True and c["top_logprobs"] == 5 for c in calls)
    if tier == 3:
        assert gate_rejections(reply)[0] == (1, "verifier t3-a rated it acceptable with p=0.78, below the bar 0.8")


def test_verify_gate_asks_for_no_log_probabilities_when_told_not_to(verifying, double):
    double.set_reply("t3-a", '{"acceptable": true}')
    double.set_alternatives("t3-a", {" true": math.log(0.7), " false": math.log(0.3)})
    reply = verifying(verifier_bar=0.9, verifier_logprobs=0)
    assert reply.tier == 1, "without log probabilities P is the verdict itself: 1"
    [call] = verifier_calls(double, "t3-a")
    assert "logprobs" not in call and "top_logprobs" not in call


def test_verify_gate_rejects_when_its_verifier_fails_or_gives_no_verdict(verifying, double):
    """With verifier_tier 0 the tier above verifies. A failed verifier must not pass an unchecked answer: escalate."""
    double.script("t2-a", Fault.http_error(500), Fault.http_error(500))  # both attempts of tier 1's verifier
    reply = verifying(verifier_tier=0)
    assert reply.tier == 3 and reply.content.startswith("answer from t3-a")
    assert gate_rejections(reply) == [(1, "tier 2 verifier failed (ChainExhausted)"),
                                      (2, "verifier t3-a gave no verdict")]


def test_500_is_retried_on_the_same_provider(fresh, double):
    stub, _ = fresh
    double.script("t1-a", Fault.http_error(500))
    reply = stub.Complete(ask("hello there", "heuristic"), timeout=10)
    assert reply.provider == "t1-a"
    assert [a.outcome for a in reply.attempts] == ["error", "ok"]
    assert len(double.requests_for("t1-a")) == 2 and not double.requests_for("t1-b")


def test_a_slow_provider_within_its_timeout_just_answers(fresh, double):
    stub, _ = fresh
    double.script("t1-a", Fault.delay(0.4))
    reply = stub.Complete(ask("hello there", "heuristic"), timeout=10)
    assert reply.provider == "t1-a" and [a.outcome for a in reply.attempts] == ["ok"]
    assert reply.attempts[0].latency_ms >= 400 and len(double.requests_for("t1-a")) == 1


def test_429_retry_after_is_honoured(fresh, double):
    stub, _ = fresh
    double.script("t1-a", Fault.rate_limited(retry_after=0.6))
    started = time.monotonic()
    reply = stub.Complete(ask("hello there", "heuristic"), timeout=10)
    assert time.monotonic() - started >= 0.6 and reply.provider == "t1-a"
    assert reply.attempts[0].error.startswith("http 429") or "429" in reply.attempts[0].error


@pytest.mark.parametrize("fault", [Fault.hang(4.0), Fault.malformed_json(), Fault.drop_connection()],
                         ids=["timeout", "malformed-json", "dropped-connection"])
def test_a_failing_provider_fails_over_to_the_next_in_the_chain(fresh, double, fault):
    stub, _ = fresh
    double.set_persistent("t1-a", fault)
    reply = stub.Complete(ask("hello there", "heuristic"), timeout=20)
    assert reply.provider == "t1-b" and reply.tier == 1 and reply.escalations == 0
    assert [a.provider for a in reply.attempts][-1] == "t1-b"
    assert len(double.requests_for("t1-b")) == 1, "answered exactly once"


def test_a_request_every_provider_refuses_is_invalid_argument_not_unavailable(fresh, double):
    """A caller's option no provider takes (a schema they reject, say) is the caller's to fix, not a retry."""
    stub, _ = fresh
    for model in ("t1-a", "t1-b", "t2-a", "t3-a"):
        double.set_persistent(model, Fault.http_error(400))
    request = ask("hello there", "heuristic", response_format='{"type": "json_schema", "json_schema": {"name": "x"}}')
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(request, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("every provider asked refused the request as invalid")
    assert all(model in err.value.details() for model in ("t1-a", "t1-b", "t2-a", "t3-a"))
    double.set_persistent("t3-a", Fault.http_error(500))
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(request, timeout=20)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, "one provider failing on its own side is an outage"


def test_exhausted_tier_escalates_then_unavailable_names_every_attempt(fresh, double):
    stub, _ = fresh
    for model in ("t1-a", "t1-b"):
        double.set_persistent(model, Fault.http_error(503))
    reply = stub.Complete(ask("hello there", "heuristic"), timeout=20)
    assert reply.tier == 2 and reply.escalations == 1 and reply.provider == "t2-a"
    for model in ("t2-a", "t3-a"):
        double.set_persistent(model, Fault.http_error(500))
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(ask("hello again", "heuristic"), timeout=20)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    for model in ("t1-a", "t1-b", "t2-a", "t3-a"):
        assert model in err.value.details()


def test_stream_fails_over_before_the_first_token(fresh, double):
    stub, _ = fresh
    double.set_persistent("t1-a", Fault.http_error(500))
    decision, text, summary = stream(stub, ask("hello there", "heuristic"))
    assert summary.provider == "t1-b" and text == summary.content == "answer from t1-b: 2 words"


def test_mid_stream_disconnect_ends_with_a_clear_error_and_no_mixed_answer(fresh, double):
    stub, _ = fresh
    double.script("t1-a", Fault.disconnect_mid_stream(after_chunks=2))
    pieces = []
    with pytest.raises(grpc.RpcError) as err:
        for event in stub.CompleteStream(ask("hello there", "heuristic"), timeout=20):
            if event.WhichOneof("event") == "delta":
                pieces.append(event.delta)
    assert err.value.code() == grpc.StatusCode.ABORTED and "retry the request" in err.value.details()
    full = "answer from t1-a: 2 words"
    assert pieces and full.startswith("".join(pieces)) and "".join(pieces) != full
    assert not double.requests_for("t1-b"), "after tokens were sent no other provider may answer"


def test_every_delta_the_router_had_reaches_the_caller_before_the_stream_is_aborted(stub, double):
    double.set_reply("t1-a", " ".join(["word"] * 400))
    double.script("t1-a", Fault.disconnect_mid_stream(after_chunks=150))
    pieces = []
    with pytest.raises(grpc.RpcError) as err:
        for event in stub.CompleteStream(ask("hello there", "tier1"), timeout=20):
            pieces += [event.delta] if event.WhichOneof("event") == "delta" else []
    assert err.value.code() == grpc.StatusCode.ABORTED and "after 150 chunks" in err.value.details()
    assert len(pieces) == 150, "the deltas read before the break, every one"


def test_breaker_opens_half_opens_and_closes(double, classifier, tmp_path):
    double.reset()
    doc = router_config(double.base_url)
    doc["tiers"][0]["providers"][0]["breaker_cooldown_s"] = 2.5  # long enough to see it open on a busy machine
    with running_router(doc, classifier.address, tmp_path, env={KEY_ENV: "k"}) as router:
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            double.set_persistent("t1-a", Fault.http_error(500))
            for _ in range(2):  # 2 calls x (1 try + 1 retry) = 4 failures >= breaker_failures 3
                assert stub.Complete(ask("hello there", "heuristic"), timeout=10).provider == "t1-b"
            before = len(double.requests_for("t1-a"))
            reply = stub.Complete(ask("hello there", "heuristic"), timeout=10)
            assert reply.attempts[0].outcome == "skipped_breaker_open" and reply.provider == "t1-b"
            assert len(double.requests_for("t1-a")) == before, "an open breaker sends nothing"
            double.set_persistent("t1-a", None)
            time.sleep(2.6)  # the configured cooldown
            assert stub.Complete(ask("hello there", "heuristic"), timeout=10).provider == "t1-a"  # the probe
    log = "".join(router.output)
    assert re.search(r"t1-a: closed -> open", log) and re.search(r"t1-a: (open|half_open) -> closed", log)
    assert "skipped_breaker_open" not in log, "a provider skipped is not logged per request: its breaker's change is"


@pytest.mark.parametrize("request_, field", [
    (pb.CompleteRequest(), "messages"),
    (pb.CompleteRequest(messages=[pb.Message(role="robot", content="hi")]), "messages[0].role"),
    (pb.CompleteRequest(messages=[pb.Message(role="assistant", content="hello")]), "messages"),
    (pb.CompleteRequest(messages=[pb.Message(role="user", content="  ")]), "messages[0].content"),
    (pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")], max_tokens=-1), "max_tokens"),
    (pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")], temperature=7), "temperature"),
    (pb.CompleteRequest(messages=[pb.Message(role="user", content="hi")], strategy="nope"), "strategy"),
    (ask("hi", top_p=1.5), "top_p"),
    (ask("hi", top_p=math.nan), "top_p"),
    (ask("hi", presence_penalty=-2.5), "presence_penalty"),
    (ask("hi", frequency_penalty=math.inf), "frequency_penalty"),
    (ask("hi", stop=["a", "b", "c", "d", "e"]), "stop"),
    (ask("hi", stop=["a", ""]), "stop[1]"),
    (ask("hi", response_format="{"), "response_format"),
    (ask("hi", response_format='{"type": "xml"}'), "response_format"),
    (ask("hi", response_format='{"type": "json_schema"}'), "response_format.json_schema"),
])
def test_bad_complete_input_is_invalid_argument(stub, request_, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_without_keys_route_works_and_complete_is_failed_precondition(double, classifier, tmp_path):
    with running_router(router_config(double.base_url), classifier.address, tmp_path, env={KEY_ENV: ""}) as service:
        with grpc.insecure_channel(service.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert stub.Route(pb.RouteRequest(query="hi"), timeout=10).tier in (1, 2, 3)
            with pytest.raises(grpc.RpcError) as err:
                stub.Complete(ask("hi"), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert KEY_ENV in err.value.details()


def test_connection_refused_provider_is_skipped(double, classifier, tmp_path):
    doc = router_config(double.base_url)
    doc["tiers"][0]["providers"][0]["base_url"] = refused_base_url()
    with running_router(doc, classifier.address, tmp_path, env={KEY_ENV: "k"}) as service:
        with grpc.insecure_channel(service.address) as channel:
            reply = router_pb2_grpc.RouterServiceStub(channel).Complete(ask("hi", "heuristic"), timeout=10)
        assert reply.provider == "t1-b" and reply.attempts[0].outcome == "error"


def test_classifier_killed_mid_test_gives_degraded_answers(double, tmp_path):
    classifier = start_classifier()
    try:
        with running_router(router_config(double.base_url, strategy="embedding"), classifier.address, tmp_path,
                            env={KEY_ENV: "k"}) as service, grpc.insecure_channel(service.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert not stub.Complete(ask("hi"), timeout=10).degraded
            classifier.stop()
            reply = stub.Complete(ask("hi"), timeout=10)
            assert reply.degraded and reply.content and "fell back to heuristic" in reply.decision.reason
            decision, text, summary = stream(stub, ask("hi"))
            assert decision.degraded and summary.degraded and text
    finally:
        classifier.stop()


def test_shadow_ab_compares_in_the_background_without_delaying_the_reply(double, classifier, tmp_path):
    double.reset()
    log = tmp_path / "shadow.jsonl"
    doc = router_config(double.base_url, shadow={"share": 1.0, "log": str(log)})
    with running_router(doc, classifier.address, tmp_path, env={KEY_ENV: "k"}) as service:
        double.set_reply("t1-a", '{"agree": true}')  # the primary answer, and the judge's verdict
        double.set_persistent("t3-a", Fault.delay(1.5))  # a slow frontier must not slow the reply
        with grpc.insecure_channel(service.address) as channel:
            started = time.monotonic()
            reply = router_pb2_grpc.RouterServiceStub(channel).Complete(ask("hi there", "heuristic"), timeout=10)
            # the reply does not wait for the shadow: it comes before the frontier could have answered
            assert time.monotonic() - started < 1.5 and reply.tier == 1
            assert not (log.exists() and log.read_text().strip())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
            time.sleep(0.05)
        record = json.loads(log.read_text().splitlines()[0])
        assert record["agree"] is True and record["tier"] == 1 and record["shadow_model"] == "t3-a"
        assert record["shadow_cost_usd"] > record["cost_usd"] > 0 and record["judge_cost_usd"] > 0
        assert "hi there" not in log.read_text(), "no prompt text in the shadow log"
        assert len(double.requests_for("t3-a")) == 1


def test_a_request_of_instructions_alone_is_labelled_on_them(double, classifier, tmp_path):
    """The query a label holds is the message the tier was decided on, so `learn` can read every label."""
    from tierwise.data import load

    double.reset()
    labels = tmp_path / f"live-{socket.gethostname()}.jsonl"
    doc = router_config(double.base_url, shadow={"share": 1.0, "labels": str(tmp_path / "live-{host}.jsonl")})
    instructions = "Write a haiku about autumn."
    with running_router(doc, classifier.address, tmp_path, env={KEY_ENV: "k"}) as service:
        double.set_reply("t1-a", '{"score": 1.0}')
        with grpc.insecure_channel(service.address) as channel:
            request = pb.CompleteRequest(messages=[pb.Message(role="system", content=instructions)],
                                         strategy="heuristic")
            router_pb2_grpc.RouterServiceStub(channel).Complete(request, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (labels.exists() and labels.read_text().endswith("\n")):
            time.sleep(0.05)
    [record] = load([labels])
    assert record.query == instructions


def test_a_shadow_cut_at_shutdown_is_logged_with_what_it_spent(double, classifier, tmp_path):
    """The shadow log's spent_usd is to add up to what the spend counted: a shadow cancelled at the end of the
    grace has its line too."""
    double.reset()
    log = tmp_path / "shadow.jsonl"
    double.set_persistent("t3-a", Fault.delay(30.0))  # the frontier's shadow answer never comes in time
    doc = router_config(double.base_url, timeout_s=60.0, shadow={"share": 1.0, "log": str(log)},
                        shutdown={"grace_s": 0.5})
    try:
        with running_router(doc, classifier.address, tmp_path, env={KEY_ENV: "k"}) as service:
            with grpc.insecure_channel(service.address) as channel:
                assert router_pb2_grpc.RouterServiceStub(channel).Complete(ask("hi there", "cheapest"),
                                                                           timeout=10).tier == 1
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not double.requests_for("t3-a"):
                time.sleep(0.05)
            assert service.stop() == 0
    finally:
        double.set_persistent("t3-a", None)
    [line] = [json.loads(text) for text in log.read_text().splitlines()]
    assert line["error"] == "cancelled at shutdown" and line["spent_usd"] == 0.0 and line["tier"] == 1


def test_shadow_labels_sampled_traffic_in_the_routing_format_for_train(double, classifier, tmp_path, capsys):
    """Label mode: every sampled request (any tier) is answered by every tier and judged against tier 3; the
    records are what `tierwise train` reads, and the answer already sent is reused, not asked again.
    `tierwise eval --strategy as-routed` then scores the router's own decisions on them."""
    from tierwise_tools.cli import main
    from tierwise.data import load

    double.reset()
    labels, log = tmp_path / f"live-{socket.gethostname()}.jsonl", tmp_path / "shadow.jsonl"
    doc = router_config(double.base_url, shadow={"share": 1.0, "labels": str(tmp_path / "live-{host}.jsonl"),
                                                 "log": str(log)})
    hard = "Prove the complexity of this algorithm: ```def f(x): return x``` Is it optimal? Why?"
    with running_router(doc, classifier.address, tmp_path, env={KEY_ENV: "k"}) as service:
        double.set_reply("t1-a", '{"score": 0.25}')  # the tier-1 answer, and the judge's grade of tiers 1 and 2
        with grpc.insecure_channel(service.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            easy = stub.Complete(ask("hi there", "heuristic", max_tokens=40, seed=5, stop=["END"]), timeout=10)
            assert easy.tier == 1
            assert stub.Complete(ask(hard, "heuristic"), timeout=10).tier == 3
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (labels.exists() and len(labels.read_text().splitlines()) == 2):
            time.sleep(0.05)
    records = {r.query: r for r in load([labels])}  # the shared format's own loader accepts them
    assert set(records) == {"hi there", hard}
    for r in records.values():
        assert r.source == "live" and r.scores == (0.25, 0.25, 1.0) and r.models == ("t1-a", "t2-a", "t3-a")
        assert r.costs[0] < r.costs[2]
    raw = {json.loads(line)["query"]: json.loads(line) for line in labels.read_text().splitlines()}
    assert raw["hi there"]["routed_tier"] == 1 and raw[hard]["routed_tier"] == 3
    assert raw["hi there"]["outcomes"][0]["response"] == easy.content
    # Per request: the routed tier's answer, the other two tiers, two judgements, nothing asked twice.
    assert len(double.requests_for("t2-a")) == 2 and len(double.requests_for("t3-a")) == 2
    assert len(double.requests_for("t1-a")) == 2 + 2 * 2
    asked_for_easy = [r.body for r in double.requests if r.body and r.body["messages"][-1]["content"] == "hi there"]
    assert {b["model"] for b in asked_for_easy} == {"t1-a", "t2-a", "t3-a"}
    assert all((b.get("max_tokens"), b.get("seed"), b.get("stop")) == (40, 5, ["END"]) for b in asked_for_easy), \
        "every tier is asked as the user asked"
    judged = [r.body for r in double.requests if r.body and r.body["messages"][-1]["content"] != "hi there"
              and "hi there" in r.body["messages"][-1]["content"]]
    assert judged and not any("seed" in b or "stop" in b for b in judged), "the judge is asked its own way"
    comparisons = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(c["tier"] for c in comparisons) == [1, 3] and all(c["labelled"] for c in comparisons)
    assert [c["agree"] for c in comparisons if c["tier"] == 1] == [False]  # 0.25 is below the acceptable bar
    assert "hi there" not in log.read_text(), "the comparison log still holds no prompt text"

    assert main(["eval", "--data", str(labels), "--strategy", "as-routed", "--json"]) == 0
    op = json.loads(capsys.readouterr().out)["operating_point"]
    frontier_cost = sum(r["outcomes"][2]["cost_usd"] for r in raw.values())
    assert op["quality_vs_frontier"] == pytest.approx(0.5)  # the tier-1 answer scored 0.25: not acceptable
    assert op["cost_savings"] == pytest.approx(1 - (easy.cost_usd + raw[hard]["paid_usd"]) / frontier_cost)


def test_prometheus_metrics_show_requests_cost_escalations_and_breaker_state(double, classifier, tmp_path):
    double.reset()
    port = unused_port()
    with running_router(router_config(double.base_url), classifier.address, tmp_path, "--metrics-port", str(port),
                        env={KEY_ENV: "k"}) as service:
        for model in ("t1-a", "t1-b"):
            double.set_persistent(model, Fault.http_error(500))
        with grpc.insecure_channel(service.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            for _ in range(2):
                assert stub.Complete(ask("hello", "heuristic"), timeout=10).tier == 2
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert metric(text, "tierwise_router_requests_total", method="Complete", tier="2", strategy="heuristic") == 2
    assert metric(text, "tierwise_router_escalations_total", from_tier="1", to_tier="2") == 2
    assert metric(text, "tierwise_router_breaker_state", provider="t1-a") == 2, "t1-a's breaker is open"
    assert metric(text, "tierwise_router_breaker_state", provider="t2-a") == 0
    assert metric(text, "tierwise_router_cost_USD_total", tier="2") > 0
    assert "tierwise_router_duration_milliseconds_bucket" in text
    assert 'le="120000"' in text, "a frontier model's long answer is measured, not clipped at 10 s"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the Prometheus sample `name` whose labels include `labels`."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1).split(",") for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")
