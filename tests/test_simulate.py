"""`tierwise simulate`: a labelled file replayed as live traffic through shadow labelling, retraining and promotion."""
from __future__ import annotations

import json

import numpy as np
import pytest

from router_service.config import load as load_config
from tierwise.data import Record, shared_files
from tierwise_tools.cli import main
from tierwise_tools.paths import ROOT
from tierwise_tools.simulate import labelling_cost, retraining_points, shadow_draw


def record(i: int, responses=("a" * 40, "b" * 40, "c" * 40)) -> Record:
    return Record(id=f"t/{i}", source="t", task="t", query="q" * 80, scores=(1.0, 1.0, 1.0),
                  costs=(0.001, 0.01, 0.1), responses=responses)


def test_retraining_doubles_by_default_or_follows_every():
    by_default = retraining_points(None)
    assert [n for n in range(1, 1000) if by_default(n)] == [50, 100, 200, 400, 800]
    assert [n for n in range(1, 400) if retraining_points(150)(n)] == [150, 300]


def test_a_short_remainder_joins_the_last_window():
    from tierwise_tools.simulate import Simulation

    records = [record(i) for i in range(230)]
    sim = Simulation(records, np.ones(230, dtype=int), np.zeros(230, dtype=bool), np.zeros(230))
    assert [w["n"] for w in sim.result(100)["windows"]] == [100, 130]
    assert [w["n"] for w in sim.result(90)["windows"]] == [90, 90, 50]


def test_the_shadow_draws_its_share_reproducibly():
    records = [record(i) for i in range(4000)]
    drawn = [shadow_draw(r, 0.25, seed=0) for r in records]
    assert 0.22 < sum(drawn) / len(drawn) < 0.28
    assert drawn == [shadow_draw(r, 0.25, seed=0) for r in records]
    assert drawn != [shadow_draw(r, 0.25, seed=1) for r in records]


def test_a_label_pays_the_tiers_that_did_not_serve_and_two_judge_calls_at_the_judge_tiers_price():
    cfg = load_config(ROOT / "tierwise.example.yaml")
    judge = cfg.tiers[cfg.shadow.judge_tier]
    per_call = judge.cost(120 + 20 + 10 + 10, 10)  # instructions, query, answer and reference (chars / 4), verdict
    # The answer the user got is reused (router_service/shadow.py): its cost is the deployment's, not the label's.
    for served, others in ((1, 0.11), (2, 0.101), (3, 0.011)):
        assert labelling_cost(record(0), cfg, cfg.shadow.judge_tier, served) == pytest.approx(others + 2 * per_call)
    assert labelling_cost(record(0, (None, None, None)), cfg, 1, 3) > labelling_cost(record(0), cfg, 1, 3), \
        "a missing answer counts 150 tokens"


@pytest.mark.data
def test_simulate_prints_one_json_object_with_windows_and_totals(tmp_path, capsys):
    path = next(p for p in shared_files() if p.name.startswith("zeroeval"))
    data = tmp_path / "traffic.jsonl"
    with open(path) as f, data.open("w") as out:
        for _, line in zip(range(300), f):
            out.write(line)
    assert main(["simulate", "--data", str(data), "--shadow-rate", "0.5", "--window", "100", "--json",
                 "--report", str(tmp_path / "report")]) == 0
    result = json.loads(capsys.readouterr().out)
    windows, total = result["windows"], result["total"]
    assert [w["n"] for w in windows] == [100, 100, 100] and total["n"] == 300
    assert sum(w["labels"] for w in windows) == total["labels"] and 120 < total["labels"] < 180
    assert total["labelling_cost_usd"] > 0 and total["net_savings"] < total["cost_savings"]
    assert total["labelling_stopped_at_query"] is None and "pays_back_after_queries" in total
    for w in windows:
        assert set(w) == {"n", "labels", "cost_savings", "quality_vs_frontier", "net_savings", "tier_mix"}
        assert sum(w["tier_mix"]) == pytest.approx(1.0)
    assert [p["labels"] for p in result["promotions"]] == [50, 100], "retrained at 50 and 100 labels"
    assert (tmp_path / "report" / "simulation.png").stat().st_size > 0
    assert "| queries | labels |" in (tmp_path / "report" / "REPORT.md").read_text()


def test_a_shadow_rate_above_one_is_bad_input(tmp_path, capsys):
    data = tmp_path / "x.jsonl"
    data.write_text("")
    assert main(["simulate", "--data", str(data), "--shadow-rate", "1.5"]) == 2
    assert "--shadow-rate" in capsys.readouterr().err


