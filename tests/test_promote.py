"""`tierwise promote` against a real classifier serving the heads directory: a candidate that misses the target
on unseen records is refused, one that does better is installed and served without a restart."""
from __future__ import annotations

import dataclasses
import json
import time

import grpc
import pytest

from tierwise_tools.calibration import ALWAYS_TIER_3
from classifier_service.config import Config
from classifier_service.heads import HeadRegistry, TierHead
from tierwise_tools.cli import main
from tierwise.data import is_held_out
from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc

from .servers import start_classifier

LINEUP = ("t1-a", "t2-a", "t3-a")
TOPICS = ["prime numbers", "French verbs", "binary search", "photosynthesis", "tax brackets", "sorting a list"]


def write(path, tier_1_scores: list[float], held_out: bool, tier_2_scores: list[float] | None = None):
    """Records of LINEUP in the shared format whose ids fall in the held-out fifth (or out of it); tier 3
    always answers acceptably, tier 2 too unless `tier_2_scores` says otherwise."""
    lines, i = [], 0
    while len(lines) < len(tier_1_scores):
        rid = f"live/{held_out}/{i}"
        i += 1
        if is_held_out(rid) != held_out:
            continue
        score, second = tier_1_scores[len(lines)], 1.0 if tier_2_scores is None else tier_2_scores[len(lines)]
        lines.append(json.dumps({"id": rid, "source": "live", "task": "chat",
                                 "query": f"Question {i} about {TOPICS[i % len(TOPICS)]}: explain it briefly.",
                                 "outcomes": [{"tier": t, "model": LINEUP[t - 1], "score": s, "cost_usd": c,
                                               "cost_estimated": True, "response": "answer"}
                                              for t, s, c in ((1, score, 0.001), (2, second, 0.01), (3, 1.0, 0.1))]}))
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def lineup_head(version: str, tradeoff: float, relative_cost=None) -> TierHead:
    """The default head's weights for LINEUP, calibrated (by fiat) to `tradeoff`: 100 sends everything to tier 1,
    ALWAYS_TIER_3 everything to tier 3. No support check, so the fixture's queries route by tradeoff alone."""
    default = TierHead.load(Config().heads_dir / "default" / "head.json")
    return dataclasses.replace(default, name="lineup-a", version=version, models=LINEUP, support=None,
                               tradeoff=tradeoff, target_quality=0.95, calibration={"0.95": tradeoff},
                               relative_cost=relative_cost or default.relative_cost)


def served(stub) -> dict[str, str]:
    return {h.name: h.version for h in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads}


