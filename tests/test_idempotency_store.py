"""The store behind idempotency keys (router_service/idempotency.py), driven directly with an injected clock: what it
keeps and for how long, that work under way is never pushed out, retries' own deadlines, and work a caller left.
The router-level behaviour is in test_idempotency.py."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry import trace

from router_service.config import ConfigError, parse
from router_service.idempotency import ENTRY_BYTES, Once, checked
from tierwise.serving import Rejected
from tierwise.v1 import router_pb2 as pb
from tierwise_client.client import _once

from .servers import router_config


def store(max_mb: float = 1.0, ttl_s: float = 10.0, window_s: float = 10.0, now: list[float] | None = None) -> Once:
    clock = (lambda: now[0]) if now is not None else None
    return Once(max_mb, ttl_s, window_s, trace.get_tracer("test"), **({"clock": clock} if clock else {}))


def request(text: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.Message(role="user", content=text)])


class Provider:
    """The work a call does: counts its runs, answers `text` padded to `size` bytes, after `gate` opens if given."""

    def __init__(self, size: int = 10, fail: Rejected | None = None):
        self.runs, self.size, self.fail = 0, size, fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, span) -> pb.CompleteResponse:
        self.runs += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return pb.CompleteResponse(content="x" * self.size)


async def ask(once: Once, key: str, work: Provider, text: str = "q", deadline: float | None = None) -> bool:
    return (await once.run("k", key, request(text), deadline, trace.INVALID_SPAN, work))[1]


def test_an_answer_is_kept_for_its_ttl_and_expired_ones_go_without_being_asked_for():
    now = [0.0]
    once, work = store(ttl_s=10.0, now=now), Provider()

    async def scenario() -> list[bool]:
        seen = [await ask(once, "a", work), await ask(once, "a", work)]
        now[0] = 11.0
        seen.append(await ask(once, "a", work))  # expired: asked again
        now[0] = 22.0
        await ask(once, "b", work)  # "a" expired meanwhile: dropped as "b" is kept, though nobody asked for it
        return seen

    assert asyncio.run(scenario()) == [False, True, False]
    assert work.runs == 3 and len(once) == 1


def test_what_is_kept_stays_within_max_mb_least_recently_used_out_first():
    once = store(max_mb=0.0035)  # 3,500 bytes: two answers of 1,000 (framing, key and bookkeeping: about 1,420 each)
    work = Provider(size=1000)

    async def scenario() -> list[bool]:
        for key in ("a", "b"):
            await ask(once, key, work)
        hit = await ask(once, "a", work)  # "a" is now the most recently used
        await ask(once, "c", work)  # "b" goes
        return [hit, await ask(once, "a", work), await ask(once, "b", work)]

    assert asyncio.run(scenario()) == [True, True, False]
    assert once.kept_bytes <= 3500


def test_the_callers_keys_count_against_max_mb_too():
    """A key is up to 255 characters of the caller's choosing: with short answers, keys and bookkeeping are most of
    what is held."""
    once = store(max_mb=0.01)
    work = Provider(size=10)

    async def scenario() -> None:
        for i in range(100):
            await ask(once, f"{i:03d}" + "k" * 252, work)

    asyncio.run(scenario())
    assert once.kept_bytes <= 10_000 and len(once) <= 10_000 // (255 + ENTRY_BYTES)


def test_an_answer_larger_than_max_mb_is_not_kept_and_pushes_nothing_out():
    once = store(max_mb=0.0015)
    small, huge = Provider(size=500), Provider(size=5000)

    async def scenario() -> list[bool]:
        await ask(once, "small", small)
        await ask(once, "huge", huge)
        return [await ask(once, "small", small), await ask(once, "huge", huge)]

    assert asyncio.run(scenario()) == [True, False]
    assert (small.runs, huge.runs) == (1, 2)


def test_work_under_way_is_never_pushed_out_by_what_is_kept():
    once = store(max_mb=0.0015)
    slow, quick = Provider(size=1000), Provider(size=1000)
    slow.gate.clear()

    async def scenario() -> bool:
        first = asyncio.create_task(ask(once, "slow", slow))
        await asyncio.sleep(0)
        for key in ("b", "c", "d"):
            await ask(once, key, quick)  # more than max_mb, one after another
        retry = asyncio.create_task(ask(once, "slow", slow))
        await asyncio.sleep(0)
        slow.gate.set()
        await first
        return await retry

    assert asyncio.run(scenario()) is True
    assert slow.runs == 1


def test_a_retry_waits_no_longer_than_its_own_deadline_and_leaves_the_work_going():
    once, work = store(), Provider()
    work.gate.clear()

    async def scenario():
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(ask(once, "a", work))
        await asyncio.sleep(0)
        with pytest.raises(Rejected) as err:
            await ask(once, "a", work, deadline=loop.time() + 0.05)
        work.gate.set()
        return err.value.code, await first

    code, first_replayed = asyncio.run(scenario())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and first_replayed is False and work.runs == 1


def test_a_retry_asks_again_when_the_work_it_waited_for_ran_out_of_the_first_callers_time():
    once = store()
    cut = Provider(fail=Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed"))
    cut.gate.clear()
    again = Provider()

    async def scenario() -> bool:
        first = asyncio.create_task(ask(once, "a", cut))
        await asyncio.sleep(0)
        retry = asyncio.create_task(ask(once, "a", again))
        await asyncio.sleep(0)
        cut.gate.set()
        with pytest.raises(Rejected):
            await first
        return await retry

    assert asyncio.run(scenario()) is False  # its own answer, not a replay
    assert (cut.runs, again.runs) == (1, 1)


def test_a_retry_gets_the_same_failure_as_the_work_it_waited_for():
    once = store()
    refused = Provider(fail=Rejected(grpc.StatusCode.UNAVAILABLE, "every provider was asked"))
    refused.gate.clear()

    async def scenario():
        first = asyncio.create_task(ask(once, "a", refused))
        await asyncio.sleep(0)
        retry = asyncio.create_task(ask(once, "a", refused))
        await asyncio.sleep(0)
        refused.gate.set()
        return await asyncio.gather(first, retry, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert [o.code for o in outcomes] == [grpc.StatusCode.UNAVAILABLE] * 2 and refused.runs == 1


def test_work_its_caller_left_stops_after_the_retry_window_unless_a_retry_comes():
    once = store(window_s=0.05)
    left_alone, joined = Provider(), Provider()
    left_alone.gate.clear()
    joined.gate.clear()

    async def scenario() -> tuple[bool, bool]:
        callers = [asyncio.create_task(ask(once, key, work)) for key, work in (("alone", left_alone),
                                                                               ("joined", joined))]
        await asyncio.sleep(0)
        for caller in callers:
            caller.cancel()
        retry = asyncio.create_task(ask(once, "joined", joined))
        await asyncio.sleep(0.2)  # past the window
        joined.gate.set()
        left_alone.gate.set()
        replayed = await retry
        await asyncio.sleep(0)
        return replayed, await ask(once, "alone", left_alone)

    joined_replayed, alone_replayed = asyncio.run(scenario())
    assert joined_replayed is True, "a retry within the window kept the work going"
    assert alone_replayed is False and left_alone.runs == 2, "the work nobody came back for was cancelled"


def test_closing_cancels_the_work_callers_left_but_not_what_a_retry_waits_for():
    once = store()
    alone, waited = Provider(), Provider()
    alone.gate.clear()
    waited.gate.clear()

    async def scenario():
        callers = [asyncio.create_task(ask(once, key, work)) for key, work in (("alone", alone), ("waited", waited))]
        await asyncio.sleep(0)
        for caller in callers:
            caller.cancel()
        retry = asyncio.create_task(ask(once, "waited", waited))
        await asyncio.sleep(0)
        await once.close()
        waited.gate.set()
        return await retry

    assert asyncio.run(scenario()) is True


def test_the_key_is_checked_the_client_can_send_none_and_the_settings_are_validated():
    assert checked(None) == "" and checked("a-b_c.1:2") == "a-b_c.1:2"
    for bad in ("", "has space", "x" * 256):
        with pytest.raises(Rejected):
            checked(bad)
    assert ("idempotency-key", "mine") in _once((), "mine")
    assert not [k for k, _ in _once((("a", "b"),), "") if k == "idempotency-key"], "'' sends no key"
    assert [k for k, _ in _once((), None)] == ["idempotency-key"]
    fixed = (("idempotency-key", "in-the-options"),)  # would name every call alike
    keys = {dict(_once(fixed, None))["idempotency-key"] for _ in range(2)}
    assert len(keys) == 2 and "in-the-options" not in keys
    doc = router_config("http://127.0.0.1:1/v1")
    assert parse({**doc, "idempotency": {"max_mb": 5, "ttl_s": 60}}).idempotency.max_mb == 5
    for bad in ({"max_mb": 0}, {"ttl_s": 0}, {"retry_window_s": -1}):
        with pytest.raises(ConfigError, match="idempotency"):
            parse({**doc, "idempotency": bad})


def test_two_retries_of_work_cut_short_ask_again_once_between_them():
    once = store()
    cut = Provider(fail=Rejected(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed"))
    cut.gate.clear()
    again = Provider()
    again.gate.clear()

    async def scenario() -> list[bool]:
        first = asyncio.create_task(ask(once, "a", cut))
        await asyncio.sleep(0)
        retries = [asyncio.create_task(ask(once, "a", again)) for _ in range(2)]
        await asyncio.sleep(0)
        cut.gate.set()
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.sleep(0.01)
        again.gate.set()
        return sorted(await asyncio.gather(*retries))

    assert asyncio.run(scenario()) == [False, True]
    assert again.runs == 1


def test_a_replay_with_log_probabilities_is_the_answer_as_given_whatever_a_caller_did_to_an_earlier_one():
    once = store()
    answer = pb.CompleteResponse(content="hi there", logprobs=[
        pb.TokenLogprob(token=t, logprob=-0.5, bytes=t.encode(),
                        top_logprobs=[pb.TokenLogprob(token=t, logprob=-0.5), pb.TokenLogprob(token="x", logprob=-2)])
        for t in ("hi", " there")])

    async def work(span) -> pb.CompleteResponse:
        return pb.CompleteResponse.FromString(answer.SerializeToString())

    async def scenario() -> list[pb.CompleteResponse]:
        first, _ = await once.run("k", "a", request("q"), None, trace.INVALID_SPAN, work)
        second, replayed = await once.run("k", "a", request("q"), None, trace.INVALID_SPAN, work)
        assert replayed
        second.logprobs[0].top_logprobs.pop()  # what a caller may do to its own copy
        second.content = "changed"
        third, _ = await once.run("k", "a", request("q"), None, trace.INVALID_SPAN, work)
        return [first, third]

    first, third = asyncio.run(scenario())
    assert first == answer and third == answer
    # max_mb bounds what the memory holds: the answers as serialized, with their keys and bookkeeping
    assert once.kept_bytes == answer.ByteSize() + len("k") + len("a") + ENTRY_BYTES
