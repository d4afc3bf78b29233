"""The spend ledger: per-key monthly limits and the shadow's budget that outlive a restart and add up across replicas
(real files; a real router restarted on the same ledger, answering from the provider double)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import logging
import time
import urllib.request
from datetime import datetime, timezone

import grpc
import pytest
import yaml

from router_service.ledger import LedgerError, SpendLedger
from router_service.limits import Limits
from tierwise.v1 import router_pb2_grpc

from .provider_double import ProviderDouble, unused_port
from .servers import KEY_ENV, ROOT, router_config, running_router, start, watch
from .test_learn import QUERIES, wait_until
from .test_router_complete import ask, metric

NOV, DEC = (datetime(2026, m, 15, tzinfo=timezone.utc).timestamp() for m in (11, 12))


def ledger(tmp_path, host: str, wall=lambda: DEC) -> SpendLedger:
    return SpendLedger(str(tmp_path / "spend-{host}.json"), sync_s=1.0, wall=wall, host=host)


def test_a_restart_resumes_the_months_spend(tmp_path):
    first = ledger(tmp_path, "a")
    first.charge("key:main", 1.25)
    first.charge("shadow", 0.5)
    first.flush()
    again = ledger(tmp_path, "a")
    assert again.spent("key:main") == 1.25 and again.spent("shadow") == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == [".spend-a.json.lock", "spend-a.json"], \
        "written atomically: no temporary file left"


def test_replicas_sharing_a_directory_add_up_each_others_spend(tmp_path):
    a, b = ledger(tmp_path, "a"), ledger(tmp_path, "b")
    a.charge("key:main", 1.0)
    assert b.spent("key:main") == 0.0, "not before a syncs and b re-reads"
    a.sync()
    b.sync()
    assert b.spent("key:main") == 1.0
    b.charge("key:main", 2.0)
    b.sync()
    a.sync()
    assert a.spent("key:main") == b.spent("key:main") == 3.0
    assert ledger(tmp_path, "c").spent("key:main") == 3.0, "a new replica starts from the others' files"


def test_a_key_at_its_limit_on_one_replica_is_refused_on_another(tmp_path):
    a, b = Limits(wall=lambda: DEC, ledger=ledger(tmp_path, "a")), Limits(wall=lambda: DEC, ledger=ledger(tmp_path, "b"))
    assert a.admit("spender", 0, 1.0) is None
    a.charge("spender", 1.0)
    a.ledger.sync()
    b.ledger.sync()
    refusal = b.admit("spender", 0, 1.0)
    assert refusal is not None and refusal.kind == "spend_limited" and "spent $1 of its $1 in" in refusal.message
    assert b.ledger.spent("shadow") == 0.0, "a key's spend is not the shadow's"
    a.charge("tiny", 1.5e-6)  # a limit of a few millionths reads as itself, not "$0.0000 of its $0.00"
    assert "spent $1.5e-06 of its $1e-06 in" in a.admit("tiny", 0, 1e-6).message


def test_a_new_month_starts_from_zero(tmp_path):
    now = [NOV]
    a = ledger(tmp_path, "a", lambda: now[0])
    a.charge("shadow", 4.0)
    a.flush()
    ledger(tmp_path, "b", lambda: NOV).sync()
    assert ledger(tmp_path, "b", lambda: NOV).spent("shadow") == 4.0
    now[0] = DEC
    assert a.spent("shadow") == 0.0
    assert ledger(tmp_path, "a", lambda: DEC).spent("shadow") == 0.0, "November's file does not count in December"
    assert ledger(tmp_path, "b", lambda: DEC).spent("shadow") == 0.0, "nor another replica's"
    a.charge("shadow", 1.0)
    a.flush()
    assert json.loads((tmp_path / "spend-a.json").read_text()) == {"month": "2026-12", "usd": {"shadow": 1.0}}


@pytest.mark.parametrize("text", ["{not json", '{"month": "2026-12"}', '{"month": "2026-12", "usd": {"k": -1}}',
                                  '{"month": "2026-12", "usd": {"k": "1"}}', "[]"])
def test_an_unreadable_own_file_stops_the_start_naming_it(tmp_path, text):
    (tmp_path / "spend-a.json").write_text(text)
    with pytest.raises(LedgerError, match=r"spend\.ledger: cannot read .*spend-a\.json .*repair or remove it"):
        ledger(tmp_path, "a")


def test_an_unreadable_replica_file_keeps_the_spend_last_read_from_it(tmp_path, caplog):
    b = ledger(tmp_path, "b")
    b.charge("key:main", 2.0)
    b.flush()
    a = ledger(tmp_path, "a")
    assert a.spent("key:main") == 2.0
    (tmp_path / "spend-b.json").write_text("{torn")
    with caplog.at_level(logging.WARNING, logger="tierwise.router.ledger"):
        a.sync()
    assert a.spent("key:main") == 2.0
    assert "spend-b.json" in caplog.text and "keeping the spend last read" in caplog.text
    (tmp_path / "spend-c.json").write_text("[]")
    with caplog.at_level(logging.WARNING, logger="tierwise.router.ledger"):
        a.sync()
    assert a.spent("key:main") == 2.0 and "spend-c.json" in caplog.text and "not counting it" in caplog.text


def test_without_a_file_the_ledger_is_this_process_alone(tmp_path):
    memory = SpendLedger(wall=lambda: DEC)
    memory.charge("shadow", 1.0)
    memory.sync()
    memory.flush()
    assert memory.spent("shadow") == 1.0 and memory.path is None and not list(tmp_path.iterdir())


def test_the_limits_and_the_budget_hold_across_a_router_restart(tmp_path):
    """One router spends past a key's monthly limit and past the shadow's budget; the router started after it on
    the same ledger refuses that key and starts no shadow, where one counting from zero would do both again."""
    keys = tmp_path / "keys"
    keys.write_text("tw-main-3f9c2a7d41b85e60 id=main\ntw-spend-c04f9b2e7a1d6853 id=spender monthly_usd=0.000001\n")
    main_key, spender = (("authorization", "Bearer tw-main-3f9c2a7d41b85e60"),), \
        (("authorization", "Bearer tw-spend-c04f9b2e7a1d6853"),)
    log, spend = tmp_path / "shadow.jsonl", tmp_path / "spend-{host}.json"
    with ProviderDouble() as double:
        double.set_reply("t1-a", '{"agree": true}')  # the judge's verdict (and the cheapest tier's answer)
        doc = router_config(double.base_url, shadow={"share": 1.0, "log": str(log), "monthly_budget_usd": 1e-6},
                            spend={"ledger": str(spend), "sync_s": 1.0})
        args = ("--api-keys-file", str(keys))
        with running_router(doc, f"127.0.0.1:{unused_port()}", tmp_path, *args, env={KEY_ENV: "k"}) as router, \
                grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert stub.Complete(ask(QUERIES[0], "cheapest"), metadata=spender, timeout=10).cost_usd > 1e-6
            assert wait_until(lambda: log.exists() and log.read_text().strip()), "the first shadow ran and was paid"
        written = json.loads(next(tmp_path.glob("spend-*.json")).read_text())
        assert written["usd"]["key:spender"] > 1e-6 and written["usd"]["shadow"] > 1e-6, "flushed at shutdown"
        assert "tw-spend" not in json.dumps(written), "key ids, never keys"
        shadows_before = len(log.read_text().splitlines())
        port = unused_port()
        with running_router(doc, f"127.0.0.1:{unused_port()}", tmp_path, *args, "--metrics-port", str(port),
                            env={KEY_ENV: "k"}) as router, grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Complete(ask(QUERIES[1], "cheapest"), metadata=spender, timeout=10)
            assert stub.Complete(ask(QUERIES[2], "cheapest"), metadata=main_key, timeout=10).content
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "monthly spend limit" in err.value.details()
    assert metric(text, "tierwise_router_shadow_total", outcome="over_budget") == 1
    assert len(log.read_text().splitlines()) == shadows_before, "no shadow started after the restart"


def test_a_router_whose_ledger_cannot_be_read_does_not_start(tmp_path):
    (tmp_path / "spend.json").write_text("{torn")
    config = tmp_path / "tierwise.yaml"
    config.write_text(yaml.safe_dump(router_config("http://127.0.0.1:9/v1",
                                                   spend={"ledger": str(tmp_path / "spend.json")})))
    router = start("router_service", "--listen", "127.0.0.1:0", "--config", str(config),
                   "--classifier", f"127.0.0.1:{unused_port()}", env={KEY_ENV: "k"})
    assert router.proc.wait(30) == 2
    deadline = time.monotonic() + 5
    while "repair or remove it" not in "".join(router.output) and time.monotonic() < deadline:
        time.sleep(0.05)  # the last lines may still be on their way from the pipe
    assert "spend.ledger: cannot read" in "".join(router.output)


def test_an_unwritable_ledger_path_fails_at_start_not_at_the_first_charge(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(LedgerError, match=r"spend\.ledger: cannot write .*not-a-directory/spend-a\.json"):
        SpendLedger(str(blocker / "spend-{host}.json"), host="a")


def test_a_second_process_on_the_host_may_not_keep_the_same_file(tmp_path):
    """{host} names a host, not a process: two routers on one host given one path would overwrite each other."""
    path = str(tmp_path / "spend-{host}.json")
    code = "from router_service.ledger import SpendLedger; import sys; SpendLedger(sys.argv[1], host='a'); print('ok')"
    first = watch(subprocess.Popen([sys.executable, "-c", code + "; import time; time.sleep(30)", path], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    first.wait_for("ok")
    try:
        second = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60,
                                cwd=ROOT)
    finally:
        first.stop()
    assert second.returncode != 0 and "kept by another router process (on this host" in second.stderr
    again = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.stdout.strip() == "ok", "given back when its process ends"


def test_files_of_replicas_gone_before_this_month_are_not_read(tmp_path):
    b = ledger(tmp_path, "b")
    b.charge("key:main", 2.0)
    b.flush()
    gone = (tmp_path / "spend-b.json")
    gone.write_text('{"month": "2026-12", "usd": {"key:main": 2.0}}')
    old = datetime(2026, 10, 3, tzinfo=timezone.utc).timestamp()
    os.utime(gone, (old, old))  # claims December, but nobody has written it since October
    assert ledger(tmp_path, "a").spent("key:main") == 0.0


@pytest.mark.parametrize("setting", ["labels", "log"])
def test_a_shadow_file_it_cannot_write_stops_the_start_not_the_first_paid_label(tmp_path, setting):
    """A shadow path on a read-only filesystem, or under a volume not mounted: labels paid for would be lost."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "tierwise.yaml"
    config.write_text(yaml.safe_dump(router_config("http://127.0.0.1:9/v1", shadow={
        "share": 1.0, setting: str(blocker / "live-{host}.jsonl")})))
    router = start("router_service", "--listen", "127.0.0.1:0", "--config", str(config),
                   "--classifier", f"127.0.0.1:{unused_port()}", env={KEY_ENV: "k"})
    assert router.proc.wait(30) == 2
    deadline = time.monotonic() + 5
    while f"shadow.{setting}: cannot write" not in "".join(router.output) and time.monotonic() < deadline:
        time.sleep(0.05)  # the last lines may still be on their way from the pipe
    assert f"shadow.{setting}: cannot write" in "".join(router.output) and "Traceback" not in "".join(router.output)