def test_promote_refuses_a_head_that_misses_the_target_and_installs_a_better_one_live(tmp_path, capsys):
    heads, candidate = tmp_path / "heads", tmp_path / "candidate"
    TierHead.load(Config().heads_dir / "default" / "head.json").save(heads / "default" / "head.json")
    lineup_head("lineup-a-safe", ALWAYS_TIER_3).save(heads / "lineup-a" / "head.json")
    lineup_head("lineup-a-bold", 100.0).publish(candidate)
    serving_bytes = (heads / "lineup-a" / "head.json").read_bytes()
    # Held out, tier 1 fails half the time; the development records (which `train` fits on) say nothing here.
    hard = write(tmp_path / "hard.jsonl", [1.0, 0.0] * 10, held_out=True)
    # Held out, tier 1 always answers; development records where it never does must not be counted.
    easy = write(write(tmp_path / "easy.jsonl", [1.0] * 20, held_out=True), [0.0] * 40, held_out=False)
    promote = ["promote", "--candidate", str(candidate), "--heads-dir", str(heads)]

    service = start_classifier("--heads-dir", str(heads), "--heads-reload-seconds", "0.2")
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = classifier_pb2_grpc.ClassifierServiceStub(channel)
            assert served(stub)["lineup-a"] == "lineup-a-safe"

            assert main([*promote, "--data", str(hard), "--json"]) == 3
            refused = json.loads(capsys.readouterr().out)
            assert refused["candidate"]["quality_vs_frontier"] == pytest.approx(0.5)
            assert refused["serving"]["quality_vs_frontier"] == pytest.approx(1.0) and refused["n"] == 20
            assert "below the 0.95 target" in refused["why"] and not refused["promoted"]
            assert (heads / "lineup-a" / "head.json").read_bytes() == serving_bytes

            assert main([*promote, "--data", str(easy), "--dry-run"]) == 0
            assert "would promote (dry run) on 20 records (held-out)" in capsys.readouterr().out
            assert (heads / "lineup-a" / "head.json").read_bytes() == serving_bytes

            assert main([*promote, "--data", str(easy), "--json"]) == 0
            done = json.loads(capsys.readouterr().out)
            assert done["promoted"] and done["candidate"]["tier_mix"] == [1.0, 0.0, 0.0]
            assert done["candidate"]["cost_savings"] == pytest.approx(0.99)
            assert done["serving"]["cost_savings"] == pytest.approx(0.0)
            assert (heads / "lineup-a" / "head.json").read_bytes() == (candidate / "head.json").read_bytes()
            assert (heads / "lineup-a" / "head.json.previous").read_bytes() == serving_bytes
            assert (heads / "lineup-a" / "MODEL_CARD.md").exists()

            deadline = time.monotonic() + 15
            while served(stub)["lineup-a"] != "lineup-a-bold" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert served(stub) == {"default": TierHead.load(heads / "default" / "head.json").version,
                                    "lineup-a": "lineup-a-bold"}, "the classifier swapped the head in, no restart"
            reply = stub.Classify(pb.ClassifyRequest(text="Explain prime numbers briefly.", head="lineup-a"), timeout=10)
            assert reply.tier == 1 and reply.head_version == "lineup-a-bold"

            assert main([*promote, "--data", str(easy)]) == 0, "the same head again: nothing to install"
            assert "already serving on" in capsys.readouterr().out

            promoted_card = (heads / "lineup-a" / "MODEL_CARD.md").read_bytes()
            assert main(["rollback", "--name", "lineup-a", "--heads-dir", str(heads)]) == 0
            assert "serving lineup-a-safe again (was lineup-a-bold" in capsys.readouterr().out
            assert (heads / "lineup-a" / "head.json").read_bytes() == serving_bytes
            assert not (heads / "lineup-a" / "MODEL_CARD.md").exists(), "the safe head had no card"
            assert (heads / "lineup-a" / "MODEL_CARD.md.previous").read_bytes() == promoted_card
            deadline = time.monotonic() + 15
            while served(stub)["lineup-a"] != "lineup-a-safe" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert served(stub)["lineup-a"] == "lineup-a-safe", "rolled back while serving, no restart"

            assert main(["rollback", "--name", "lineup-a", "--heads-dir", str(heads)]) == 0, "again: undone"
            assert (heads / "lineup-a" / "head.json").read_bytes() == (candidate / "head.json").read_bytes()
            assert (heads / "lineup-a" / "MODEL_CARD.md").read_bytes() == promoted_card
            assert (heads / "lineup-a" / "head.json.previous").read_bytes() == serving_bytes
    finally:
        assert service.stop() == 0


def test_rollback_names_what_it_cannot_do_and_changes_nothing(tmp_path, capsys):
    heads = tmp_path / "heads"
    lineup_head("lineup-a-safe", ALWAYS_TIER_3).save(heads / "lineup-a" / "head.json")
    before = (heads / "lineup-a" / "head.json").read_bytes()
    for name, says in (("lineup-a", "nothing to roll back to"), ("nope", "--name: no head 'nope'"),
                       ("..", "--name: no head '..'")):
        assert main(["rollback", "--name", name, "--heads-dir", str(heads)]) == 2
        assert says in capsys.readouterr().err
    (heads / "lineup-a" / "head.json.previous").write_text('{"name": "lineup-a", "version": ')
    assert main(["rollback", "--name", "lineup-a", "--heads-dir", str(heads)]) == 2
    assert "head.json.previous: not valid JSON" in capsys.readouterr().err
    assert (heads / "lineup-a" / "head.json").read_bytes() == before, "a damaged previous head changes nothing"


