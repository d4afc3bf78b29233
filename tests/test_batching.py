"""Where the micro-batcher runs the encoder: with inline_max_tokens set, on the event loop for a lone short text;
on the workers otherwise."""
import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier_service.batching import BULK_EVERY, MicroBatcher
from classifier_service.config import Config
from classifier_service.encoder import Encoder


INLINE_MAX_TOKENS = 64


class ThreadNotingEncoder(Encoder):
    """The real encoder, noting the thread of each run."""

    def __init__(self):
        super().__init__(Config().encoder_dir, "int8", threads=1)
        self.threads: list[str] = []

    def embed_tokens(self, batch):
        self.threads.append(threading.current_thread().name)
        return super().embed_tokens(batch)


def run(coro_fn):
    encoder = ThreadNotingEncoder()
    sizes: list[int] = []
    batcher = MicroBatcher(encoder, workers=2, max_batch=32, on_batch=sizes.append, inline_max_tokens=INLINE_MAX_TOKENS)
    try:
        result = asyncio.run(coro_fn(batcher))
    finally:
        batcher.close()
    return encoder, sizes, result


def test_a_lone_short_text_runs_on_the_event_loop():
    encoder, sizes, out = run(lambda b: b.embed(["What is the capital of France?"]))
    assert encoder.threads == ["MainThread"]
    assert sizes == [1]
    assert out[0].tokens < INLINE_MAX_TOKENS and abs(np.linalg.norm(out[0].vector) - 1) < 1e-3


def test_a_lone_long_text_goes_to_a_worker():
    text = "Explain each step of the proof and why it holds. " * 20
    encoder, sizes, out = run(lambda b: b.embed([text]))
    assert out[0].tokens > INLINE_MAX_TOKENS
    assert len(encoder.threads) == 1 and encoder.threads[0].startswith("encoder")
    assert sizes == [1]


def test_calls_arriving_together_all_go_to_the_workers():
    texts = [f"Question number {i}: what is {i} squared?" for i in range(6)]

    async def together(batcher):
        return await asyncio.gather(*(batcher.embed([t]) for t in texts))

    encoder, sizes, out = run(together)
    assert len(out) == len(texts) and all(len(r) == 1 for r in out)
    assert encoder.threads and all(name.startswith("encoder") for name in encoder.threads)
    assert sum(sizes) == len(texts)


def test_the_loop_and_a_worker_give_a_lone_text_the_same_embedding():
    text = "Summarise the plot of Hamlet in two sentences."

    async def both(batcher):
        alone = await batcher.embed([text])
        # A second text queued with it sends both to a worker, each still in a run of its own length.
        with_mate = await asyncio.gather(batcher.embed([text]), batcher.embed(["hi"]))
        return alone[0], with_mate[0][0]

    encoder, _, (on_loop, on_worker) = run(both)
    assert encoder.threads[0] == "MainThread" and encoder.threads[-1].startswith("encoder")
    assert on_loop.tokens == on_worker.tokens
    assert float(on_loop.vector @ on_worker.vector) > 0.999


def test_by_default_every_text_goes_to_a_worker():
    encoder = ThreadNotingEncoder()
    batcher = MicroBatcher(encoder, workers=2, max_batch=32)
    try:
        asyncio.run(batcher.embed(["hi"]))
    finally:
        batcher.close()
    assert len(encoder.threads) == 1 and encoder.threads[0].startswith("encoder")


