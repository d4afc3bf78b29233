"""Files that hold paid-for or served results survive a kill at any moment: rewrites are atomic
(tierwise/atomic.py), appends add whole lines. The labelling test kills a real `tierwise label` process."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tierwise.atomic import append_line, changing, write_atomic
from tierwise.data import load

from .provider_double import ProviderDouble
from .servers import KEY_ENV, ROOT, router_config

PAID = 714  # records a killed resume once lost, all of them
NEW = 6  # queries left to label after them
TRIES = 10  # kills, each at a random moment; the loop always ends after TRIES
TRY_TIMEOUT_S = 30.0


def paid_record(i: int) -> dict:
    """A record as `tierwise label` writes it, with answers long enough that rewriting 714 of them takes a while."""
    return {"id": f"paid/{i}", "source": "paid", "task": "paid", "query": f"Paid question {i}?",
            "lineup": ["t1-a", "t2-a", "t3-a"],
            "outcomes": [{"tier": t, "model": m, "score": s, "cost_usd": 0.001 * t, "cost_estimated": False,
                          "response": f"answer {i} from {m}: " + "word " * 200}
                         for t, m, s in ((1, "t1-a", 0.5), (2, "t2-a", 1.0), (3, "t3-a", 1.0))],
            "judge_cost_usd": 0.0002}


def changed(directory, out, before) -> bool:
    """Whether `tierwise label` has started to rewrite `out`: a new file in its directory, or `out` itself changed."""
    try:
        st = out.stat()
        return set(os.listdir(directory)) != before[0] or (st.st_ino, st.st_size, st.st_mtime_ns) != before[1]
    except FileNotFoundError:
        return True


def test_killing_label_at_any_moment_keeps_every_paid_record(tmp_path):
    out = tmp_path / "labelled.jsonl"
    paid = [json.dumps(paid_record(i)) for i in range(PAID)]
    # A run killed mid-append left its last record cut short: the next run's resume rewrites the file without it.
    torn = json.dumps({**paid_record(PAID), "id": "new/0", "query": "New question 0?"})[:300]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"id": f"paid/{i}", "query": f"Paid question {i}?"}) + "\n"
                               for i in range(PAID))
                       + "".join(json.dumps({"id": f"new/{i}", "query": f"New question {i}?"}) + "\n"
                                 for i in range(NEW)))
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    env = {**os.environ, KEY_ENV: "k", "PYTHONUNBUFFERED": "1"}
    killed_in_rewrite = 0
    with ProviderDouble() as double:
        double.set_reply("t1-a", '{"score": 0.5}')
        config = tmp_path / "tierwise.yaml"
        config.write_text(yaml.safe_dump(router_config(double.base_url)))
        args = ["label", "--queries", str(queries), "--config", str(config), "--out", str(out), "--rate", "200"]
        for attempt in range(TRIES):
            out.write_text("".join(line + "\n" for line in paid) + torn)
            st = out.stat()
            before = (set(os.listdir(tmp_path)), (st.st_ino, st.st_size, st.st_mtime_ns))
            # Half the kills land just after the rewrite starts, the others at any moment of the run.
            at_rewrite = attempt % 2 == 0
            delay = rng.choice([0.0, rng.uniform(0, 0.003), rng.uniform(0, 0.03)]) if at_rewrite else rng.uniform(0, 3)
            proc = subprocess.Popen([sys.executable, "-m", "tierwise_tools.cli", *args], cwd=ROOT, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                started = time.monotonic()
                if at_rewrite:
                    while proc.poll() is None and not changed(tmp_path, out, before) \
                            and time.monotonic() - started < TRY_TIMEOUT_S:
                        time.sleep(0.0002)
                    killed_in_rewrite += proc.poll() is None
                time.sleep(delay)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            text = out.read_text()
            whole, _, last = text.rpartition("\n")
            lines = whole.split("\n") if whole else []
            context = f"try {attempt} (seed {seed}), killed {delay:.4f}s after {'the rewrite began' if at_rewrite else 'start'}"
            lost = len(set(paid) - set(lines))
            assert not lost, f"{context}: {lost} of {PAID} paid records lost"
            for line in lines:
                json.loads(line)  # every whole line is a whole record
            assert last in ("", torn) or not last.startswith('{"id": "paid/'), f"{context}: a paid record cut short"
        assert killed_in_rewrite >= TRIES // 4, "the kills did not reach the rewrite"

        # After all that, a run left alone finishes the job: every query labelled once, the paid ones not again.
        asked = len(double.requests)
        done = subprocess.run([sys.executable, "-m", "tierwise_tools.cli", *args], cwd=ROOT, env=env, timeout=120,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        records = load([out])
        assert sorted(r.id for r in records) == sorted([f"paid/{i}" for i in range(PAID)] + [f"new/{i}" for i in range(NEW)])
        assert set(paid) <= set(out.read_text().splitlines()), "the paid records are still byte for byte as written"
        assert len(double.requests) - asked <= NEW * 5, "no paid query was asked again"


def test_a_rewrite_that_fails_leaves_the_old_file_and_no_litter(tmp_path, monkeypatch):
    path = tmp_path / "head.json"
    path.write_text("old")
    path.chmod(0o640)
    write_atomic(path, "new")
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o640, "replaced, permissions kept"

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"newer")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["head.json"]


def test_a_cache_written_with_its_own_mode_and_no_fsync_is_still_whole(tmp_path, monkeypatch):
    path = tmp_path / "answer"
    path.write_text("old")
    path.chmod(0o644)
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    write_atomic(path, b"new", mode=0o600, durable=False)
    assert path.read_bytes() == b"new" and (path.stat().st_mode & 0o777) == 0o600, "the mode asked, not the old one"
    assert not synced and sorted(p.name for p in tmp_path.iterdir()) == ["answer"], "no fsync, no litter"
    write_atomic(path, b"kept")
    assert synced, "durable by default"


def test_append_line_adds_one_whole_line_never_glued_to_a_torn_one(tmp_path):
    path = tmp_path / "log.jsonl"
    append_line(path, '{"a": 1}')
    append_line(path, '{"b": "x"}')
    assert path.read_text() == '{"a": 1}\n{"b": "x"}\n'
    with path.open("a") as f:
        f.write('{"c": ')  # a line cut short by a killed writer
    append_line(path, '{"d": 4}')
    assert path.read_text().splitlines()[-2:] == ['{"c": ', '{"d": 4}'], "the next record stays readable"
    with pytest.raises(ValueError):
        append_line(path, "two\nlines")


def test_a_torn_embedding_cache_is_recomputed_not_loaded(tmp_path):
    from classifier_service.config import Config
    from classifier_service.encoder import Encoder
    from tierwise.data import Record
    from tierwise_tools.embeddings import embed_records

    encoder = Encoder(Config().encoder_dir, "int8", threads=1)
    records = [Record(id=f"r{i}", source="s", task="t", query=f"What is {i} squared?", models=("a", "b", "c"),
                      scores=(1.0, 1.0, 1.0), costs=(1.0, 2.0, 3.0), responses=("", "", ""))
               for i in range(3)]
    first = embed_records(encoder, records, tmp_path)
    [cache] = list(tmp_path.glob("*.npy"))
    cache.write_bytes(cache.read_bytes()[:-100])  # as a write cut short before this was atomic would leave it
    assert np.array_equal(embed_records(encoder, records, tmp_path), first)
    assert np.array_equal(np.load(cache), first), "the torn file was replaced by a whole one"
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]


def test_a_change_to_a_directory_waits_for_another_processs_change_to_end(tmp_path):
    """Two promotions into one heads directory, one after the other: each checks the head it replaces."""
    code = ("import sys, time; from tierwise.atomic import changing\n"
            "with changing(sys.argv[1]):\n    print('in', flush=True)")
    with changing(tmp_path):
        other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                 text=True)
        time.sleep(1.0)
        assert other.poll() is None, "it waits while this change holds the directory"
    assert other.communicate(timeout=30)[0] == "in\n" and other.returncode == 0
    assert list(tmp_path.iterdir()) == [], "nothing is left in the directory"


def test_a_volume_without_directory_locks_still_promotes_with_a_warning(tmp_path, monkeypatch, caplog):
    """NFS takes no flock on a directory, which cannot be opened for writing: go on, and say so."""
    import errno
    import fcntl

    def refuse(fd, operation):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with changing(tmp_path):
        (tmp_path / "head.json").write_text("{}")
    assert (tmp_path / "head.json").exists() and "cannot lock" in caplog.text


def test_a_head_whose_card_cannot_be_written_is_not_published(tmp_path):
    """The head goes in last: a classifier reloading the directory never serves a head beside another's card."""
    from classifier_service.config import Config
    from classifier_service.heads import TierHead

    head = TierHead.load(Config().heads_dir / "default" / "head.json")
    (tmp_path / "mine" / "MODEL_CARD.md").mkdir(parents=True)  # not a file: the card's write fails
    with pytest.raises(OSError):
        head.publish(tmp_path / "mine")
    assert not (tmp_path / "mine" / "head.json").exists()


def test_a_write_the_disk_refuses_names_its_file(tmp_path):
    """A full disk or a file too large fails a write() that names no file; the error a tool prints must say which
    file it was (RLIMIT_FSIZE stands in for a full volume: a real error, from the kernel)."""
    script = (
        "import resource, signal, sys\n"
        "from tierwise.atomic import append_line, write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "for write in (lambda: write_atomic(sys.argv[1], b'x' * 5000), lambda: append_line(sys.argv[2], 'y' * 5000)):\n"
        "    try:\n"
        "        write()\n"
        "    except OSError as err:\n"
        "        print(err)\n")
    head, labels = tmp_path / "head.json", tmp_path / "labels.jsonl"
    out = subprocess.run([sys.executable, "-c", script, str(head), str(labels)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    assert len(out) == 2 and "File too large" in out[0] and str(head) in out[0] and str(labels) in out[1], out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl"], "no litter; the labels file made at open"