@pytest.mark.parametrize("cards", [True, False])
def test_a_rollback_killed_part_way_loses_neither_head(tmp_path, monkeypatch, cards):
    """Killed once the head is replaced but before the one it replaced is set aside (here: that step fails), the
    next rollback first finishes the swap, then undoes it: the head served before the first rollback serves again,
    and nothing was lost on the way."""
    import os

    head_dir = tmp_path / "heads" / "lineup-a"
    lineup_head("lineup-a-old", ALWAYS_TIER_3).save(head_dir / "head.json.previous")
    lineup_head("lineup-a-new", 100.0).save(head_dir / "head.json")
    if cards:
        (head_dir / "MODEL_CARD.md.previous").write_text("old card")
        (head_dir / "MODEL_CARD.md").write_text("new card")
    serving, kept = (head_dir / "head.json").read_bytes(), (head_dir / "head.json.previous").read_bytes()
    replace, killed = os.replace, []

    def kill_on_setting_aside(src, dst, *args, **kwargs):
        if str(dst).endswith("head.json.previous") and not killed:
            killed.append(dst)
            raise KeyboardInterrupt("killed")
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", kill_on_setting_aside)
    with pytest.raises(KeyboardInterrupt):
        main(["rollback", "--name", "lineup-a", "--heads-dir", str(tmp_path / "heads")])
    assert killed and (head_dir / "head.json").read_bytes() == kept, "killed after the head was replaced"
    assert main(["rollback", "--name", "lineup-a", "--heads-dir", str(tmp_path / "heads")]) == 0
    assert (head_dir / "head.json").read_bytes() == serving and (head_dir / "head.json.previous").read_bytes() == kept
    if cards:
        assert (head_dir / "MODEL_CARD.md").read_text() == "new card"
        assert (head_dir / "MODEL_CARD.md.previous").read_text() == "old card"
    assert sorted(p.name for p in head_dir.iterdir() if ".swap" in p.name) == []


def test_promote_names_what_is_wrong_with_its_input(tmp_path, capsys):
    candidate = tmp_path / "candidate"
    lineup_head("lineup-a-bold", 100.0).publish(candidate)
    other = tmp_path / "other.jsonl"
    other.write_text(write(tmp_path / "x.jsonl", [1.0] * 5, held_out=True).read_text().replace("t1-a", "t1-z"))
    args = ["promote", "--candidate", str(candidate), "--heads-dir", str(tmp_path / "heads"), "--data"]
    assert main([*args, str(other)]) == 2
    assert "no records from the candidate's lineup t1-a / t2-a / t3-a" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "x.jsonl")]) == 2
    assert "--heads-dir: " in (err := capsys.readouterr().err) and "heads is not a directory" in err
    assert not (tmp_path / "heads").exists(), "a mistyped directory is not created"
    (tmp_path / "heads").mkdir()
    assert main([*args, str(tmp_path / "x.jsonl"), "--target-quality", "0.99"]) == 2
    assert "no tradeoff calibrated for quality 0.99 or above" in capsys.readouterr().err
    (candidate / "head.json").write_text('{"format": "tierwise.head/v2", "na')
    assert main([*args, str(tmp_path / "x.jsonl")]) == 2
    assert "--candidate: " in (err := capsys.readouterr().err) and "head.json: not valid JSON" in err
    lineup_head("lineup-a-bold", 100.0).publish(candidate)
    (tmp_path / "heads" / "lineup-a").mkdir(parents=True)
    (tmp_path / "heads" / "lineup-a" / "head.json").write_text('{"format": "tierwise.head/v1"}')
    assert main([*args, str(tmp_path / "x.jsonl")]) == 2
    assert "--heads-dir: " in (err := capsys.readouterr().err) and "is not 'tierwise.head/v2'" in err


