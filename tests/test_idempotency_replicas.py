"""Idempotency keys across replicas (`idempotency.shared_dir`): two real routers on 127.0.0.1 share a directory, as
replicas share a volume; a retry that reaches the other one waits for the work or gets its answer, and the provider
double is asked once."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import stat
import threading
import time

import grpc
import pytest
import yaml

from router_service import shared_answers
from router_service.shared_answers import CLAIMED, HELD, SharedAnswers
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .exported_metrics import scrape, value, wait_until
from .provider_double import Fault
from .servers import KEY_ENV, UNUSED_CLASSIFIER, http_address, post, router_config, running_router, start
from .test_idempotency import asked, replayed
from .test_router_complete import ask

SLOW_S = 1.5  # the provider's answer; past the routers' retry window below, under the providers' 2 s timeout
RETRY_WINDOW_S = 0.5
LEFT = 3  # callers that hang up during their replica's look at the directory


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, double):
    shared = tmp_path_factory.mktemp("shared")
    doc = router_config(double.base_url, strategy="cheapest",
                        idempotency={"shared_dir": str(shared), "retry_window_s": RETRY_WINDOW_S})
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    http = ("--http-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
    with running_router(doc, UNUSED_CLASSIFIER, one, *http, env={KEY_ENV: "k"}) as a, \
            running_router(doc, UNUSED_CLASSIFIER, two, *http, env={KEY_ENV: "k"}) as b:
        with grpc.insecure_channel(a.address) as ca, grpc.insecure_channel(b.address) as cb:
            yield shared, router_pb2_grpc.RouterServiceStub(ca), router_pb2_grpc.RouterServiceStub(cb), a, b


@pytest.fixture(autouse=True)
def clean(double):
    double.reset()
    yield
    double.reset()


def keyed(once: str) -> list[tuple[str, str]]:
    return [("idempotency-key", once)]


def settled(shared, pattern: str, within_s: float = 5.0) -> list:
    """The files matching `pattern` once none is left, or after a bounded wait: a replica gives up its claim just
    after it answers."""
    give_up = time.monotonic() + within_s
    while (left := list(shared.glob(pattern))) and time.monotonic() < give_up:
        time.sleep(0.01)
    return left


def slow_first(double, stub, request, once: str):
    """The first call with key `once`, its provider answering after SLOW_S, once the provider has it."""
    double.script("t1-a", Fault.delay(SLOW_S))
    first = stub.Complete.future(request, timeout=10, metadata=keyed(once))
    assert asked(double, 1)
    return first


def test_a_retry_on_another_replica_gets_the_answer_and_pays_nothing_again(replicas, double):
    shared, a, b, *_ = replicas
    request = ask("What is the tallest mountain?", "cheapest")
    first = a.Complete(request, timeout=10, metadata=keyed("across-1"))
    answer, call = b.Complete.with_call(request, timeout=10, metadata=keyed("across-1"))
    assert answer == first and replayed(call)
    assert len(double.requests_for("t1-a")) == 1, "the provider was asked once"
    (kept,) = shared.glob("*.answer")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600, "the answer's text is for the router alone"
    assert "across-1" not in kept.name, "named by a hash"
    assert not settled(shared, "*.claim"), "the claim is given up"


def test_a_retry_on_another_replica_waits_for_the_work_its_caller_left(replicas, double):
    _, a, b, *_ = replicas
    request = ask("Name a river in Africa.", "cheapest")
    first = slow_first(double, a, request, "across-2")
    first.cancel()  # the caller is gone; replica a would give up on the work after its retry window
    answer, call = b.Complete.with_call(request, timeout=10, metadata=keyed("across-2"))
    assert answer.content.startswith("answer from t1-a") and replayed(call)
    assert len(double.requests_for("t1-a")) == 1, "the retry waiting on b kept a's work going past its window"


def test_an_http_retry_on_another_replica_gets_the_answer(replicas, double):
    *_, a, b = replicas
    body = json.dumps({"model": "tierwise", "messages": [{"role": "user", "content": "Who wrote Hamlet?"}]}).encode()
    status, _, first = post(http_address(a), body, {"Idempotency-Key": "across-http"})
    assert status == 200, first
    status, headers, again = post(http_address(b), body, {"Idempotency-Key": "across-http"})
    assert status == 200 and {k.lower(): v for k, v in headers.items()}.get("idempotent-replayed") == "true", again
    assert again["choices"] == first["choices"]
    assert len(double.requests_for("t1-a")) == 1


def held_look(path) -> int:
    """A writer's end of a FIFO made at `path`, where a replica will look for an answer: its look blocks reading it
    until the end is closed, then finds nothing there, as on a slow volume. The end opens once the look has begun."""
    os.mkfifo(path, 0o600)
    give_up = time.monotonic() + 10
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads it yet
            assert time.monotonic() < give_up, "the replica never looked for the answer"
            time.sleep(0.005)


def test_the_work_of_a_caller_that_left_during_the_look_goes_on_for_its_retry(replicas, double):
    """Callers that hang up while their replica looks at the directory: the work a claim won still starts, and the
    retry on the other replica collects it. Each look is held open on a FIFO until its caller's call has ended."""
    shared, *_, a, b = replicas
    # The provider answers at once: work a caller left is given up after the retry window (0.5 s here) unless a
    # retry joins it, and a slow answer would make this test a race between the two on a busy machine.
    bodies = [json.dumps({"model": "tierwise", "messages": [{"role": "user", "content": f"Left at once {i}?"}]}).encode()
              for i in range(LEFT)]
    cancelled = lambda: value(scrape(a), "tierwise_router_calls_total", code="CANCELLED")
    for i, body in enumerate(bodies):
        before = cancelled()
        conn = http.client.HTTPConnection(http_address(a), timeout=10)
        conn.request("POST", "/v1/chat/completions", body,
                     {"content-type": "application/json", "Idempotency-Key": f"left-{i}"})
        fifo = shared / f"{SharedAnswers.name('', f'left-{i}')}.answer"
        end = held_look(fifo)
        try:
            conn.close()
            # Released within the look's own 2 s limit (a look past it fails, and its claim is given up), even on
            # a machine too busy to see the caller leave by then: that caller left just after the look instead.
            wait_until(lambda: cancelled() > before, seconds=1.5)
        finally:
            os.close(end)
            fifo.unlink()  # the look that opened it reads on to its end; later looks find no answer yet
        assert wait_until(lambda: cancelled() > before, seconds=10), "the router saw its caller leave"
    assert asked(double, LEFT), "every call's work started although its caller left"
    for i, body in enumerate(bodies):
        status, headers, answer = post(http_address(b), body, {"Idempotency-Key": f"left-{i}"})
        assert status == 200 and {k.lower(): v for k, v in headers.items()}.get("idempotent-replayed") == "true"
    assert len(double.requests_for("t1-a")) == LEFT