class GatedEncoder(ThreadNotingEncoder):
    """The real encoder; a run of a text containing "hold" waits for `gate`, one containing "fail" raises."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.holding = threading.Event()  # a held run has started
        self.embedded: list[int] = []  # texts per run

    def embed_tokens(self, batch):
        if any(self.has(t, "hold") for t in batch):
            self.holding.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if any(self.has(t, "fail") for t in batch):
            raise RuntimeError("encoder failed")
        self.embedded.append(len(batch))
        return super().embed_tokens(batch)

    def has(self, tokens, word: str) -> bool:
        return self._tokenizer.token_to_id(word) in tokens.ids


def gated(workers=1, max_batch=1):
    encoder = GatedEncoder()
    return encoder, MicroBatcher(encoder, workers=workers, max_batch=max_batch)


def test_a_free_worker_takes_what_queued_without_the_event_loop():
    encoder, batcher = gated()
    texts = ["hold the first", "second question", "third question"]

    async def queue_then_block():
        tasks = [asyncio.create_task(batcher.embed([t])) for t in texts]
        await asyncio.sleep(0)  # every call queues its text
        encoder.gate.set()
        # The loop is blocked from here on: only the worker can move the queue along.
        deadline = time.monotonic() + 10
        while len(encoder.embedded) < len(texts) and time.monotonic() < deadline:
            time.sleep(0.005)
        ran_while_blocked = len(encoder.embedded)
        return ran_while_blocked, await asyncio.gather(*tasks)

    try:
        ran_while_blocked, out = asyncio.run(queue_then_block())
    finally:
        batcher.close()
    assert ran_while_blocked == len(texts)
    assert [r[0].tokens for r in out] == [len(t) for t in encoder.tokenize(texts)]


def test_one_call_of_many_texts_wakes_every_worker():
    encoder, batcher = gated(workers=2, max_batch=1)
    # The held text's run waits until another text has run, which only the second worker can do meanwhile.
    opened_by_other = encoder.embed_tokens

    def embed_tokens(batch):
        if not any(encoder.has(t, "hold") for t in batch):
            encoder.gate.set()
        return opened_by_other(batch)

    encoder.embed_tokens = embed_tokens
    try:
        out = asyncio.run(batcher.embed(["hold this one", "and run this one meanwhile"]))
    finally:
        batcher.close()
    assert [r.tokens > 0 for r in out] == [True, True]
    assert len(set(encoder.threads)) == 2


def test_an_encoder_error_reaches_its_callers_and_the_worker_carries_on():
    encoder, batcher = gated()

    async def both():
        with pytest.raises(RuntimeError, match="encoder failed"):
            await batcher.embed(["this one will fail"])
        return await batcher.embed(["and this one works"])

    try:
        out = asyncio.run(both())
    finally:
        batcher.close()
    assert out[0].tokens > 0 and abs(np.linalg.norm(out[0].vector) - 1) < 1e-3


def test_a_text_whose_caller_gave_up_is_not_embedded():
    encoder, batcher = gated()

    async def give_up():
        first = asyncio.create_task(batcher.embed(["hold the worker"]))
        second = asyncio.create_task(batcher.embed(["nobody waits for this"]))
        await asyncio.sleep(0)
        second.cancel()
        await asyncio.sleep(0)
        encoder.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await second
        return await first

    try:
        out = asyncio.run(give_up())
    finally:
        batcher.close()
    assert out[0].tokens > 0
    assert encoder.embedded == [1]


def test_a_cancelled_batchs_texts_leave_the_queue_at_once():
    """While single calls keep a worker from looking at bulk texts, those of a batch whose caller gave up must not
    pile up past the budget they were admitted on."""
    encoder, batcher = gated()

    async def scenario():
        held = asyncio.create_task(batcher.embed(["hold the worker"]))
        assert await asyncio.to_thread(encoder.holding.wait, 30)
        single = asyncio.create_task(batcher.embed(["a router's call"]))
        bulk = asyncio.create_task(batcher.embed([f"bulk text {i}" for i in range(5)], bulk=True))
        await asyncio.sleep(0)
        assert batcher.queued == 6
        bulk.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bulk
        assert batcher.queued == 1
        encoder.gate.set()
        await held
        await single

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert encoder.embedded == [1, 1]


def test_bulk_texts_wait_behind_single_calls_but_get_a_take_while_they_keep_coming():
    encoder, batcher = gated()
    finished: list[str] = []

    async def scenario():
        held = asyncio.create_task(batcher.embed(["hold the worker"]))
        assert await asyncio.to_thread(encoder.holding.wait, 30)
        bulk = asyncio.create_task(batcher.embed(["bulk text"], bulk=True))
        bulk.add_done_callback(lambda _: finished.append("bulk"))
        singles = [asyncio.create_task(batcher.embed([f"call {i}"])) for i in range(3 * BULK_EVERY)]
        for task in singles:
            task.add_done_callback(lambda _: finished.append("single"))
        await asyncio.sleep(0)
        encoder.gate.set()
        await asyncio.gather(held, bulk, *singles)

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    at = finished.index("bulk")
    assert BULK_EVERY <= at < len(finished) - 1, finished


def test_close_cancels_what_is_still_queued_and_stops_the_workers():
    encoder, batcher = gated()

    async def close_midway():
        running = asyncio.create_task(batcher.embed(["hold the worker"]))
        queued = asyncio.create_task(batcher.embed(["still queued at close"]))
        assert await asyncio.to_thread(encoder.holding.wait, 30)
        closer = threading.Thread(target=batcher.close)
        closer.start()
        await asyncio.sleep(0.05)
        encoder.gate.set()
        closer.join(30)
        assert not closer.is_alive()
        assert (await running)[0].tokens > 0
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.embed(["after close"])

    asyncio.run(close_midway())
    assert encoder.embedded == [1]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(Config().encoder_dir, "int8", threads=1)


@settings(max_examples=25, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=24), st.integers(1, 8))
def test_many_calls_with_some_callers_giving_up_each_get_their_own_texts(encoder, calls, max_batch):
    """Calls of 1-5 texts arriving together, some cancelled at once: every call that stays gets its own texts'
    embeddings in order, and nothing is left queued. Every text has a length of its own, so its token count
    tells whose embedding a caller got."""
    batcher = MicroBatcher(encoder, workers=2, max_batch=max_batch)
    starts = np.cumsum([0] + [size for size, _ in calls])
    texts = [["word " * (k + 1) for k in range(starts[i], starts[i + 1])] for i in range(len(calls))]

    async def burst():
        tasks = [asyncio.create_task(batcher.embed(t)) for t in texts]
        await asyncio.sleep(0)
        for task, (_, give_up) in zip(tasks, calls):
            if give_up:
                task.cancel()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    try:
        results = asyncio.run(burst())
    finally:
        batcher.close()
    for sent, (_, gave_up), got in zip(texts, calls, results):
        if gave_up:
            assert isinstance(got, asyncio.CancelledError)
            continue
        assert [e.tokens for e in got] == [len(t) for t in encoder.tokenize(sent)]
        # Batch mates move an int8 embedding a little (decision 0009), never this far.
        assert all(float(e.vector @ v) > 0.9 for e, v in zip(got, encoder.embed(sent)))
    assert batcher.queued == 0


def test_an_idle_service_keeps_warm_on_one_worker_and_a_busy_one_does_not():
    encoder = ThreadNotingEncoder()
    batcher = MicroBatcher(encoder, workers=2, max_batch=8, keep_warm_s=0.01)
    try:
        deadline = time.monotonic() + 10
        while batcher.warm_runs < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.warm_runs >= 5, "idle: a one-word run every 10 ms"
        assert set(encoder.threads) == {"encoder_0"}, "only the first worker keeps warm"
        out = asyncio.run(batcher.embed(["a real question after the quiet spell"]))
        assert out[0].tokens > 3, "a real call is answered as usual"
    finally:
        batcher.close()
    assert not any(t.is_alive() for t in batcher._threads), "close stops a worker waiting to keep warm"


def test_a_service_without_keep_warm_runs_nothing_while_idle():
    encoder = ThreadNotingEncoder()
    batcher = MicroBatcher(encoder, workers=2, max_batch=8)
    try:
        time.sleep(0.1)
    finally:
        batcher.close()
    assert encoder.threads == [] and batcher.warm_runs == 0


def test_a_call_arriving_during_a_warm_run_goes_to_the_other_worker():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, workers=2, max_batch=8, keep_warm_s=0.01)
    batcher._warm_tokens = encoder.tokenize(["hold"])  # the warm run waits at the gate

    async def call_while_warming():
        assert await asyncio.to_thread(encoder.holding.wait, 30)
        return await asyncio.wait_for(batcher.embed(["what is the capital of France?"]), 30)

    try:
        out = asyncio.run(call_while_warming())
        assert out[0].tokens > 3 and encoder.threads[-1] == "encoder_1"
    finally:
        encoder.gate.set()
        batcher.close()
