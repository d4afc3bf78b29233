"""Bad command-line input is a one-line error and a non-zero exit, never a traceback: the `tierwise` subcommands
and the classifier's flags."""
from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from classifier_service import config as classifier_config
from tierwise_tools.cli import main

from .servers import ROOT



def records_text(n: int = 200) -> str:
    """`n` valid routing records (the cases need a good file beside the bad input, not real data)."""
    rng = random.Random(0)
    topics = ["a haiku about autumn", "the capital of France", "a SQL join", "a proof that sqrt(2) is irrational",
              "a recipe for bread", "Dijkstra's algorithm", "a cover letter", "the French revolution"]
    lines = []
    for i in range(n):
        outcomes = [{"tier": t, "model": f"m{t}", "score": float(rng.random() < 0.4 + 0.2 * t),
                     "cost_usd": 0.0001 * 10 ** t, "response": "ok"} for t in (1, 2, 3)]
        lines.append(json.dumps({"id": f"cli/{i}", "source": "cli", "task": f"t{i % 4}",
                                 "query": f"Explain {rng.choice(topics)} ({i})", "outcomes": outcomes}))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A directory of broken inputs, each named for what is wrong with it."""
    d = tmp_path_factory.mktemp("bad")
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00 not text")
    (d / "not-a-record.jsonl").write_text('{"query": "hi"}\n')
    (d / "a-dir").mkdir()
    (d / "bad.yaml").write_text("tiers: [\n")
    (d / "bad-config.yaml").write_text("tiers: []\nsurprise: 1\n")
    (d / "list.json").write_text("[1, 2]\n")
    (d / "odd-eval.json").write_text('{"operating_point": 5, "strategy": "x"}\n')
    (d / "two-tier-eval.json").write_text('{"operating_point": {"tier_mix": [0.5, 0.5]}, "strategy": "x"}\n')
    (d / "text-mix-eval.json").write_text('{"operating_point": {"tier_mix": ["a", "b", "c"]}, "strategy": "x"}\n')
    (d / "unreplayed-eval.json").write_text('{"operating_point": null, "strategy": "cascade"}\n')
    (d / "broken-heads" / "x").mkdir(parents=True)
    (d / "broken-heads" / "x" / "head.json").write_text('{"format": "nope"')
    (d / "candidate").mkdir()
    (d / "candidate" / "head.json").write_text('{"format": "nope"')
    (d / "records.jsonl").write_text(records_text())
    return d


# (argv with {bad} for the broken inputs' directory and {records} for a small valid records file,
#  what the error must name)
CASES = [
    ("train --name arena-A", "--name"),
    ("train --c abc", "--c"),
    ("train --data {bad}/missing.jsonl --no-prior", "missing.jsonl"),
    ("train --data {bad}/a-dir --no-prior", "a-dir"),
    ("train --data {bad}/binary.jsonl --no-prior", "binary.jsonl"),
    ("train --data {bad}/not-a-record.jsonl --no-prior", "not-a-record.jsonl"),
    ("train --data {records} --prior-heads {bad}/broken-heads", "--prior-heads"),
    ("train --data {records} --prior-heads {bad}/no-such-heads", "--prior-heads: "),
    ("train --data {records} --no-prior --out {bad}/binary.jsonl", "binary.jsonl"),
    ("simulate --data {records} --shadow-rate 0.5 --report {bad}/binary.jsonl/report", "binary.jsonl"),
    ("calibrate --data {records} --head nope", "nope"),
    ("calibrate --data {records} --heads-dir {bad}/broken-heads", "--heads-dir"),
    ("calibrate --data {records} --heads-dir {bad}/missing", "missing"),
    ("calibrate --data {records} --config {bad}/missing.yaml", "missing.yaml"),
    ("calibrate --data {records} --config {bad}/bad.yaml", "not valid YAML"),
    ("calibrate --data {records} --config {bad}/bad-config.yaml", "surprise"),
    ("calibrate --target-quality 1.5", "--target-quality"),
    ("eval --data {records} --strategy bogus", "bogus"),
    ("eval --data {records} --head nope", "nope"),
    ("eval --data {records} --heads-dir {bad}/broken-heads", "--heads-dir"),
    ("eval --data {records} --strategy cascade --gate vibes", "vibes"),
    ("eval --data {records} --config {bad}/bad-config.yaml", "tiers"),
    ("eval --data {bad}/binary.jsonl", "binary.jsonl"),
    ("eval --data {records} --split sideways", "--split"),
    ("promote --data {records} --candidate {bad}/missing", "missing"),
    ("promote --data {records} --candidate {bad}/candidate", "--candidate"),
    ("promote --data {records} --candidate models/heads/default --heads-dir {bad}/broken-heads --dry-run",
     "--heads-dir"),
    ("costs --queries-per-month abc", "--queries-per-month"),
    ("costs --queries-per-month 10 --mix a/b/c", "--mix"),
    ("costs --queries-per-month 10 --from-eval {bad}/list.json", "--from-eval"),
    ("costs --queries-per-month 10 --from-eval {bad}/odd-eval.json", "--from-eval"),
    ("costs --queries-per-month 10 --from-eval {bad}/binary.jsonl", "binary.jsonl: not JSON"),
    ("costs --queries-per-month 10 --from-eval {bad}/two-tier-eval.json", "tier_mix must be three shares"),
    ("costs --queries-per-month 10 --from-eval {bad}/text-mix-eval.json", "tier_mix must be three shares"),
    ("costs --queries-per-month 10 --from-eval {bad}/unreplayed-eval.json", "could not replay cascade"),
    ("costs --queries-per-month 10 --mix nan/50/50", "--mix"),
    ("costs --queries-per-month 10 --config {bad}/a-dir", "a-dir"),
    ("costs --queries-per-month 10 --config {bad}/bad-config.yaml", "surprise"),
    ("simulate --data {bad}/missing.jsonl --shadow-rate 0.1", "missing.jsonl"),
    ("simulate --data {records} --shadow-rate x", "--shadow-rate"),
    ("simulate --data {records} --shadow-rate 2", "--shadow-rate"),
    ("simulate --data {records} --shadow-rate 0.1 --seed x", "--seed"),
    ("simulate --data {records} --shadow-rate 0.1 --config {bad}/bad.yaml", "--config"),
    ("simulate --data {records} --shadow-rate 0.1 --heads-dir {bad}/broken-heads", "--heads-dir"),
    ("learn --labels {bad}/missing.jsonl --dry-run", "missing.jsonl"),
    ("learn --labels {bad}/binary.jsonl --dry-run", "binary.jsonl"),
    ("learn --labels {records} --dry-run --name 'Bad Name'", "--name"),
    ("learn --labels {records} --dry-run --prior-heads {bad}/broken-heads", "--prior-heads"),
    ("learn --labels {records} --heads-dir {records}", "--heads-dir"),
    ("label --queries {bad}/missing.jsonl --config tierwise.example.yaml", "missing.jsonl"),
    ("label --queries {bad}/binary.jsonl --config tierwise.example.yaml", "binary.jsonl: not UTF-8 text"),
    ("label --queries {records} --config {bad}/bad.yaml", "not valid YAML"),
    ("label --queries {records} --config tierwise.example.yaml --judge-tier 7", "--judge-tier"),
    ("route hi --address 127.0.0.1:1 --timeout 1", "UNAVAILABLE"),
    ("route hi --address '' --timeout 1", "route"),
    ("complete hi --max-tokens x", "--max-tokens"),
    ("simulate --data {records} --shadow-rate 0.5 --label-budget -1", "--label-budget"),
    ("simulate --data {records} --shadow-rate nan", "--shadow-rate"),
]


def argv(line: str, bad: Path) -> list[str]:
    return shlex.split(line.format(bad=bad, records=bad / "records.jsonl"))


@pytest.mark.parametrize("line, named", CASES,
                         ids=[c[0].replace("{bad}/", "").replace("{records}", "R") for c in CASES])
def test_bad_input_is_a_clean_error(line, named, bad, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        code = main(argv(line, bad))
    except SystemExit as err:  # argparse's own errors
        code = err.code
    stderr = capsys.readouterr().err
    assert code not in (0, None), stderr
    assert "Traceback" not in stderr and named in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("tierwise"), stderr


@pytest.mark.parametrize("line", ["train --name arena-A",
                                  "costs --queries-per-month 10 --from-eval {bad}/odd-eval.json"])
def test_the_installed_command_prints_no_traceback(line, bad):
    done = subprocess.run([sys.executable, "-m", "tierwise_tools.cli", *argv(line, bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len([x for x in done.stderr.splitlines() if x.startswith("tierwise")]) == 1, done.stderr


@pytest.mark.parametrize("line, named", [
    ("learn --labels {bad}/missing.jsonl --heads-dir {bad}", "missing.jsonl"),
    ("eval --data {bad}/not-a-record.jsonl", "not-a-record.jsonl"),
    ("eval --data {records} --strategy nope", "nope"),
    ("eval --data {records} --config {bad}/missing.yaml --strategy cascade", "--config: "),
    ("promote --candidate {bad} --data {bad}/binary.jsonl", "binary.jsonl"),
    ("simulate --data {records} --shadow-rate 1.5", "--shadow-rate"),
])
def test_json_prints_its_one_object_on_bad_input_too(line, named, bad, capsys, monkeypatch):
    """For a script or a scheduler that reads stdout: the object the help promises, with the exit code and why."""
    monkeypatch.chdir(ROOT)
    code = main([*argv(line, bad), "--json"])
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert code != 0 and printed == {"exit_code": code, "error": printed["error"]} and named in printed["error"]
    assert named in captured.err


@pytest.mark.parametrize("line, named", [
    ("learn --labels {bad}/missing.jsonl --heads-dir {bad} --target-quality 1.5", "--target-quality"),
    ("simulate --data {records} --window 0", "--window"),
    ("eval --data {records} --nonesuch", "--nonesuch"),
])
def test_json_prints_its_one_object_on_a_usage_error_too(line, named, bad, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as ended:
        main([*argv(line, bad), "--json"])
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert ended.value.code == 2 and printed == {"exit_code": 2, "error": printed["error"]}
    assert named in printed["error"] and named in captured.err


def test_a_failed_train_leaves_no_head_directory(bad, tmp_path, capsys):
    """promote and the classifier's reload read every directory under --out; an empty one left by a failed run
    would be a head that is not there."""
    out = tmp_path / "heads"
    assert main(["train", "--data", str(bad / "not-a-record.jsonl"), "--no-prior", "--out", str(out),
                 "--name", "mine"]) != 0
    assert "not-a-record.jsonl" in capsys.readouterr().err
    assert out.is_dir() and not (out / "mine").exists()


def test_the_cli_reads_the_router_address_the_other_clients_read(monkeypatch, capsys):
    monkeypatch.setenv("TIERWISE_ADDRESS", "127.0.0.1:9")
    assert main(["route", "hi", "--timeout", "1"]) != 0
    assert "127.0.0.1:9" in capsys.readouterr().err


def test_classifier_flags_report_every_problem_at_once(capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as err:
        classifier_config.parse(["--workers", "0", "--precision", "fp16", "--heads-reload-seconds", "-1",
                                 "--run-tokens", "-5", "--keep-warm-ms", "nan", "--max-batch-inflight", "8",
                                 "--max-text-bytes", "9000000", "--heads-dir", "/nonexistent/heads",
                                 "--cache-size", "-1", "--warmup-rounds", "-3", "--encoder-dir", str(tmp_path)])
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and "Traceback" not in stderr
    for problem in ("--precision must be int8 or fp32", "--workers must be at least 1",
                    "--heads-reload-seconds must be 0", "--run-tokens must be 0 (no cap) or more",
                    "--keep-warm-ms must be 0 (off) to 60000", "--max-batch-inflight (8) must be at least --max-batch",
                    "--cache-size must be 0 or more", "--warmup-rounds must be 0 or more",
                    f"--encoder-dir: {tmp_path} holds no exported encoder",
                    "must stay under 2 GiB", "--heads-dir: /nonexistent/heads is not a directory"):
        assert problem in stderr, stderr


def test_a_bad_classifier_environment_variable_is_a_clean_error(capsys, monkeypatch):
    monkeypatch.setenv("TIERWISE_CLASSIFIER_WORKERS", "many")
    with pytest.raises(SystemExit) as err:
        classifier_config.parse([])
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and "--workers" in stderr and "'many'" in stderr, stderr
    monkeypatch.setenv("TIERWISE_CLASSIFIER_WORKERS", "3")
    assert classifier_config.parse([]).workers == 3


def test_a_default_head_the_directory_lacks_stops_the_classifier_with_one_line():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "classifier_service", "--listen", "127.0.0.1:0", "--default-head",
                           "nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert "default head 'nope' is not loaded" in done.stdout, done.stdout
