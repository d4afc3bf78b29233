"""Where the micro-batcher runs the encoder: with inline_max_tokens set, on the event loop for a lone short text;
on the workers otherwise."""
import asyncio
import threading

import numpy as np

from classifier_service.batching import MicroBatcher
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
