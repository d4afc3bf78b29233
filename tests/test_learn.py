"""`tierwise learn`, the loop live: a router labels its traffic (shadow.labels), `learn` trains a head for its lineup,
checks it on labels it never saw and promotes it into the classifier's directory; the classifier swaps it in and the
router, naming no head, routes with it. Bad label files and refused candidates leave the serving heads as they were."""
from __future__ import annotations

import json
import urllib.request

import grpc
import pytest

from classifier_service.config import Config
from classifier_service.heads import TierHead
from tierwise.data import DataError, load
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc
from tierwise_tools.calibration import ALWAYS_TIER_3
from tierwise_tools.cli import main
from tierwise_tools.learn import read_labels

from .provider_double import Fault, ProviderDouble, unused_port
from .exported_metrics import wait_until
from .servers import KEY_ENV, router_config, running_router, start_classifier
from .test_promote import LINEUP, lineup_head, write
from .test_router_complete import ask, metric

# 40 requests: 32 of them train the head, 8 (the held-out fifth, by id hash) check it.
QUERIES = [f"What is {a} plus {b}?" for a in range(2, 12) for b in range(3, 7)]


def heads_dir(tmp_path):
    heads = tmp_path / "heads"
    TierHead.load(Config().heads_dir / "default" / "head.json").save(heads / "default" / "head.json")
    return heads