def test_the_same_key_with_another_request_on_another_replica_is_refused(replicas, double):
    _, a, b, *_ = replicas
    a.Complete(ask("What is 3 + 4?", "cheapest"), timeout=10, metadata=keyed("across-3"))
    with pytest.raises(grpc.RpcError) as err:
        b.Complete(ask("What is 5 + 6?", "cheapest"), timeout=10, metadata=keyed("across-3"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency-key" in err.value.details()
    assert len(double.requests_for("t1-a")) == 1


def test_another_request_with_a_key_whose_work_runs_elsewhere_is_refused_at_once(replicas, double):
    _, a, b, *_ = replicas
    first = slow_first(double, a, ask("What is 7 + 8?", "cheapest"), "across-6")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        b.Complete(ask("What is 9 + 10?", "cheapest"), timeout=10, metadata=keyed("across-6"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "idempotency-key" in err.value.details()
    assert time.monotonic() - started < SLOW_S / 2, "refused before the other replica's work ends"
    assert first.result().content.startswith("answer from t1-a")


def test_a_retry_waits_only_within_its_own_deadline(replicas, double):
    _, a, b, *_ = replicas
    request = ask("Which planet is largest?", "cheapest")
    first = slow_first(double, a, request, "across-4")
    with pytest.raises(grpc.RpcError) as err:
        b.Complete(request, timeout=0.3, metadata=keyed("across-4"))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert first.result().content.startswith("answer from t1-a")
    assert len(double.requests_for("t1-a")) == 1


def test_a_claim_a_dead_replica_left_is_taken_over(replicas, double):
    shared, a, b, *_ = replicas
    request = ask("What colour is the sky?", "cheapest")
    claim = shared / f"{SharedAnswers.name('', 'across-5')}.claim"
    claim.write_text("gone-host 1\n")
    past = time.time() - 120
    os.utime(claim, (past, past))
    answer, call = b.Complete.with_call(request, timeout=10, metadata=keyed("across-5"))
    assert answer.content.startswith("answer from t1-a") and not replayed(call)
    assert not settled(shared, claim.name)


def test_a_router_whose_shared_directory_it_cannot_write_does_not_start(tmp_path, double):
    doc = router_config(double.base_url, strategy="cheapest",
                        idempotency={"shared_dir": str(tmp_path / "missing" / "once")})
    (tmp_path / "tierwise.yaml").write_text(yaml.safe_dump(doc))
    router = start("router_service", "--listen", "127.0.0.1:0", "--config", str(tmp_path / "tierwise.yaml"),
                   "--classifier", UNUSED_CLASSIFIER, env={KEY_ENV: "k"})
    assert router.proc.wait(30) == 2
    router.stop()  # it has exited: this only waits for its last lines to come through the pipe
    assert "idempotency.shared_dir: cannot create files in" in "".join(router.output)
    assert "Traceback" not in "".join(router.output)



class Wall:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_at(directory) -> tuple[SharedAnswers, Wall]:
    wall = Wall(time.time())
    return SharedAnswers(directory, ttl_s=60.0, wall=wall), wall


FINGERPRINT = b"f" * 32


def test_an_answer_past_its_time_is_not_served_and_is_swept(tmp_path):
    store, wall = store_at(tmp_path)
    name, answer = SharedAnswers.name("k", "old"), pb.CompleteResponse(content="hi")
    assert store._step(name, FINGERPRINT) == CLAIMED
    assert store._step(name, FINGERPRINT) == HELD, "the claim holds a second look"
    store._release(name, FINGERPRINT, answer)
    assert store._step(name, FINGERPRINT) == answer
    with pytest.raises(ValueError):
        store._step(name, b"g" * 32)
    wall.now += 61
    assert store._step(name, FINGERPRINT) == CLAIMED, "an expired answer is no answer: the work runs again"
    store._release(name, FINGERPRINT, None)
    store._sweep()
    assert not list(tmp_path.iterdir())


def test_a_torn_or_foreign_answer_file_is_no_answer(tmp_path):
    store, _ = store_at(tmp_path)
    name = SharedAnswers.name("k", "torn")
    for junk in (b"", b"TWA1", b"not an answer at all, but long enough to hold a header" * 2):
        (tmp_path / f"{name}.answer").write_bytes(junk)
        assert store._step(name, FINGERPRINT) == CLAIMED
        store._release(name, FINGERPRINT, None)
    store._sweep()  # nor does a file it cannot parse stop the sweep


def test_a_claim_is_kept_fresh_while_its_work_runs_and_left_files_are_swept(tmp_path):
    store, wall = store_at(tmp_path)
    other, _ = store_at(tmp_path)
    name = SharedAnswers.name("k", "long")
    assert store._step(name, FINGERPRINT) == CLAIMED
    claim = tmp_path / f"{name}.claim"
    os.utime(claim, (wall.now - 20, wall.now - 20))
    store._heartbeat()
    other._wall = Wall(claim.stat().st_mtime + 20)
    assert other._step(name, FINGERPRINT) == HELD, "touched by its replica, the claim is not stale"
    other._wall = Wall(claim.stat().st_mtime + 31)
    assert other._step(name, FINGERPRINT) == CLAIMED, "untouched for 30 s, it is a dead replica's: taken over"
    store._release(name, FINGERPRINT, None)  # the first replica's work ends: the claim it lost is not its own
    assert claim.exists() and claim.name not in store._owned
    (tmp_path / f"{name}.wait").touch()
    os.utime(tmp_path / f"{name}.wait", (wall.now - 120, wall.now - 120))
    os.utime(claim, (wall.now - 120, wall.now - 120))
    store._sweep()
    assert not list(tmp_path.iterdir()), "claims and waits older than the answers' time are removed"


def test_a_router_whose_shared_directory_fails_answers_keyed_calls_as_if_it_had_none(tmp_path, double):
    shared = tmp_path / "shared"
    doc = router_config(double.base_url, strategy="cheapest", idempotency={"shared_dir": str(shared)})
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, "--http-listen", "127.0.0.1:0", env={KEY_ENV: "k"}) as router:
        shutil.rmtree(shared)  # the volume went away
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            request = ask("Where is Lima?", "cheapest")
            first = stub.Complete(request, timeout=10, metadata=keyed("no-dir"))
            again, call = stub.Complete.with_call(request, timeout=10, metadata=keyed("no-dir"))
        assert again == first and replayed(call), "this replica still knows the key"
        body = json.dumps({"model": "tierwise", "messages": [{"role": "user", "content": "Where is Quito?"}]}).encode()
        status, _, answer = post(http_address(router), body, {"Idempotency-Key": "no-dir-http"})
        assert status == 200, answer
        assert len(double.requests_for("t1-a")) == 2
    assert any("idempotency.shared_dir failed" in line for line in router.output), "said once, not per call"


@pytest.mark.parametrize("retry_after_sigterm", [False, True])
def test_a_stopping_replica_finishes_work_a_retry_elsewhere_waits_for(tmp_path, double, retry_after_sigterm):
    """A rollout stops a while its caller's retry waits on b, or reaches b just after a's SIGTERM: a finishes the
    work within its grace, b replays it, and a leaves no claim behind (a serves gRPC only: no HTTP drain)."""
    shared = tmp_path / "shared"
    doc = router_config(double.base_url, strategy="cheapest",
                        idempotency={"shared_dir": str(shared), "retry_window_s": RETRY_WINDOW_S})
    request = ask("How many moons has Mars?", "cheapest")
    for each in ("a", "b"):
        (tmp_path / each).mkdir()
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path / "b", env={KEY_ENV: "k"}) as b:
        with running_router(doc, UNUSED_CLASSIFIER, tmp_path / "a", env={KEY_ENV: "k"}) as a:
            with grpc.insecure_channel(a.address) as ca, grpc.insecure_channel(b.address) as cb:
                first = slow_first(double, router_pb2_grpc.RouterServiceStub(ca), request, "rollout")
                first.cancel()
                if retry_after_sigterm:
                    a.proc.send_signal(signal.SIGTERM)
                    time.sleep(0.3)
                retry = router_pb2_grpc.RouterServiceStub(cb).Complete.future(request, timeout=10,
                                                                               metadata=keyed("rollout"))
                if not retry_after_sigterm:
                    time.sleep(0.3)  # the retry waits on b
                    a.proc.send_signal(signal.SIGTERM)
                answer = retry.result()
                assert answer.content.startswith("answer from t1-a")
                assert ("idempotent-replayed", "true") in tuple(retry.trailing_metadata() or ())
                assert a.proc.wait(30) == 0, "a stopped cleanly once the work was done"
    assert len(double.requests_for("t1-a")) == 1, "the stopping replica finished the work instead of cutting it"
    assert not list(shared.glob("*.claim")), "no claim left to hold the key"


def test_a_claim_whose_release_fails_is_not_kept_fresh(tmp_path, monkeypatch):
    store, _ = store_at(tmp_path)
    name = SharedAnswers.name("k", "eio")
    assert store._step(name, FINGERPRINT) == CLAIMED

    def eio(claim):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "_still_ours", eio)
    with pytest.raises(OSError):
        store._release(name, FINGERPRINT, None)
    assert not store._owned, "the heartbeat no longer touches it: it goes stale and is taken over"


def test_a_claim_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    store, _ = store_at(tmp_path)

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        store._step(SharedAnswers.name("k", "full"), FINGERPRINT)
    assert not list(tmp_path.iterdir()) and not store._owned


def test_a_claim_made_after_its_caller_gave_up_on_a_slow_volume_is_given_up(tmp_path, monkeypatch):
    store, _ = store_at(tmp_path)
    slow, began, looked, look = threading.Event(), threading.Event(), threading.Event(), store._step

    def slow_step(*args):
        began.set()
        slow.wait(5)  # the volume answers only after the caller's time is up
        try:
            return look(*args)
        finally:
            looked.set()

    monkeypatch.setattr(store, "_step", slow_step)
    monkeypatch.setattr(shared_answers, "LOOK_TIMEOUT_S", 0.05)

    async def gives_up() -> None:
        with pytest.raises(TimeoutError):
            await store.step(SharedAnswers.name("k", "slow"), FINGERPRINT)

    asyncio.run(gives_up())
    slow.set()
    # Until the look ends the directory is empty because no claim is made yet; a look cancelled before it began
    # (its thread slower than the caller's 50 ms) makes none.
    assert looked.wait(5) or not began.is_set(), "the slow look ended"
    give_up = time.monotonic() + 5
    while (list(tmp_path.iterdir()) or store._owned) and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not list(tmp_path.iterdir()) and not store._owned, "no claim is left for nobody's work, nor kept fresh"
    store.close()
