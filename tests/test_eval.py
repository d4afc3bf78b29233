"""`tierwise eval` and calibration: hand-computed metrics on a tiny fixture, a stable JSON shape, and a
calibration that meets its target on new data drawn from known probabilities."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from tierwise_tools.calibration import calibrate, cheapest_meeting
from classifier_service.heads import decide
from tierwise_tools import evaluate
from tierwise_tools.cli import main
from tierwise.data import DataError, Record, shared_files
from tierwise.metrics import aiq, routing_metrics

COSTS = (1.0, 10.0, 100.0)


def record(i: int, scores, responses=("ok", "ok", "ok"), query="What is 2 + 2?") -> Record:
    return Record(id=f"t/{i}", source="t", task="t", query=query, scores=tuple(scores), costs=COSTS,
                  responses=tuple(responses))


def fixture_records() -> list[Record]:
    return [record(0, (1, 1, 1), ("Four.", "4", "4")),
            record(1, (0, 1, 1), ("I cannot help with that.", "It is 4.", "4")),
            record(2, (0, 0, 1), ("", "I am not sure.", "4")),
            record(3, (0, 0, 0), (None, None, "5"))]


def tier_1_first(records):
    return evaluate.baseline("always-1", records)


def test_cascade_replay_pays_every_tier_it_tried():
    replay = evaluate.cascade(fixture_records(), tier_1_first, "surface")
    assert replay.not_replayable == 1 and len(replay.records) == 3
    # record 0: tier 1 accepted (paid 1); record 1: tier 1 refusal -> tier 2 accepted (1 + 10);
    # record 2: tier 1 empty -> tier 2 hedges -> tier 3 (1 + 10 + 100)
    assert replay.operating_point.tiers.tolist() == [1, 2, 3]
    assert replay.operating_point.paid.tolist() == [1, 11, 111]
    m = routing_metrics(replay.records, replay.operating_point.tiers, replay.operating_point.paid)
    assert m["cost_savings"] == pytest.approx(1 - 123 / 300)
    assert m["quality_vs_frontier"] == pytest.approx(1.0) and m["accuracy"] == pytest.approx(1.0)


def test_composed_cascade_starts_at_each_tier_the_start_strategy_chose():
    records = fixture_records()[:3]
    start = evaluate.Replay("x", records, evaluate.Outcome(np.array([2, 1, 3]), np.zeros(3)),
                            [evaluate.Outcome(np.array([1, 1, 1]), np.zeros(3))], 5.0, detail={"heads": "h"})
    replay = evaluate.cascade(records, lambda replayable: start, "surface", "x+cascade")
    # record 0 starts at tier 2 ("4" passes: 10); record 1 at tier 1, refusal -> tier 2 (1 + 10); record 2 at 3 (100)
    assert replay.operating_point.tiers.tolist() == [2, 2, 3] and replay.operating_point.paid.tolist() == [10, 11, 100]
    assert [o.tiers.tolist() for o in replay.sweep] == [[1, 2, 3]] and replay.sweep[0].paid.tolist() == [1, 11, 111]
    assert replay.name == "x+cascade" and replay.latency_ms >= 5.0 and replay.detail == {"heads": "h"}


class ScriptedVerifier:
    """Stands in for tierwise_tools.live_gate.LiveGate (whose provider is the only thing replaced): fixed P(acceptable)
    per answer, NaN where the verdict is final (failed on its face), 0.5 as the configured bar, 2 per call."""

    def __init__(self, scores):
        self.scores = np.array(scores, dtype=float)

    def judge(self, records):
        asked = ~np.isnan(self.scores)
        return np.where(asked, self.scores >= 0.5, False), self.scores, np.where(asked, 2.0, 0.0), asked


def test_a_scoring_verifier_is_swept_over_its_bar_and_its_ranking_measured():
    records = fixture_records()[:3]
    # Tier 1 answers: "Four." (acceptable) 0.9; the refusal and "" fail on their face. Tier 2: "4" (acceptable)
    # 0.4, "It is 4." (acceptable) 0.6, "I am not sure." fails on its face.
    verifier = ScriptedVerifier([[0.9, 0.4], [np.nan, 0.6], [np.nan, np.nan]])
    replay = evaluate.cascade(records, tier_1_first, "verify", live=verifier)
    # At the configured bar (0.5): record 0 accepted at tier 1 (1 + 2); record 1: refusal -> tier 2, 0.6 passes
    # (1 + 10 + 2); record 2 -> tier 3 with no verdict bought (111).
    assert replay.operating_point.tiers.tolist() == [1, 2, 3] and replay.operating_point.paid.tolist() == [3, 13, 111]
    swept = {(tuple(o.tiers.tolist()), tuple(o.paid.tolist())) for o in replay.sweep}
    # A bar above 0.9 rejects every scored answer: record 0 climbs 1 -> 2 -> 3 paying two verdicts.
    assert ((3, 3, 3), (1 + 2 + 10 + 2 + 100, 1 + 10 + 2 + 100, 111)) in swept
    # A bar in (0.6, 0.9] passes "Four." but not "It is 4.".
    assert ((1, 3, 3), (3, 113, 111)) in swept
    assert replay.detail["verifier"] == {"asked": 3, "agreement": 0.6667, "passed_unacceptable": None,
                                         "rejected_acceptable": 0.3333, "auc": None}


def test_verifier_auc_ranks_its_scores_against_the_labels():
    acceptable = np.array([[True, False], [False, True]])
    scores = np.array([[0.9, 0.2], [0.4, np.nan]])  # the NaN one was never scored
    asked = np.array([[True, True], [True, False]])
    figures = evaluate.verifier_agreement(scores >= 0.5, asked, acceptable, scores)
    assert figures["auc"] == 1.0 and figures["asked"] == 3 and figures["agreement"] == 1.0
    assert evaluate.verifier_agreement(scores < 0.5, asked, acceptable, 1 - scores)["auc"] == 0.0


def test_bars_lie_between_the_scores_and_above_them_all():
    assert evaluate.bars(np.array([[np.nan, np.nan]])) == []
    swept = evaluate.bars(np.array([[0.2, np.nan], [0.8, 0.5]]), steps=2)
    assert swept == [0.2, 0.5, 0.8, np.inf]


def test_baselines_match_their_definitions():
    records = fixture_records()
    oracle = evaluate.baseline("oracle", records).result(0.95)["operating_point"]
    assert oracle["accuracy"] == 1.0 and oracle["quality_vs_frontier"] == pytest.approx(1.0)
    assert oracle["cost_savings"] == pytest.approx(1 - (1 + 10 + 100 + 1) / 400)
    cheap = evaluate.baseline("always-1", records).result(0.95)["operating_point"]
    assert cheap["quality_vs_frontier"] == pytest.approx(1 / 3) and cheap["cost_savings"] == pytest.approx(0.99)
    assert evaluate.baseline("always-3", records).result(0.95)["curve"]["savings_at_quality"]["0.95"] == 0.0


def test_aiq_is_the_area_under_the_upper_hull():
    assert aiq([(0.1, 0.5), (0.5, 0.9), (1.0, 1.0), (0.3, 0.4)]) == pytest.approx((0.28 + 0.475) / 0.9)
    assert aiq([(1.0, 0.7)]) == 0.7


def shared_format(r: Record) -> str:
    return json.dumps({"id": r.id, "source": r.source, "task": r.task, "query": r.query, "outcomes": [
        {"tier": t + 1, "model": f"m{t}", "score": r.scores[t], "cost_usd": r.costs[t],
         "cost_estimated": True, "response": r.responses[t]} for t in range(3)]})


def write_records(path, records: list[Record]):
    path.write_text("".join(shared_format(r) + "\n" for r in records))
    return path


def test_eval_json_shape_is_stable(tmp_path, capsys):
    data = write_records(tmp_path / "fixture.jsonl", fixture_records())
    for strategy in ("heuristic", "embedding", "cascade", "embedding+cascade", "oracle"):
        assert main(["eval", "--data", str(data), "--strategy", strategy, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        extra = set() if strategy in ("heuristic", "oracle") else {"heads"}  # cascade starts at embedding
        assert set(out) == {"strategy", "n", "target_quality", "not_replayable", "operating_point", "curve", *extra}
        assert set(out["operating_point"]) == {"accuracy", "cost_savings", "quality_preserved", "answer_quality",
                                               "quality_vs_frontier", "tier_mix", "avg_latency_overhead_ms",
                                               "paid_mix"}
        op = out["operating_point"]
        # the tiers paid for: each query's final one, and a cascade's every tier below it that it tried
        assert all(paid >= share - 1e-4 for paid, share in zip(op["paid_mix"], op["tier_mix"]))
        assert abs(sum(op["paid_mix"]) - 1) < 1e-3 if not strategy.endswith("cascade") else sum(op["paid_mix"]) >= 1
        assert set(out["curve"]) == {"savings_at_quality", "aiq"}
        assert set(out["curve"]["savings_at_quality"]) == {"0.9", "0.95", "0.99"}
        assert out["strategy"] == strategy and out["target_quality"] == 0.95
    assert main(["eval", "--data", str(data), "--strategy", "nope", "--json"]) == 2
    assert main(["eval", "--data", str(data), "--strategy", "heuristic", "--report", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "REPORT.md").read_text()
    assert "| oracle |" in report and "| cascade |" in report and "| embedding+cascade |" in report and (tmp_path / "r" / "fixture.png").stat().st_size > 0
    assert "as-routed" not in report, "benchmark records carry no routing decisions to score"
    twin = tmp_path / "elsewhere" / "fixture.jsonl"  # another file of the same name: a chart of its own
    twin.parent.mkdir()
    twin.write_text(data.read_text())
    assert main(["eval", "--data", str(data), str(twin), "--strategy", "heuristic", "--report", str(tmp_path / "r2")]) == 0
    report = (tmp_path / "r2" / "REPORT.md").read_text()
    assert "![cost-quality curve](fixture.png)" in report and "![cost-quality curve](fixture1.png)" in report
    assert (tmp_path / "r2" / "fixture1.png").stat().st_size > 0


def synthetic(n: int, seed: int) -> tuple[list[Record], np.ndarray]:
    """Records whose per-tier success is drawn from known probabilities (the 'head' is exact)."""
    rng = np.random.default_rng(seed)
    probs = np.sort(rng.beta(2.0, 1.2, size=(n, 3)), axis=1)  # better tiers succeed more often
    ok = rng.random((n, 3)) < probs
    return [record(i, tuple(float(v) for v in row)) for i, row in enumerate(ok)], probs


def test_calibration_meets_its_target_on_new_data():
    relative_cost = (0.01, 0.1, 1.0)
    calib, calib_probs = synthetic(3000, seed=1)
    tradeoff, facts = calibrate(calib, calib_probs, relative_cost, target=0.95)
    assert facts["quality_vs_frontier_lower_bound"] >= 0.95
    assert facts["cost_savings"] > 0.3, "a calibrated router must still save money here"
    for seed in (2, 3, 4):
        fresh, fresh_probs = synthetic(3000, seed)
        m = routing_metrics(fresh, decide(fresh_probs, relative_cost, tradeoff))
        assert m["quality_vs_frontier"] >= 0.95, (seed, tradeoff, m)


def test_calibration_falls_back_to_always_tier_3_when_nothing_meets_the_target():
    calib, calib_probs = synthetic(300, seed=1)
    tradeoff, facts = calibrate(calib, calib_probs, (0.01, 0.1, 1.0), target=1.2)
    assert decide(calib_probs, (0.01, 0.1, 1.0), tradeoff).tolist() == [3] * 300 and "fallback" in facts


def test_cheapest_meeting_picks_the_cheapest_candidate_whose_bound_meets_the_target():
    calib, probs = synthetic(2000, seed=1)
    always = {t: np.full(len(calib), t) for t in (1, 2, 3)}
    # Tier 3 where tier 1 is unlikely to succeed, else tier 1: better than always-2, cheaper than always-3.
    mixed = np.where(probs[:, 0] < 0.5, 3, 1)
    candidates = [("always-3", always[3]), ("always-2", always[2]), ("mixed", mixed), ("always-1", always[1])]
    quality = {name: routing_metrics(calib, tiers)["quality_vs_frontier"] for name, tiers in candidates}
    target = (quality["mixed"] + quality["always-2"]) / 2
    assert quality["mixed"] - quality["always-2"] > 0.05, "fixture: only always-3 and mixed may meet the target"
    setting, facts = cheapest_meeting(calib, candidates, target, "fallback")
    assert setting == "mixed" and facts["quality_vs_frontier_lower_bound"] >= target
    assert cheapest_meeting(calib, candidates, 1.5, "fallback")[0] == "fallback"


def test_records_without_responses_are_reported_not_replayable():
    records = [record(0, (1, 1, 1), (None, None, None)), record(1, (0, 1, 1), (None, None, None))]
    result = evaluate.cascade(records, tier_1_first, "surface").result(0.95)
    assert result["n"] == 0 and result["not_replayable"] == 2
    assert result["operating_point"] is None and result["curve"] is None


def test_a_gate_that_asks_a_live_model_is_not_replayed_and_says_how_to_measure_it(tmp_path, capsys):
    result = evaluate.cascade(fixture_records(), tier_1_first, "verify").result(0.95)
    assert result["n"] == 0 and result["not_replayable"] == 4 and result["operating_point"] is None
    assert "verify gate asks a live model" in result["why"] and "as-routed" in result["why"]
    data = write_records(tmp_path / "fixture.jsonl", fixture_records())
    assert main(["eval", "--data", str(data), "--strategy", "cascade", "--gate", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["not_replayable"] == 4
    assert main(["eval", "--data", str(data), "--gate", "verify", "--report", str(tmp_path / "r")]) == 0
    assert "| cascade | 0 | not replayable: the verify gate asks a live model" in (tmp_path / "r" / "REPORT.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--data", str(data), "--strategy", "cascade", "--gate", "vibes", "--json"]) == 2
    assert "unknown gate 'vibes'" in capsys.readouterr().err


def test_with_a_router_config_the_verify_gate_is_replayed_live_and_its_calls_are_paid(tmp_path, capsys, monkeypatch):
    """The verifiers are the provider test double; the tier above verifies: tier 2 (verifying tier 1's answers)
    accepts, tier 3 rejects."""
    import yaml

    from .provider_double import ProviderDouble
    from .servers import KEY_ENV, router_config

    monkeypatch.setenv(KEY_ENV, "k")
    data = write_records(tmp_path / "fixture.jsonl", fixture_records())
    with ProviderDouble() as double:
        double.set_reply("t2-a", '{"acceptable": true}')
        double.set_reply("t3-a", '{"acceptable": false}')
        config = tmp_path / "tierwise.yaml"
        config.write_text(yaml.safe_dump(router_config(double.base_url, cascade={"start": "heuristic", "gate": "verify", "verifier_tier": 0})))
        assert main(["eval", "--data", str(data), "--strategy", "cascade", "--config", str(config), "--json",
                     "--report", str(tmp_path / "r")]) == 0
        calls = [r.body for r in double.requests]
    out, err = capsys.readouterr()
    result = json.loads(out)
    # record 0: "Four." passes the surface checks, tier 2 accepts it: tier 1, one verifier call.
    # record 1: the tier 1 refusal fails on its face (no call); tier 3 rejects "It is 4.": tier 3, one call.
    # record 2: "" and "I am not sure." fail on their face: tier 3, no call. Record 3 has no answers.
    assert result["n"] == 3 and result["not_replayable"] == 1 and result["operating_point"]["tier_mix"] == [1 / 3, 0, 2 / 3]
    # asked: "Four." (acceptable, passed), "4" (acceptable, rejected), "It is 4." (acceptable, rejected)
    assert result["verifier"] == {"asked": 3, "agreement": 0.3333, "passed_unacceptable": None,
                                  "rejected_acceptable": 0.6667, "auc": None}  # every answer asked was acceptable
    prices = {"t2-a": (3.0, 15.0, '{"acceptable": true}'), "t3-a": (15.0, 75.0, '{"acceptable": false}')}
    cost = {}  # what each verifier call cost, by the answer it judged
    for call in calls:
        price_in, price_out, reply = prices[call["model"]]
        judged = json.loads(call["messages"][1]["content"])["proposed_answer"]
        cost[call["model"], judged] = (len("".join(m["content"] for m in call["messages"])) // 4 * price_in
                                       + len(reply) // 4 * price_out) / 1e6
    # Every answer a sweep setting may reach is judged once, though two cascades (and their sweeps) ran; the
    # surface-rejected ones cost nothing. Each cascade pays only for the verdicts its own path asks for.
    assert sorted(cost) == [("t2-a", "Four."), ("t3-a", "4"), ("t3-a", "It is 4.")] and len(calls) == 3
    paid = 1 + cost["t2-a", "Four."] + 111 + cost["t3-a", "It is 4."] + 111
    assert result["operating_point"]["cost_savings"] == pytest.approx(1 - paid / 300)
    assert f"verify gate: 3 verifier calls, ${sum(cost.values()):.6f}" in err and "could not rule" not in err
    assert main(["eval", "--data", str(data), "--strategy", "cascade", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "tierwise eval: --config: " in capsys.readouterr().err
    monkeypatch.delenv(KEY_ENV)  # no key for the verifiers: each answer they were to judge is rejected, and said so
    assert main(["eval", "--data", str(data), "--strategy", "cascade", "--config", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["operating_point"]["tier_mix"] == [0, 0, 1]
    assert "could not rule on 3 answers, counted as rejected" in err and KEY_ENV in err


@pytest.fixture
def scored_by_tier_1(tmp_path, monkeypatch):
    """100 labelled records and a config whose tier 1 model verifies (the provider test double): it rates tier 1's
    right answers (3 in 5) p = 0.8, its wrong ones 0.3, and tier 2's (always right) 0.9. Yields
    (data, write_config(**cascade) -> config path, the double)."""
    import yaml

    from .provider_double import ProviderDouble
    from .servers import KEY_ENV, router_config

    monkeypatch.setenv(KEY_ENV, "k")
    answers = lambda i: (f"RIGHT {i}" if i % 5 < 3 else f"WRONG {i}", f"TIER2 {i}", "t3")  # noqa: E731
    # A query inside the default head's support, so that its tradeoff decides (decision 0008).
    records = [record(i, (float(i % 5 < 3), 1, 1), answers(i), "What is the capital of Spain, and why is it there?")
               for i in range(100)]
    data = write_records(tmp_path / "labelled.jsonl", records)
    with ProviderDouble() as double:
        double.set_reply("t1-a", '{"acceptable": true}')
        for when, p in (("RIGHT", 0.8), ("WRONG", 0.3), ("TIER2", 0.9)):
            double.set_alternatives("t1-a", {" true": math.log(p), " false": math.log(1 - p)}, when=when)

        def write_config(**cascade):
            path = tmp_path / "tierwise.yaml"
            path.write_text(yaml.safe_dump(router_config(double.base_url, cascade={"gate": "verify", **cascade})))
            return path

        yield data, write_config, double


def test_calibrate_with_a_router_config_finds_the_cheapest_verifier_bar_that_meets_the_target(scored_by_tier_1, capsys):
    """From tier 1 (`cheapest`): accepting everything keeps 60% of the quality; a bar of 0.8 keeps all of it at
    the least cost; 0.9 would send every query to tier 2."""
    data, write_config, double = scored_by_tier_1
    config = write_config(start="cheapest")
    assert main(["calibrate", "--config", str(config), "--data", str(data), "--include-held-out"]) == 0
    assert len(double.requests_for("t1-a")) == 200, "each tier 1 and 2 answer judged once"
    out, err = capsys.readouterr()
    assert "cascade.verifier_bar: 0.8 meet 0.95" in out and "start_tradeoff" not in out
    assert "quality_vs_frontier=1.0000" in out and "'auc': 1.0" in out and "verify gate: 200 verifier calls" in err
    assert main(["calibrate", "--config", str(write_config(gate="surface")), "--data", str(data)]) == 2
    assert "cascade.gate 'surface' has no bar to calibrate" in capsys.readouterr().err


@pytest.mark.skipif(not shared_files(), reason="../shared/data/routing is absent: the shipped heads' records")
def test_an_embedding_start_is_not_calibrated_on_the_heads_own_records_nor_paid_for(scored_by_tier_1, tmp_path,
                                                                                     capsys):
    """The start's tradeoff would be chosen on the shipped heads' own decisions: refused before any verifier runs."""
    _, write_config, double = scored_by_tier_1
    fitted = tmp_path / "fitted.jsonl"
    with open(shared_files()[0]) as f:
        fitted.write_text("".join(line for _, line in zip(range(60), f)))
    assert main(["calibrate", "--config", str(write_config(start="embedding")), "--data", str(fitted)]) == 2
    assert "records a head there was fitted on" in (err := capsys.readouterr().err) and "no records" in err
    assert not double.requests_for("t1-a"), "nothing was paid for"


def test_calibrate_chooses_an_embedding_starts_tradeoff_with_the_bar_and_eval_replays_them(scored_by_tier_1, capsys):
    """From the embedding head, calibration picks the tradeoff and the bar together. Every record has the same
    query, so the head sends all of them to one tier; tier 1 with the bar at 0.8 is the cheapest way to hold the
    target, as from `cheapest`. `eval --config` with both settings gives the same operating point, from the
    verdicts calibrate kept (`--verdicts`), without asking the verifier again."""
    import yaml

    data, write_config, double = scored_by_tier_1
    config = write_config(start="embedding")
    kept = config.parent / "verdicts" / "kept.jsonl"
    assert main(["calibrate", "--config", str(config), "--data", str(data), "--include-held-out",
                 "--verdicts", str(kept)]) == 0
    out = capsys.readouterr().out
    chosen = re.search(r"cascade.verifier_bar: ([0-9.e+-]+), cascade.start_tradeoff: ([0-9.e+-]+) meet", out)
    assert chosen and float(chosen.group(1)) == 0.8, out
    savings = float(re.search(r"cost_savings=([0-9.]+)", out).group(1))
    doc = yaml.safe_load(config.read_text())
    doc["cascade"].update(verifier_bar=float(chosen.group(1)), start_tradeoff=float(chosen.group(2)))
    config.write_text(yaml.safe_dump(doc))
    asked = len(double.requests)
    with kept.open("a") as torn:
        torn.write('{"gate": "verify", "verifier": "t1-a", "tier": 1, "que')  # as a killed run might leave it
    assert main(["eval", "--config", str(config), "--data", str(data), "--strategy", "cascade", "--json",
                 "--verdicts", str(kept)]) == 0
    out, err = capsys.readouterr()
    op = json.loads(out)["operating_point"]
    assert op["tier_mix"][0] == pytest.approx(0.6) and op["quality_vs_frontier"] == 1.0
    assert op["cost_savings"] == pytest.approx(savings, abs=1e-4), "kept verdicts still cost what they cost"
    assert len(double.requests) == asked, "every verdict was kept by calibrate: eval asks no model"
    assert "verify gate: 0 verifier calls, $0.000000" in err and "200 verdicts kept in" in err
    assert "skipped 1 line(s) of" in err
    kept.write_bytes(b"\xff\xfe\n")
    assert main(["eval", "--config", str(config), "--data", str(data), "--strategy", "cascade", "--json",
                 "--verdicts", str(kept)]) == 2
    assert "--verdicts" in capsys.readouterr().err and len(double.requests) == asked


def test_kept_verdicts_are_reused_only_for_the_same_gate_and_verifier_model_and_rescored_at_the_bar(tmp_path):
    from router_service.config import parse
    from tierwise_tools.live_gate import LiveGate

    from .servers import router_config

    store = tmp_path / "kept.jsonl"
    rows = [{"gate": "verify", "verifier": "t1-a", "tier": 1, "query": "q", "answer": "a", "score": 0.7, "cost_usd": 2.0},
            {"gate": "verify", "verifier": "another-model", "tier": 2, "query": "q", "answer": "b", "score": 0.9,
             "cost_usd": 2.0},
            {"gate": "surface", "verifier": "t1-a", "tier": 2, "query": "q", "answer": "c", "score": 0.9, "cost_usd": 0}]
    store.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = parse(router_config("http://127.0.0.1:9/v1", cascade={"gate": "verify", "verifier_bar": 0.8}))
    live = LiveGate(cfg, "verify", store=store)
    assert live.kept == {(1, "q", "a")} and live.unreadable == 0
    verdict = live.verdicts[1, "q", "a"]
    assert (verdict.accept, verdict.score, verdict.cost_usd) == (False, 0.7, 2.0), "0.7 is below this config's bar"
    assert live.calls == 0 and live.spent_usd == 0.0


def test_as_routed_scores_the_routers_recorded_decisions_and_what_it_paid(tmp_path, capsys):
    from dataclasses import replace

    base = fixture_records()
    live = [replace(base[0], routed_tier=1),  # paid tier 1's cost (1)
            replace(base[1], routed_tier=3, paid_usd=111.0),  # a cascade that tried tiers 1 and 2 first
            replace(base[2], routed_tier=2),  # tier 2 was wrong here
            base[3]]  # no recorded decision: a benchmark record
    replay = evaluate.as_routed(live)
    assert replay.not_replayable == 1 and replay.operating_point.tiers.tolist() == [1, 3, 2]
    op = replay.result(0.95)["operating_point"]
    assert op["cost_savings"] == pytest.approx(1 - (1 + 111 + 10) / 300)
    assert op["quality_vs_frontier"] == pytest.approx(2 / 3) and op["tier_mix"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert evaluate.as_routed(base).result(0.95)["why"] == "no recorded routing decisions"
    # 400 live requests, tier 3 always right, the routed answer right 380 times: 0.95, and a bound below it
    # about 1.645 standard errors (0.018) lower.
    many = [replace(record(i, (float(i >= 20), 1, 1)), routed_tier=1) for i in range(400)]
    sampled = evaluate.as_routed(many).result(0.95)
    assert sampled["operating_point"]["quality_vs_frontier"] == pytest.approx(0.95)
    assert 0.925 < sampled["quality_vs_frontier_lower_bound"] < 0.945

    lines = [shared_format(r) for r in base[:3]]
    lines[0] = lines[0][:-1] + ', "routed_tier": 1}'
    data = tmp_path / "live.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert main(["eval", "--data", str(data), "--strategy", "as-routed", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 1 and out["not_replayable"] == 2 and out["operating_point"]["tier_mix"] == [1.0, 0.0, 0.0]
    assert main(["eval", "--data", str(data), "--strategy", "heuristic", "--report", str(tmp_path / "r")]) == 0
    assert "| as-routed | 1 |" in (tmp_path / "r" / "REPORT.md").read_text()
    # Where tier 3 failed every routed record, quality vs frontier is undefined on what as-routed scores, though
    # not on the file: refused, not NaN.
    unanswered = [replace(r, routed_tier=1, scores=(1.0, 1.0, 0.0)) for r in base[:2]] + base[2:]
    data.write_text("\n".join(shared_format(r)[:-1] + (f', "routed_tier": {r.routed_tier}}}' if r.routed_tier else "}")
                              for r in unanswered) + "\n")
    assert main(["eval", "--data", str(data), "--strategy", "as-routed", "--json"]) == 2
    assert "the 2 records with a recorded routing decision: tier 3 answered none" in capsys.readouterr().err
    # The report scores every strategy: the one that cannot be scored says why in its row, the rest are there.
    assert main(["eval", "--data", str(data), "--strategy", "heuristic", "--report", str(tmp_path / "r3")]) == 0
    report = (tmp_path / "r3" / "REPORT.md").read_text()
    assert "| as-routed | 0 | not replayable: the 2 records with a recorded routing decision" in report
    assert "| heuristic | 4 |" in report


def test_costs_table_prices_each_mix(tmp_path, capsys):
    eval_json = tmp_path / "cascade.json"
    eval_json.write_text(json.dumps({"strategy": "cascade", "operating_point": {
        "tier_mix": [0.5, 0.3, 0.2], "cost_savings": 0.6}}))
    assert main(["costs", "--queries-per-month", "1000000", "--mix", "60/25/15", "--from-eval", str(eval_json),
                 "--input-tokens", "1000", "--output-tokens", "1000"]) == 0
    out = capsys.readouterr().out
    # example prices per million tokens: tier 1 0.25 + 1.25, tier 2 3 + 15, tier 3 15 + 75 (in + out)
    assert "| always tier 1 | 100% / 0% / 0% | $0.001500 | $1,500.00 | 98.3% |" in out
    assert "| always tier 3 | 0% / 0% / 100% | $0.090000 | $90,000.00 | 0.0% |" in out
    mix = 0.6 * 0.0015 + 0.25 * 0.018 + 0.15 * 0.09
    assert f"${mix:.6f}" in out and "$36,000.00" in out  # an older eval's cascade: 40% of always tier 3
    assert "at the records' own prices" in out
    eval_json.write_text(json.dumps({"strategy": "cascade", "operating_point": {
        "tier_mix": [0.5, 0.3, 0.2], "paid_mix": [1.0, 0.5, 0.2], "cost_savings": 0.6}}))
    assert main(["costs", "--queries-per-month", "1000000", "--from-eval", str(eval_json),
                 "--input-tokens", "1000", "--output-tokens", "1000"]) == 0
    # every query paid tier 1, half of them tier 2 too, a fifth tier 3 as well: at the configured prices
    assert "| $0.028500 | $28,500.00 | 68.3% |" in capsys.readouterr().out
    assert main(["costs", "--queries-per-month", "10", "--input-tokens", "1000", "--output-tokens", "0"]) == 0
    assert "| always tier 3 | 0% / 0% / 100% | $0.015000 |" in capsys.readouterr().out, "0 output tokens is 0"
    assert main(["costs", "--queries-per-month", "10", "--input-tokens", "0", "--output-tokens", "0"]) == 0
    assert "undefined" in capsys.readouterr().out
    assert main(["costs", "--queries-per-month", "10", "--mix", "50/50"]) == 2


@pytest.mark.parametrize("text, says", [
    ('{"strategy": "as-routed", "operating_point": {"tier_mix": [0.5, 0.5, 0], "cost_savings": NaN}}',
     "operating_point.cost_savings must be a number no more than 1"),
    ('{"strategy": "cascade", "operating_point": {"tier_mix": [0.5, 0.5, 0]}}', "operating_point.cost_savings"),
    ('[1, 2]', "not what `tierwise eval --json` prints"),
    ('{"strategy": "heuristic"}', "not what `tierwise eval --json` prints"),
    ('{"strategy": "heuristic", "operating_point": {"tier_mix": "1/0/0"}}', "operating_point.tier_mix"),
    ('{"strategy": "cascade", "operating_point": {"tier_mix": [1, 0, 0], "paid_mix": 1}}', "operating_point.paid_mix"),
])
def test_costs_refuses_an_eval_result_it_cannot_price(tmp_path, capsys, text, says):
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(text)
    assert main(["costs", "--queries-per-month", "1000", "--from-eval", str(eval_json)]) == 2
    captured = capsys.readouterr()
    assert says in captured.err and "$" not in captured.out


def test_bad_records_get_a_clear_error_naming_the_file_line_and_field(tmp_path, capsys):
    good = shared_format(fixture_records()[0])
    cases = {
        "missing.jsonl": None,
        "not-json.jsonl": good + "\n{not json\n",
        "score.jsonl": good + "\n" + good.replace('"score": 1', '"score": 1.5', 1) + "\n",
        "query.jsonl": good.replace('"query": "What is 2 + 2?"', '"query": " "') + "\n",
        "cost.jsonl": good.replace('"cost_usd": 1.0', '"cost_usd": -1.0', 1) + "\n",
        "routed.jsonl": good[:-1] + ', "routed_tier": 4}\n',
        "lineup.jsonl": good[:-1] + ', "lineup": ["m0", "m1"]}\n',
        "source.jsonl": good[:-1] + ', "source": 7}\n',
        "id.jsonl": good.replace(good[good.index('"id"'):good.index(",", good.index('"id"'))], '"id": null') + "\n",
        "text-score.jsonl": good.replace('"score": 1', '"score": "1"', 1) + "\n",
        "four-tiers.jsonl": good.replace('"outcomes": [', '"outcomes": [{"tier": 4, "score": 1, "cost_usd": 1}, ')
        + "\n",
        "deep.jsonl": "[" * 5000 + "]" * 5000 + "\n",
        "flag-tier.jsonl": good[:-1] + ', "routed_tier": true}\n',
        "huge-cost.jsonl": good.replace('"cost_usd": 1.0', '"cost_usd": 9e307', 1) + "\n",
        "response.jsonl": good.replace('"response": "Four."', '"response": 5') + "\n",
        "paid.jsonl": good[:-1] + ', "paid_usd": 2e6}\n',
    }
    expected = {"missing.jsonl": "cannot read routing records", "not-json.jsonl": "not-json.jsonl:2: not a routing record",
                "score.jsonl": "score.jsonl:2: outcomes[].score", "query.jsonl": "query.jsonl:1: query",
                "cost.jsonl": "cost.jsonl:1: outcomes[].cost_usd", "routed.jsonl": "routed.jsonl:1: routed_tier",
                "lineup.jsonl": "lineup.jsonl:1: lineup", "source.jsonl": "source.jsonl:1: source",
                "id.jsonl": "id.jsonl:1: id", "text-score.jsonl": "text-score.jsonl:1: outcomes[].score",
                "four-tiers.jsonl": "four-tiers.jsonl:1: outcomes", "deep.jsonl": "deep.jsonl:1: not a routing record",
                "flag-tier.jsonl": "flag-tier.jsonl:1: routed_tier",
                "huge-cost.jsonl": "huge-cost.jsonl:1: outcomes[].cost_usd: must be a number in [0, 1e+06] (USD)",
                "response.jsonl": "response.jsonl:1: outcomes[].response: must be a string or null",
                "paid.jsonl": "paid.jsonl:1: paid_usd"}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        for command, extra in (("eval", ["--json"]), ("train", ["--out", str(tmp_path / "heads")]),
                               ("calibrate", ["--heads-dir", str(tmp_path / "heads")])):
            assert main([command, "--data", str(tmp_path / name), *extra]) == 2, (command, name)
            err = capsys.readouterr().err
            assert err.startswith(f"tierwise {command}: ") and expected[name] in err, err


def test_quality_numbers_need_a_frontier_that_answers_something(tmp_path, capsys):
    data = write_records(tmp_path / "no-frontier.jsonl", [record(i, (i % 2, 0, 0)) for i in range(40)])
    assert main(["eval", "--data", str(data), "--json"]) == 2
    assert "tier 3 answered none of the 40 records acceptably" in capsys.readouterr().err
    assert main(["eval", "--data", str(write_records(tmp_path / "empty.jsonl", [])), "--json"]) == 2
    assert "no records" in capsys.readouterr().err
    with pytest.raises(DataError, match="tier 3 answered none"):
        calibrate([record(i, (1, 0, 0)) for i in range(40)], np.full((40, 3), 0.5), (0.01, 0.1, 1.0), 0.95)


def test_train_refuses_too_few_records_and_says_when_its_head_cannot_save(tmp_path, capsys):
    few = write_records(tmp_path / "few.jsonl", [record(i, (0, 1, 1)) for i in range(10)])
    assert main(["train", "--data", str(few), "--out", str(tmp_path / "heads"), "--name", "few"]) == 2
    assert "at least 25 are needed" in capsys.readouterr().err
    # Tier 1 and tier 3 each solve half, on queries that look alike: nothing can promise 100% of tier 3's quality.
    coin = write_records(tmp_path / "coin.jsonl", [record(i, (i % 2, 0, 1 - i % 2)) for i in range(60)])
    assert main(["train", "--data", str(coin), "--out", str(tmp_path / "heads"), "--name", "coin",
                 "--target-quality", "1"]) == 0
    assert "sends every query to tier 3" in capsys.readouterr().err
    assert (tmp_path / "heads" / "coin" / "head.json").exists()


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--target-quality", "0"], "--target-quality"), (["calibrate", "--target-quality", "1.2"], "--target-quality"),
    (["train", "--target-quality", "x"], "--target-quality"), (["train", "--c", "-1"], "--c"),
    (["costs", "--queries-per-month", "-5"], "--queries-per-month"),
    (["label", "--queries", "q", "--config", "c", "--rate", "0"], "--rate"),
    (["label", "--queries", "q", "--config", "c", "--concurrency", "0"], "--concurrency"),
    (["route", "hi", "--timeout", "0"], "--timeout"),
    (["simulate", "--data", "d", "--shadow-rate", "0.5", "--seed", "-1"], "--seed"),
    (["simulate", "--data", "d", "--shadow-rate", "0.5", "--seed", str(2 ** 32)], "--seed")])
def test_numeric_flags_refuse_out_of_range_values_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


def test_paths_that_cannot_be_read_or_written_are_named_not_a_traceback(tmp_path, capsys):
    data = write_records(tmp_path / "fixture.jsonl", fixture_records())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["eval", "--data", str(data), "--strategy", "heuristic", "--report", str(blocker / "report")]) == 1
    assert capsys.readouterr().err.startswith("tierwise eval: ")
    assert main(["calibrate", "--data", str(data), "--heads-dir", str(tmp_path / "no-heads")]) == 1
    assert "no-heads" in capsys.readouterr().err
