"""`tierwise label` against the provider test double: every tier asked, judged, written, resumable."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tierwise_tools.cli import main
from tierwise.data import load

from .provider_double import Fault, ProviderDouble
from .servers import KEY_ENV, router_config

QUERIES = ["What is 2 + 2?", "Name a prime larger than 10.", "Explain recursion in one sentence."]


def setup(tmp_path, double):
    config = tmp_path / "tierwise.yaml"
    config.write_text(yaml.safe_dump(router_config(double.base_url)))
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": q}) + "\n" for q in QUERIES) + "plain text query\n")
    return config, queries


def test_label_writes_shared_format_records_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "k")
    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, queries = setup(tmp_path, double)
        double.set_reply("t1-a", '{"score": 0.25}')  # t1-a answers tier 1 and is also the judge
        args = ["label", "--queries", str(queries), "--config", str(config), "--out", str(out), "--rate", "200"]
        assert main(args) == 0
        records = load([out])  # the shared format's own loader reads them back
        assert sorted(r.query for r in records) == sorted([*QUERIES, "plain text query"])
        for r in records:
            assert r.scores == (0.25, 0.25, 1.0) and r.responses[1].startswith("answer from t2-a")
            assert all(c > 0 for c in r.costs) and r.costs[0] < r.costs[2]
        asked = len(double.requests)
        assert asked == 4 * (3 + 2)  # per query: three tiers and two judgements

        assert main(args) == 0, "a second run has nothing left to do"
        assert len(double.requests) == asked
        lines = out.read_text().splitlines()
        out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # an interrupted last write
        assert main(args) == 0
        assert len(double.requests) == asked + 5 and len(load([out])) == 4
        last = json.loads(out.read_text().splitlines()[-1])
        cost = sum(o["cost_usd"] for o in last["outcomes"]) + last["judge_cost_usd"]
        assert last["judge_cost_usd"] > 0 and f"1 labelled, 3 already in {out}, 0 failed" in (text := capsys.readouterr().out)
        assert f"this run's provider calls cost ${cost:.4f}" in text


def test_label_reports_failures_and_keeps_going(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "k")
    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, queries = setup(tmp_path, double)
        double.set_reply("t1-a", "not json at all")  # the judge never answers in JSON
        double.set_reply("t1-b", "still not json")
        for model in ("t1-a", "t1-b"):
            double.script(model, Fault.http_error(400))  # and one tier-1 call is refused outright
        assert main(["label", "--queries", str(queries), "--config", str(config), "--out", str(out),
                     "--rate", "200"]) == 1
        assert not out.exists() or out.read_text() == ""
    spent = float(re.search(r"provider calls cost \$([0-9.]+)", capsys.readouterr().out).group(1))
    assert spent > 0, "every tier answered and the judge replied: paid for, though no record was written"


def no_verdict() -> Fault:
    """A well-formed chat completion whose text is no verdict."""
    return Fault.odd_body(json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "t1-a",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Both look fine to me."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}))


def label_one(tmp_path, config, out) -> int:
    queries = tmp_path / "one.jsonl"
    queries.write_text(json.dumps({"query": "What is 2 + 2?"}) + "\n")
    return main(["label", "--queries", str(queries), "--config", str(config), "--out", str(out), "--rate", "200",
                 "--concurrency", "1"])


def test_a_judge_that_twice_gives_no_verdict_costs_no_answer_twice(tmp_path, monkeypatch):
    """The tiers' answers are paid for: a judge's bad reply is asked again, and a record that still fails is
    retried with the answers it already has, asking only for what is missing."""
    monkeypatch.setenv(KEY_ENV, "k")
    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, _ = setup(tmp_path, double)
        double.set_reply("t1-a", '{"score": 0.5}')  # t1-a answers tier 1 and is also the judge
        double.script("t1-a", Fault.delay(0), no_verdict(), no_verdict())  # tier 1's answer, then two bad verdicts
        assert label_one(tmp_path, config, out) == 0
        [record] = load([out])
        assert record.scores == (0.5, 0.5, 1.0)
        asked = {m: len(double.requests_for(m)) for m in ("t1-a", "t2-a", "t3-a")}
    assert asked == {"t1-a": 1 + 4, "t2-a": 1, "t3-a": 1}, "each tier answered once; the judge five times in all"


def test_a_tier_3_answer_with_no_text_fails_its_record_unjudged(tmp_path, monkeypatch, capsys):
    """An empty reference (refused, filtered, or cut before any text) is no reference: the record would say tier 3
    was right and grade the others against nothing."""
    monkeypatch.setenv(KEY_ENV, "k")
    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, _ = setup(tmp_path, double)
        double.set_reply("t3-a", "")
        assert label_one(tmp_path, config, out) == 1
        assert {m: len(double.requests_for(m)) for m in ("t1-a", "t2-a", "t3-a")} == {"t1-a": 1, "t2-a": 1, "t3-a": 1}
    assert not out.exists() or out.read_text() == ""
    assert "tier 3's answer has no text" in capsys.readouterr().err


def test_an_empty_lower_tier_answer_scores_0_without_a_judge(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, _ = setup(tmp_path, double)
        double.set_reply("t2-a", "")
        double.set_reply("t1-a", '{"score": 1.0}')
        assert label_one(tmp_path, config, out) == 0
        assert len(double.requests_for("t1-a")) == 1 + 1, "tier 1's answer and its judgement only"
    assert load([out])[0].scores == (1.0, 0.0, 1.0)


def test_labelled_records_train_a_head_for_the_deployment_lineup(tmp_path, monkeypatch, capsys):
    """The cold-start loop end to end: label your queries, train a head on them, load it as the classifier would."""
    from classifier_service.heads import HeadRegistry

    monkeypatch.setenv(KEY_ENV, "k")
    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, _ = setup(tmp_path, double)
        queries = tmp_path / "many.jsonl"
        queries.write_text("".join(json.dumps({"query": f"Question {i}: what is {i} times {i + 1}?"}) + "\n"
                                   for i in range(40)))
        double.set_reply("t1-a", '{"score": 0.0}')  # the judge finds every tier 1 and 2 answer wrong
        assert main(["label", "--queries", str(queries), "--config", str(config), "--out", str(out),
                     "--rate", "500", "--concurrency", "8"]) == 0
    assert main(["train", "--data", str(out), "--out", str(tmp_path / "heads"), "--name", "mine"]) == 0
    registry = HeadRegistry.from_dir(tmp_path / "heads")
    head, records = registry.get("mine"), load([out])
    assert head.models == records[0].models == ("t1-a", "t2-a", "t3-a"), "the head knows the lineup it learned"
    assert registry.for_lineup(records[0].models) is head
    assert head.card["held_out_tier_mix"] == "[0.0, 0.0, 1.0]", "only tier 3 ever answered acceptably"
    assert "wrote" in capsys.readouterr().out


def test_a_record_keeps_the_routers_lineup_when_a_fallback_answered(tmp_path, monkeypatch):
    """A head trained on these records is for the router's tiers (their first models), which is how the router
    finds it, even where a tier's fallback stood in for its first provider."""
    monkeypatch.setenv(KEY_ENV, "k")
    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, _ = setup(tmp_path, double)
        queries = tmp_path / "one.jsonl"
        queries.write_text(json.dumps({"query": "What is 2 + 2?"}) + "\n")
        double.set_reply("t1-a", '{"score": 1.0}')
        double.script("t1-a", Fault.http_error(400))  # the first call, tier 1's answer, goes to its fallback
        assert main(["label", "--queries", str(queries), "--config", str(config), "--out", str(out),
                     "--rate", "200", "--concurrency", "1"]) == 0
    raw = json.loads(out.read_text())
    assert [o["model"] for o in raw["outcomes"]] == ["t1-b", "t2-a", "t3-a"], "who answered is kept"
    assert raw["lineup"] == ["t1-a", "t2-a", "t3-a"]
    assert load([out])[0].models == ("t1-a", "t2-a", "t3-a")