def test_a_head_for_a_lineup_another_head_serves_is_refused_by_name(tmp_path, capsys):
    """A lineup is served by one head: installed beside it under another name, the candidate would never be
    looked up, while promote said routers use it."""
    heads, candidate = tmp_path / "heads", tmp_path / "candidate"
    lineup_head("lineup-a-safe", 0.0).save(heads / "lineup-a" / "head.json")
    served = (heads / "lineup-a" / "head.json").read_bytes()
    dataclasses.replace(lineup_head("bold", 100.0), name="zz-mine").publish(candidate)
    easy = write(tmp_path / "easy.jsonl", [1.0] * 20, held_out=True)
    assert main(["promote", "--candidate", str(candidate), "--heads-dir", str(heads), "--data", str(easy)]) == 2
    err = capsys.readouterr().err
    assert "head lineup-a already serves the lineup t1-a / t2-a / t3-a" in err and "--name lineup-a" in err
    assert sorted(p.name for p in heads.iterdir()) == ["lineup-a"]
    assert (heads / "lineup-a" / "head.json").read_bytes() == served
    # Its own directory there already (two heads of one lineup, say from an older promote): still refused.
    dataclasses.replace(lineup_head("old", 0.0), name="zz-mine").save(heads / "zz-mine" / "head.json")
    assert main(["promote", "--candidate", str(candidate), "--heads-dir", str(heads), "--data", str(easy)]) == 2
    assert "head lineup-a already serves" in capsys.readouterr().err


def test_a_head_in_a_directory_of_another_name_is_refused_before_anything_is_installed(tmp_path, capsys):
    """Installed by name beside a copy named otherwise, a head would make two of one name: the classifier would
    refuse every reload (and its next start), while promote said routers use it."""
    heads, candidate = tmp_path / "heads", tmp_path / "candidate"
    lineup_head("lineup-a-safe", 0.0).save(heads / "prod-lineup" / "head.json")
    lineup_head("bold", 100.0).publish(candidate)
    easy = write(tmp_path / "easy.jsonl", [1.0] * 20, held_out=True)
    assert main(["promote", "--candidate", str(candidate), "--heads-dir", str(heads), "--data", str(easy)]) == 2
    err = capsys.readouterr().err
    assert "prod-lineup/head.json holds head 'lineup-a'" in err and "rename the directory to lineup-a" in err, err
    assert sorted(p.name for p in heads.iterdir()) == ["prod-lineup"], "nothing installed"
    lineup_head("lineup-a-safe", 0.0).save(heads / "lineup-a" / "head.json")
    with pytest.raises(ValueError, match=r"prod-lineup/head.json both hold head 'lineup-a'"):
        HeadRegistry.from_dir(heads)