def head_always_tier_1():
    """The committed default head's weights, calibrated (by fiat) to send everything to tier 1, with no support
    check: its decisions do not depend on the embeddings."""
    import dataclasses

    from classifier_service.config import Config
    from classifier_service.heads import TierHead

    default = TierHead.load(Config().heads_dir / "default" / "head.json")
    return dataclasses.replace(default, version="bold", support=None, tradeoff=100.0, calibration={"0.95": 100.0})


def shifted(n: int) -> list[Record]:
    """Traffic whose second half changed kind: tier 1 answers the first half, and none of the second."""
    return [Record(id=f"s/{i}", source="s", task="t", query=f"question {i}", scores=(float(i < n // 2), 1.0, 1.0),
                   costs=(0.001, 0.01, 0.1), responses=("a", "b", "c"), models=("m1", "m2", "m3")) for i in range(n)]


def test_the_serving_head_is_checked_on_its_latest_labels_every_fifty():
    from tierwise_tools.simulate import DRIFT_CHECK_EVERY, Simulation, drifted

    records = shifted(400)
    x = np.random.default_rng(0).normal(size=(400, 384)).astype(np.float32)
    sim = Simulation(records, np.ones(400, dtype=int), np.ones(400, dtype=bool), np.zeros(400))
    head = head_always_tier_1()
    fine, missing = np.arange(0, DRIFT_CHECK_EVERY * 3), np.arange(100, 100 + DRIFT_CHECK_EVERY * 4)  # the latest
    # 100 of `missing` all fail at tier 1
    assert not drifted(sim, head, fine, x, 0.95)
    assert drifted(sim, head, missing, x, 0.95)
    assert not drifted(sim, head, np.arange(99, 300), x, 0.95), "checked every 50 labels only"
    assert not drifted(sim, head, np.arange(151, 201), x, 0.95), "1 miss in 50 labels shows nothing"


def test_a_shift_in_the_traffic_retrains_before_the_next_scheduled_point():
    from classifier_service.heads import HeadRegistry
    from tierwise_tools.simulate import simulate

    records = shifted(600)  # the shift at query 300; scheduled retrainings at 50, 100, 200 and 400 labels
    x = np.random.default_rng(0).normal(size=(600, 384)).astype(np.float32)
    cfg = load_config(ROOT / "tierwise.example.yaml")
    sim = simulate(records, x, HeadRegistry([head_always_tier_1()]), cfg, rate=1.0)
    first_drift = next(p for p in sim.promotions if p["trigger"] == "drift")
    assert [p["labels"] for p in sim.promotions if p["trigger"] == "schedule"][:3] == [50, 100, 200]
    assert 300 < first_drift["labels"] <= 350 and first_drift["labels"] % 50 == 0


def test_traffic_that_names_no_models_still_retrains_and_promotes():
    """Records without model names are one deployment's traffic: the simulator learns from their labels."""
    import dataclasses

    from classifier_service.heads import HeadRegistry
    from tierwise_tools.fitting import pooled
    from tierwise_tools.simulate import simulate

    records = [dataclasses.replace(r, models=("", "", "")) for r in shifted(300)]
    assert not pooled(records) and pooled(records + shifted(2))
    x = np.random.default_rng(0).normal(size=(300, 384)).astype(np.float32)
    cfg = load_config(ROOT / "tierwise.example.yaml")
    sim = simulate(records, x, HeadRegistry([head_always_tier_1()]), cfg, rate=1.0)
    assert [p["labels"] for p in sim.promotions if p["trigger"] == "schedule"] == [50, 100, 200]
    assert any(p["promoted"] for p in sim.promotions), "the head sending failing traffic to tier 1 is replaced"


def test_a_spent_budget_stops_the_labelling_and_the_retraining():
    from classifier_service.heads import HeadRegistry
    from tierwise_tools.simulate import simulate

    records = shifted(600)
    x = np.random.default_rng(0).normal(size=(600, 384)).astype(np.float32)
    cfg = load_config(ROOT / "tierwise.example.yaml")
    one = labelling_cost(records[0], cfg, cfg.shadow.judge_tier, 1)
    sim = simulate(records, x, HeadRegistry([head_always_tier_1()]), cfg, rate=1.0, budget=60.5 * one)
    spent = sim.labelling_usd[sim.shadowed]
    assert sim.shadowed.sum() == 61 and sim.shadowed[:61].all(), "as the router's shadow: none starts once spent"
    assert spent.sum() >= 60.5 * one > spent[:-1].sum()
    assert sim.budget_spent_at == 62
    assert [p["labels"] for p in sim.promotions] == [50], "no labels, no retraining past the budget"
    assert sim.result(100)["total"]["labelling_stopped_at_query"] == 62
    unlimited = simulate(records, x, HeadRegistry([head_always_tier_1()]), cfg, rate=1.0)
    assert unlimited.shadowed.all() and unlimited.budget_spent_at is None


def test_the_replay_says_after_how_many_queries_the_labelling_is_paid_back():
    from tierwise_tools.simulate import Simulation, summary

    records = [record(i) for i in range(40)]  # tier 3 costs 0.1, tier 1 0.001: 0.099 saved a query at tier 1
    labelling = np.zeros(40)
    labelling[0] = 1.0
    sim = Simulation(records, np.ones(40, dtype=int), labelling > 0, labelling)
    assert sim.pays_back_after() == 11, "10 x 0.099 < 1.0 <= 11 x 0.099"
    labelling[20] = 5.0
    assert sim.pays_back_after() is None, "still behind at the end"
    assert "not paid back" in summary(sim.result(100)["total"])
    sim.tiers[:] = 1
    labelling[:] = 0
    assert sim.pays_back_after() == 1 and "from query 1 on" in summary(sim.result(100)["total"])


def test_a_file_of_several_lineups_is_replayed_as_one_deployment_that_learns(tmp_path, capsys):
    """A fallback's or a new model version's name on some records must not stop the replay from learning."""
    lines = []
    for i in range(300):
        models = ("m1", "m2", "m3b" if i % 10 == 0 else "m3")
        lines.append(json.dumps({"id": f"d/{i}", "query": f"question {i}: which city is the capital of country {i}?",
                                 "outcomes": [{"tier": t, "model": m, "score": 1.0, "cost_usd": c}
                                              for t, m, c in zip((1, 2, 3), models, (0.001, 0.01, 0.1))]}))
    data = tmp_path / "traffic.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert main(["simulate", "--data", str(data), "--shadow-rate", "1", "--window", "100", "--json"]) == 0
    out = capsys.readouterr()
    assert "30 of 300 records name other tier models" in out.err and "one deployment of m1 / m2 / m3" in out.err
    result = json.loads(out.out)
    assert [p["labels"] for p in result["promotions"]] == [50, 100, 200], "it retrained on its labels"


def test_the_report_marks_where_the_budget_was_spent(tmp_path):
    from tierwise_tools.simulate import Simulation, report

    records = [record(i) for i in range(300)]
    labelling = np.where(np.arange(300) < 40, 0.05, 0.0)
    sim = Simulation(records, np.ones(300, dtype=int), labelling > 0, labelling, budget_spent_at=41)
    path = report(sim.result(100), 100, tmp_path / "report")
    text = path.read_text()
    assert "budget spent at query 41" in text and "from query" in text
    assert (tmp_path / "report" / "simulation.png").stat().st_size > 0


def test_a_window_where_tier_3_solved_nothing_is_undefined_and_the_output_stays_json(tmp_path, capsys):
    """Quality vs frontier is a ratio to tier 3's: null in a window where tier 3 solved nothing, never NaN, which
    strict JSON parsers refuse."""
    lines = [json.dumps({"id": f"u/{i}", "query": f"question {i}: what is the capital of country {i}?",
                         "outcomes": [{"tier": t, "model": f"m{t}", "score": float(not 20 <= i < 40),
                                       "cost_usd": c} for t, c in zip((1, 2, 3), (0.001, 0.01, 0.1))]})
             for i in range(60)]
    data = tmp_path / "traffic.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert main(["simulate", "--data", str(data), "--shadow-rate", "0.2", "--window", "20", "--json",
                 "--report", str(tmp_path / "report")]) == 0
    windows = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))[
        "windows"]
    assert windows[1]["quality_vs_frontier"] is None and windows[0]["quality_vs_frontier"] is not None
    assert "| undefined |" in (tmp_path / "report" / "REPORT.md").read_text()


def test_a_target_between_calibrated_ones_is_held_at_the_next_and_one_above_all_is_bad_input(tmp_path, capsys):
    data = tmp_path / "traffic.jsonl"
    data.write_text("".join(json.dumps({"id": f"v/{i}", "query": f"question {i}", "outcomes": [
        {"tier": t, "score": 1.0, "cost_usd": c} for t, c in zip((1, 2, 3), (0.001, 0.01, 0.1))]}) + "\n"
        for i in range(30)))
    assert main(["simulate", "--data", str(data), "--shadow-rate", "0.1", "--target-quality", "0.97", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["n"] == 30
    assert main(["simulate", "--data", str(data), "--shadow-rate", "0.1", "--target-quality", "0.995"]) == 2
    assert "--target-quality: head default has no tradeoff calibrated for quality 0.995 or above" in \
        capsys.readouterr().err