def test_resume_keeps_records_whose_answers_hold_unicode_line_separators(tmp_path):
    """A record ends at "\\n" only: an answer with U+2028 or U+0085 (JSON leaves them raw) is one record, and the
    repair of a torn last line writes it back byte for byte."""
    from tierwise_tools.label import resume

    record = json.dumps({"id": "label/1", "query": "q", "outcomes": [{"response": "one\u2028two\x85three"}]},
                        ensure_ascii=False)
    out = tmp_path / "labelled.jsonl"
    out.write_text(record + "\n" + record[:25], encoding="utf-8")
    assert resume(out) == {"label/1"}
    assert out.read_text(encoding="utf-8") == record + "\n"


@pytest.mark.parametrize("last", ["only line\n", '{"note": "keep me"}\n'])
def test_resume_refuses_a_whole_last_line_that_is_no_record_and_changes_nothing(tmp_path, last):
    """Only a line without its newline can be a record cut short; a whole one is someone's, and is not dropped."""
    from tierwise_tools.label import resume

    out = tmp_path / "labelled.jsonl"
    text = json.dumps({"id": "label/1", "query": "q", "outcomes": []}) + "\n" + last
    out.write_text(text)
    with pytest.raises(ValueError, match=r"labelled.jsonl:2: not a labelled record"):
        resume(out)
    assert out.read_text() == text