def test_a_new_head_is_weighed_against_the_head_serving_its_lineup_today(tmp_path, capsys):
    heads, candidate = tmp_path / "heads", tmp_path / "candidate"
    TierHead.load(Config().heads_dir / "default" / "head.json").save(heads / "default" / "head.json")
    lineup_head("lineup-a-bold", 100.0).publish(candidate)
    easy = write(tmp_path / "easy.jsonl", [1.0] * 20, held_out=True)
    assert main(["promote", "--candidate", str(candidate), "--heads-dir", str(heads), "--data", str(easy),
                 "--dry-run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["serving"]["head"] == "default", "no head of its own yet: the default head serves this lineup"
    assert result["candidate"]["cost_savings"] > result["serving"]["cost_savings"] and not result["promoted"]
    assert not (heads / "lineup-a").exists()


def test_a_candidate_below_the_target_still_replaces_a_serving_head_that_does_worse(tmp_path, capsys):
    """Refusing keeps the serving head, which is no safer when it does worse on the very same records."""
    heads, candidate = tmp_path / "heads", tmp_path / "candidate"
    lineup_head("lineup-a-bold", 100.0).save(heads / "lineup-a" / "head.json")  # always tier 1
    # Tier 2 priced at nothing and the others far above quality: this head always answers at tier 2.
    lineup_head("lineup-a-mid", 100.0, relative_cost=(1.0, 0.0, 1.0)).publish(candidate)
    data = write(tmp_path / "d.jsonl", [1.0, 0.0] * 20, held_out=True, tier_2_scores=[0.0] * 10 + [1.0] * 30)
    assert main(["promote", "--candidate", str(candidate), "--heads-dir", str(heads), "--data", str(data),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["candidate"]["quality_vs_frontier"] == pytest.approx(0.75)
    assert result["candidate"]["quality_vs_frontier_upper_bound"] < 0.95, "40 records show it misses the target"
    assert result["serving"]["quality_vs_frontier"] == pytest.approx(0.5)
    assert result["promoted"] and "the candidate is the better of the two" in result["why"]
    assert TierHead.load(heads / "lineup-a" / "head.json").version == "lineup-a-mid"


@pytest.mark.parametrize("n, promoted", [(20, True), (300, False)])
def test_a_candidate_just_under_the_target_is_refused_only_when_the_records_show_it(tmp_path, capsys, n, promoted):
    """Its calibration already holds the target with a bound: 2 misses in 20 held-out records are noise, 30 in 300
    are evidence (decision 0024)."""
    heads, candidate = tmp_path / "heads", tmp_path / "candidate"
    lineup_head("lineup-a-safe", ALWAYS_TIER_3).save(heads / "lineup-a" / "head.json")
    lineup_head("lineup-a-mid", 100.0, relative_cost=(1.0, 0.0, 1.0)).publish(candidate)  # always tier 2
    data = write(tmp_path / "d.jsonl", [0.0] * n, held_out=True, tier_2_scores=([0.0] + [1.0] * 9) * (n // 10))
    assert main(["promote", "--candidate", str(candidate), "--heads-dir", str(heads), "--data", str(data),
                 "--json"]) == (0 if promoted else 3)
    result = json.loads(capsys.readouterr().out)
    assert result["candidate"]["quality_vs_frontier"] == pytest.approx(0.9)
    assert (result["candidate"]["quality_vs_frontier_upper_bound"] >= 0.95) == promoted
    assert result["promoted"] == promoted
    assert ("within these records' noise of 0.95" if promoted else "below the 0.95 target") in result["why"]
    assert TierHead.load(heads / "lineup-a" / "head.json").version == ("lineup-a-mid" if promoted else "lineup-a-safe")


def test_promoting_the_serving_head_again_installs_nothing_and_keeps_the_head_a_rollback_restores(tmp_path, capsys):
    """As when a nightly learn trains the same head on unchanged labels: the candidate passes (it is within noise
    of the target), but writing it over itself would keep it as its own head.json.previous."""
    heads, candidate = tmp_path / "heads", tmp_path / "candidate"
    lineup_head("lineup-a-safe", ALWAYS_TIER_3).save(heads / "lineup-a" / "head.json")
    lineup_head("lineup-a-mid", 100.0, relative_cost=(1.0, 0.0, 1.0)).publish(candidate)  # always tier 2
    data = write(tmp_path / "d.jsonl", [0.0] * 20, held_out=True, tier_2_scores=([0.0] + [1.0] * 9) * 2)
    promote = ["promote", "--candidate", str(candidate), "--heads-dir", str(heads), "--data", str(data)]
    assert main([*promote, "--json"]) == 0 and json.loads(capsys.readouterr().out)["promoted"]
    kept = (heads / "lineup-a" / "head.json.previous").read_bytes()
    # Trained again the next night: the same weights, another date in its version and card.
    again = TierHead.load(candidate / "head.json")
    dataclasses.replace(again, card={**again.card, "trained": "2099-01-01"}).versioned("2099-01-01").publish(candidate)
    assert main(promote) == 0
    out = capsys.readouterr().out
    assert "already serving" in out and "answers as the head serving already does (version lineup-a-mid)" in out
    assert (heads / "lineup-a" / "head.json.previous").read_bytes() == kept
    assert main(["rollback", "--name", "lineup-a", "--heads-dir", str(heads)]) == 0
    assert TierHead.load(heads / "lineup-a" / "head.json").version == "lineup-a-safe"