def contents(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_live_labels_become_the_head_a_router_naming_none_routes_with(tmp_path, capsys):
    heads = heads_dir(tmp_path)
    default = TierHead.load(heads / "default" / "head.json")
    labels = str(tmp_path / "labels" / "live-{host}.jsonl")
    env = {KEY_ENV: "k"}
    learn = ["learn", "--labels", labels, "--heads-dir", str(heads), "--json"]
    with ProviderDouble() as double:
        doc = router_config(double.base_url, strategy="embedding",
                            classifier={"timeout_ms": 5000, "head": "", "head_refresh_s": 0.2},
                            shadow={"share": 1.0, "labels": labels, "max_in_flight": len(QUERIES)})
        double.set_reply("t1-a", '{"score": 1.0}')  # the judge (tier 1) finds every tier 1 and 2 answer acceptable
        classifier = start_classifier("--heads-dir", str(heads), "--heads-reload-seconds", "0.2", env=env)
        try:
            with running_router(doc, classifier.address, tmp_path, env=env) as router, \
                    grpc.insecure_channel(router.address) as channel:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                probe = pb.RouteRequest(query=QUERIES[0])
                before = stub.Route(probe, timeout=10)
                assert before.head_version == default.version and not before.degraded
                for query in QUERIES:
                    stub.Complete(pb.CompleteRequest(messages=[pb.Message(role="user", content=query)],
                                                     strategy="heuristic"), timeout=10)
                written = list((tmp_path / "labels").glob("live-*.jsonl"))
                assert wait_until(lambda: sum(len(p.read_text().splitlines()) for p in written) == len(QUERIES))
                assert len(double.requests_for("t3-a")) == len(QUERIES), "every request labelled, tier 3 asked once"

                assert main(learn) == 0
                (outcome,) = json.loads(capsys.readouterr().out)["outcomes"]
                assert outcome["status"] == "promoted" and tuple(outcome["lineup"]) == LINEUP
                assert (outcome["labels"], outcome["held_out"]) == (40, 8) and outcome["head"].startswith("learned-")
                assert outcome["check"]["serving"]["head"] == "default", "checked against what served the lineup"
                learned = TierHead.load(heads / outcome["head"] / "head.json")
                assert learned.models == LINEUP and learned.card["n_dev"] == "32"

                assert wait_until(lambda: stub.Route(probe, timeout=10).head_version == learned.version), \
                    "the classifier swapped the head in and the router found it by its lineup, with no restart"
                after = stub.Route(probe, timeout=10)
                assert after.tier == 1 < before.tier and not after.degraded, \
                    "its own labels say tier 1 answers these as well as tier 3"
                router.wait_for(f"classifier head for this lineup: {outcome['head']}")

                # The same labels again: the same head, serving already, so nothing changes (nothing to do: 4).
                served = contents(heads)
                assert main(learn) == 4
                (again,) = json.loads(capsys.readouterr().out)["outcomes"]
                assert again["status"] == "already serving" and "the head serving already" in again["why"]
                assert contents(heads) == served
        finally:
            classifier.stop()


def test_a_candidate_worse_than_the_serving_head_on_unseen_labels_is_refused(tmp_path, capsys):
    heads = heads_dir(tmp_path)
    lineup_head("lineup-a-safe", ALWAYS_TIER_3).save(heads / "lineup-a" / "head.json")  # serves LINEUP today
    served = contents(heads)
    # Tier 1 answers every query it is trained on, and none of those it is checked on.
    data = write(write(tmp_path / "live.jsonl", [1.0] * 30, held_out=False), [0.0] * 10, held_out=True,
                 tier_2_scores=[0.0] * 10)
    assert main(["learn", "--labels", str(data), "--heads-dir", str(heads)]) == 3
    out = capsys.readouterr().out
    assert "lineup t1-a / t2-a / t3-a: 40 labels (10 held out to check on), head lineup-a" in out
    assert "refused on 10 records (held-out)" in out and "below the 0.95 target" in out
    assert contents(heads) == served, "the serving head is untouched, and no candidate was left beside it"


def test_labels_that_cannot_check_a_head_leave_no_head_behind(tmp_path, capsys):
    heads = heads_dir(tmp_path)
    data = write(tmp_path / "live.jsonl", [1.0] * 30, held_out=False)
    held = write(tmp_path / "held.jsonl", [1.0] * 5, held_out=True)
    lines = held.read_text().replace('"score": 1.0, "cost_usd": 0.1', '"score": 0.0, "cost_usd": 0.1')
    held.write_text(lines)
    refused_as_bad_input(heads, capsys, ["--labels", str(data), str(held)],
                         "35 labels (5 held out to check on), head learned-",
                         "tier 3 answered none of the 5 records acceptably")


def test_a_target_the_serving_head_cannot_keep_is_bad_input_naming_it(tmp_path, capsys):
    heads = heads_dir(tmp_path)
    lineup_head("lineup-a-safe", ALWAYS_TIER_3).save(heads / "lineup-a" / "head.json")
    data = write(write(tmp_path / "live.jsonl", [1.0] * 30, held_out=False), [1.0] * 10, held_out=True)
    refused_as_bad_input(heads, capsys, ["--labels", str(data), "--target-quality", "0.995"],
                         "40 labels (10 held out to check on), head lineup-a",
                         "no tradeoff calibrated for quality 0.995 or above")


def refused_as_bad_input(heads, capsys, argv: list[str], says: str, because: str) -> None:
    """`learn argv` ends as bad input (exit 2), its outcome line `says`, the error `because`; no head changes."""
    served = contents(heads)
    assert main(["learn", *argv, "--heads-dir", str(heads)]) == 2
    captured = capsys.readouterr()
    assert says in captured.out and because in captured.err, captured
    assert contents(heads) == served


def test_bad_label_files_are_named_by_file_and_line_and_change_nothing(tmp_path, capsys):
    heads = heads_dir(tmp_path)
    served = contents(heads)
    learn = ["learn", "--heads-dir", str(heads), "--labels"]

    # A writer still appending, or killed mid-line: a record cut short is skipped, with a warning. A killed shadow's
    # next append starts on a line of its own (tierwise/atomic.py), so one can sit mid-file too.
    torn = write(tmp_path / "torn.jsonl", [1.0] * 3, held_out=False)
    lines = torn.read_text().splitlines()
    torn.write_bytes("\n".join([lines[0], lines[1][:30], *lines[2:], lines[0][:-7] + "\u00e9"]).encode()[:-1])
    assert main([*learn, str(torn), "--scheduled"]) == 0, "too few labels yet is no failure to a scheduler"
    capsys.readouterr()
    assert main([*learn, str(torn)]) == 4
    captured = capsys.readouterr()
    assert f"{torn}:2: a record cut short" in captured.err and f"{torn}:4: a record cut short" in captured.err
    assert "2 labels" in captured.out and "too few: 2 labels to train on and 0 to check on" in captured.out
    # A last line complete but for its newline is a label.
    complete = write(tmp_path / "complete.jsonl", [1.0] * 3, held_out=False)
    complete.write_text(complete.read_text().rstrip("\n"))
    assert main([*learn, str(complete), "--json"]) == 4
    assert json.loads(capsys.readouterr().out)["outcomes"][0]["labels"] == 3

    # Any other line that is not a routing record is bad input, named by file and line.
    garbled = write(tmp_path / "garbled.jsonl", [1.0] * 3, held_out=False)
    garbled.write_text(garbled.read_text().replace("\n", "\nid,query,score\n", 1))
    assert main([*learn, str(garbled)]) == 2
    assert f"{garbled}:2: not a routing record" in capsys.readouterr().err
    comparisons = tmp_path / "shadow.jsonl"  # the shadow's comparison log, given by mistake
    comparisons.write_text(json.dumps({"ts": 1.0, "strategy": "embedding", "tier": 1, "agree": True}) + "\n")
    assert main([*learn, str(torn), str(comparisons)]) == 2
    assert f"{comparisons}:1: not a routing record" in capsys.readouterr().err
    assert main([*learn, str(tmp_path / "absent.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*learn, str(tmp_path / "nothing-yet-{host}.jsonl")]) == 4, "no replica has written labels yet"
    assert "no label files match" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*learn, str(torn), "--name", "Not A Name"])
    assert exit_.value.code == 2 and "must match" in capsys.readouterr().err
    assert contents(heads) == served


def test_labels_of_several_lineups_are_learned_one_head_each(tmp_path, capsys):
    heads = heads_dir(tmp_path)
    mixed = write(tmp_path / "live.jsonl", [1.0] * 5, held_out=False)
    other = write(tmp_path / "other.jsonl", [1.0] * 4, held_out=True).read_text().replace("t1-a", "t1-z")
    mixed.write_text(mixed.read_text() + other)
    assert main(["learn", "--labels", str(mixed), "--heads-dir", str(heads), "--json"]) == 4
    outcomes = json.loads(capsys.readouterr().out)["outcomes"]
    assert [(o["lineup"][0], o["labels"], o["status"]) for o in outcomes] == [("t1-a", 5, "too few"),
                                                                             ("t1-z", 4, "too few")]
    assert outcomes[0]["head"] != outcomes[1]["head"] and all(o["head"].startswith("learned-") for o in outcomes)
    assert main(["learn", "--labels", str(mixed), "--heads-dir", str(heads), "--name", "mine"]) == 2
    assert "the labels hold 2 tier lineups" in capsys.readouterr().err


def test_a_learned_heads_card_names_its_label_files_so_calibrate_leaves_their_records_out(tmp_path, capsys):
    """Calibrating a head on the records it was fitted on promises a quality it does not keep on new ones."""
    heads = heads_dir(tmp_path)
    for replica in ("a", "b"):
        (tmp_path / replica).mkdir()
    first = write(write(tmp_path / "a" / "replica-1.jsonl", [1.0] * 30, held_out=False), [1.0] * 10, held_out=True)
    second = write(tmp_path / "b" / "replica-2.jsonl", [1.0] * 5, held_out=False)
    second.write_text(second.read_text().replace('"id": "live/', '"id": "replica-2/'))
    # Two files of one name (in two directories), with the brackets a card's data line is read back by.
    third = tmp_path / "b" / "replica-1.jsonl"
    third.write_text(second.read_text().replace('"id": "replica-2/', '"id": "third/'))
    odd = tmp_path / "a" / "labels (1), old.jsonl"
    odd.write_text(second.read_text().replace('"id": "replica-2/', '"id": "odd/'))
    files = [first, second, third, odd]
    assert main(["learn", "--labels", *map(str, files), "--heads-dir", str(heads), "--json"]) == 0
    (outcome,) = json.loads(capsys.readouterr().out)["outcomes"]
    learned = TierHead.load(heads / outcome["head"] / "head.json")
    assert learned.card["data"] == ("labels _1__ old.jsonl (5 records), replica-1.jsonl (45 records), "
                                    "replica-2.jsonl (5 records)")
    assert main(["calibrate", "--data", *map(str, files), "--head", outcome["head"],
                 "--heads-dir", str(heads)]) == 2
    fitted = sum(not record.held_out for record in load(files))
    err = capsys.readouterr().err
    assert f"left out {fitted} records head" in err and f"the other {fitted} are records it was fitted on" in err


def test_a_label_whose_frontier_fails_first_still_pays_the_tiers_that_answered_after(tmp_path):
    """The frontier refuses at once (an open breaker does too); tier 2 answers later: paid, and counted."""
    labels, log, env = tmp_path / "live.jsonl", tmp_path / "shadow.jsonl", {KEY_ENV: "k"}
    with ProviderDouble() as double:
        double.set_persistent("t3-a", Fault.http_error(400))
        double.set_persistent("t2-a", Fault.delay(0.5))
        doc = router_config(double.base_url, shadow={"share": 1.0, "labels": str(labels), "log": str(log)})
        with running_router(doc, f"127.0.0.1:{unused_port()}", tmp_path, env=env) as router, \
                grpc.insecure_channel(router.address) as channel:
            router_pb2_grpc.RouterServiceStub(channel).Complete(ask(QUERIES[0], "tier1"), timeout=10)
            assert wait_until(lambda: log.exists() and log.read_text().strip()), "the shadow ran"
            asked_tier_2 = len(double.requests_for("t2-a"))
    record = json.loads(log.read_text().splitlines()[0])
    assert "error" in record and asked_tier_2 == 1 and record["spent_usd"] > 0, record


def test_a_burst_of_shadows_counts_what_they_will_cost_before_they_finish(tmp_path):
    """Shadows run in the background: a burst all started before the first was charged would spend the budget
    many times over. What the running ones are expected to cost counts against it from their start."""
    labels, port, env = tmp_path / "live.jsonl", unused_port(), {KEY_ENV: "k"}
    with ProviderDouble() as double:
        double.set_reply("t1-a", '{"score": 1.0}')
        double.set_persistent("t3-a", Fault.delay(1.0))  # the frontier's labels take a while
        doc = router_config(double.base_url, shadow={"share": 1.0, "labels": str(labels),
                                                     "monthly_budget_usd": 1e-6, "max_in_flight": 16})
        with running_router(doc, f"127.0.0.1:{unused_port()}", tmp_path, "--metrics-port", str(port),
                            env=env) as router, grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            calls = [stub.Complete.future(ask(f"{query} ({i})", "heuristic"), timeout=20)
                     for i, query in enumerate(QUERIES * 2)]
            assert all(call.result().content for call in calls)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    started = len(QUERIES * 2) - metric(text, "tierwise_router_shadow_total", outcome="over_budget")
    assert started == 1, f"{started} shadows started against a budget one of them spends"


def test_a_burst_counts_the_answers_other_tiers_may_give_not_only_the_one_sent(tmp_path):
    """Tier 1's answer was a few words, but the request lets every tier write 2,000 tokens: at the test prices the
    frontier's alone may cost $0.15, so a $0.50 budget has room for about three such shadows, not sixteen."""
    port, env = unused_port(), {KEY_ENV: "k"}
    with ProviderDouble() as double:
        double.set_reply("t1-a", '{"score": 1.0}')
        double.set_persistent("t3-a", Fault.delay(1.0))
        doc = router_config(double.base_url, shadow={"share": 1.0, "labels": str(tmp_path / "live.jsonl"),
                                                     "monthly_budget_usd": 0.5, "max_in_flight": 16})
        with running_router(doc, f"127.0.0.1:{unused_port()}", tmp_path, "--metrics-port", str(port),
                            env=env) as router, grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            calls = [stub.Complete.future(ask(f"{query} ({i})", "heuristic", max_tokens=2000), timeout=20)
                     for i, query in enumerate(QUERIES[:16])]
            assert all(call.result().tier == 1 for call in calls)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    started = 16 - metric(text, "tierwise_router_shadow_total", outcome="over_budget")
    assert 2 <= started <= 4, f"{started} shadows started"


@pytest.mark.parametrize("verdict", ['{"score": 1.0}', "a good answer, I would say"],
                         ids=["labelled", "no verdict"])
def test_the_shadow_stops_labelling_past_its_monthly_budget(tmp_path, verdict):
    """A shadow whose judge gives no verdict writes no label but paid every tier and the judge: it counts the
    same, or a judge that answers out of format would label without limit."""
    labels, log, port, env = tmp_path / "live.jsonl", tmp_path / "shadow.jsonl", unused_port(), {KEY_ENV: "k"}
    with ProviderDouble() as double:
        double.set_reply("t1-a", verdict)
        double.set_reply("t1-b", verdict)
        # The first label costs more than this budget; the heuristic strategy needs no classifier.
        doc = router_config(double.base_url, shadow={"share": 1.0, "labels": str(labels), "log": str(log),
                                                     "monthly_budget_usd": 1e-6})
        with running_router(doc, f"127.0.0.1:{unused_port()}", tmp_path, "--metrics-port", str(port),
                            env=env) as router, \
                grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            stub.Complete(ask(QUERIES[0], "heuristic"), timeout=10)
            assert wait_until(lambda: log.exists() and log.read_text().strip()), "the first shadow ran and was paid"
            for query in QUERIES[1:4]:
                stub.Complete(ask(query, "heuristic"), timeout=10)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert len(labels.read_text().splitlines()) == (verdict.startswith("{")) and len(double.requests_for("t3-a")) == 1
    assert metric(text, "tierwise_router_shadow_total", outcome="over_budget") == 3
    assert json.loads(log.read_text().splitlines()[0])["spent_usd"] > 1e-6
    said = [line for line in router.output if "no more shadows this month" in line]
    assert len(said) == 1 and "monthly budget of $1e-06" in said[0], "counted each time, said once"



def test_every_start_of_a_record_is_cut_short_and_any_other_bad_line_is_refused(tmp_path):
    """A torn line is the start of a record; a line bad before its end (a foreign file, a corrupted record) is
    named, and nothing is trained, where skipping it would train on a file that is not what it seems."""
    good = write(tmp_path / "good.jsonl", [1.0] * 2, held_out=False).read_text().splitlines()
    doc = {**json.loads(good[0]), "t": True, "f": False, "n": None, "x": -1.5e-3, "note": "caf\u00e9 \u2014 \\u"}
    torn = tmp_path / "torn.jsonl"
    for ascii_only in (False, True):  # UTF-8 cut mid-character; \u escapes cut mid-escape
        data = json.dumps(doc, ensure_ascii=ascii_only).encode()
        torn.write_bytes(b"\n".join([good[1].encode(), *(data[:i] for i in range(1, len(data)))]) + b"\n")
        warnings: list[str] = []
        assert len(read_labels(torn, warnings)) == 1
        assert len(warnings) == len(data) - 1 and all("a record cut short" in w for w in warnings)
        warnings.clear()  # train, eval and calibrate read the shadow's files with the same loader
        assert len(load([torn], warnings)) == 1 and len(warnings) == len(data) - 1
        torn.write_bytes(torn.read_bytes().replace(b"\n", b"\r\n"))  # saved with CRLF line endings
        assert len(read_labels(torn, [])) == 1
    record = json.dumps(doc)
    for bad in ["{'id': 'a', 'query': 'dict repr'}", record.replace('"query"', '"qu\u0000ery', 1),
                record.replace('", "', '" "', 1), record + " trailing", "{" * 100_000, '{"n": ' + "9" * 5000 + "}"]:
        torn.write_text(good[1] + "\n" + bad + "\n" + good[0] + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=f"{torn}:2: not a routing record"):
            read_labels(torn, [])
        with pytest.raises(DataError, match=f"{torn}:2: not a routing record"):
            load([torn])


def test_sigterm_leaves_no_copy_of_the_labels_behind(tmp_path, monkeypatch):
    """learn trains from files under a temporary directory holding the labels' queries: a CronJob's deadline or a
    stopped timer (SIGTERM) must not leave them in /tmp."""
    import os
    import signal
    import tempfile
    import time

    from tierwise_tools import learn as learning

    heads = heads_dir(tmp_path)
    data = write(tmp_path / "labels.jsonl", [1.0] * 60, held_out=False)
    write(data, [1.0] * 15, held_out=True)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def terminated(*args, **kwargs):
        assert list(scratch.iterdir()), "the labels are being trained on from the temporary directory"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal's handler ends this

    monkeypatch.setattr(learning, "_learn_lineup", terminated)
    with pytest.raises(SystemExit) as ended:
        main(["learn", "--labels", str(data), "--heads-dir", str(heads)])
    assert ended.value.code == 128 + signal.SIGTERM and list(scratch.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler is the command's only"