def test_queries_are_read_by_line_once_each_and_bad_input_costs_nothing(tmp_path, monkeypatch, capsys):
    """U+2028 inside a query is part of it, a query given twice is paid for once, and a queries file or --out
    that cannot be used is named before any provider is asked."""
    monkeypatch.setenv(KEY_ENV, "k")
    with ProviderDouble() as double:
        config, _ = setup(tmp_path, double)
        double.set_reply("t1-a", '{"score": 1.0}')  # t1-a answers tier 1 and is also the judge
        queries = tmp_path / "queries.txt"
        queries.write_text("line one\u2028line two\nWhat is 2 + 2?\nWhat is 2 + 2?\n"
                           + json.dumps({"query": "a\u2028b"}) + "\n", encoding="utf-8")
        out = tmp_path / "labelled.jsonl"
        args = ["label", "--queries", str(queries), "--config", str(config), "--rate", "200", "--out"]
        assert main([*args, str(out)]) == 0
        assert sorted(r.query for r in load([out])) == sorted(["line one\u2028line two", "What is 2 + 2?", "a\u2028b"])
        assert len(double.requests) == 3 * (3 + 2)
        capsys.readouterr()

        double.reset()
        broken = tmp_path / "broken.jsonl"
        broken.write_text('{"query": "fine"}\n{"query": \n')
        assert main(["label", "--queries", str(broken), "--config", str(config), "--out", str(out)]) == 2
        assert f"{broken}:2: not a JSON object" in capsys.readouterr().err
        broken.write_text('{"query": "one", "id": "q1"}\n{"query": "two", "id": "q1"}\n')
        assert main(["label", "--queries", str(broken), "--config", str(config), "--out", str(out)]) == 2
        assert f"{broken}:2: id 'q1' already names another query, on line 1" in capsys.readouterr().err
        (tmp_path / "blocker").write_text("")
        assert main([*args, str(tmp_path / "blocker" / "labelled.jsonl")]) == 1
        assert "blocker" in capsys.readouterr().err
        damaged = tmp_path / "damaged.jsonl"
        damaged.write_text(out.read_text().replace("\n", "\nnot a record\n", 1))
        assert main([*args, str(damaged)]) == 2
        assert f"{damaged}:2: not a labelled record" in capsys.readouterr().err
        assert not double.requests, "no provider was asked"


def test_sigterm_reports_what_the_run_spent(tmp_path, monkeypatch):
    """A CronJob's deadline or a stopped timer sends SIGTERM: the run says what its calls cost before it exits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .exported_metrics import wait_until
    from .servers import ROOT

    out = tmp_path / "labelled.jsonl"
    with ProviderDouble() as double:
        config, _ = setup(tmp_path, double)
        queries = tmp_path / "many.txt"
        queries.write_text("".join(f"Question {i}?\n" for i in range(20)))
        double.set_reply("t1-a", '{"score": 0.5}')
        for model in ("t1-a", "t2-a", "t3-a"):
            double.set_persistent(model, Fault.delay(0.2))
        proc = subprocess.Popen([sys.executable, "-m", "tierwise_tools.cli", "label", "--queries", str(queries),
                                 "--config", str(config), "--out", str(out), "--rate", "200", "--concurrency", "1"],
                                cwd=ROOT, env={**os.environ, KEY_ENV: "k"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert wait_until(lambda: out.exists() and out.read_text().count("\n") >= 1, 60)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
    spent = float(re.search(r"interrupted: this run's provider calls cost \$([0-9.]+)", stderr).group(1))
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr and spent > 0
    assert 1 <= len(load([out])) < 20
