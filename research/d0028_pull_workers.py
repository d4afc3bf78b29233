"""Decision 0028: encoder workers that take from the queue themselves, against the event loop handing them
each take (the batcher of decisions 0021–0027, kept here as `HandoffBatcher`).

Each round starts `python -m classifier_service` once per variant, in rotating order
(`research.service_ab.rotate`); the hand-off variant is the same service with `HandoffBatcher` put in
place of the shipped batcher before it starts. Each start is measured by:
- 32 callers sending unique mixed-length queries for `--seconds` (the bench's load run, `bench.grpc_load`);
- 32 callers sending unique short questions for half as long;
- one caller sending `--calls` unique short questions one at a time (p50).
Each round also takes the bench's two-core ceiling on the mixed texts in this process: twice one thread's
length-bucketed batched rate as `make bench` takes it (`bench.local.ceiling_rate`).

    .venv/bin/python -m research.d0028_pull_workers [--rounds 6] [--micro-batches 32,16,8] [--shared-takes 32,16]

`--shared-takes` adds `SharedBuckets` at those take sizes (tried after this decision, not kept): a worker takes
more of the queue, buckets it by length, runs the first bucket and leaves the others, tokenised, to whichever
worker is free next, so takes as large as the ceiling's bucket as well without one worker taking a whole burst.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench import local, queries
from classifier_service.batching import Embedded, MicroBatcher, buckets, deliver, embed_bucketed, settle
from classifier_service.config import Config
from classifier_service.encoder import Encoder, Tokens

from .service_ab import load_and_one_caller, rotate

HANDOFF = "import research.d0028_pull_workers as d, classifier_service.server as s\ns.MicroBatcher = d.HandoffBatcher\n"
SHARED = HANDOFF.replace("HandoffBatcher", "SharedBuckets")


class HandoffBatcher(MicroBatcher):
    """The batcher before this decision: the event loop hands each take to a thread pool, and a worker's next
    take waits until the loop has seen its result."""

    def __init__(self, encoder: Encoder, workers: int = 2, *args, **kwargs):
        super().__init__(encoder, 0, *args, **kwargs)
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="encoder")

    def _submit(self, pending) -> None:
        self._queue.extend(pending)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._busy < self.workers and self._queue:
            take = [p for p in (self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue))))
                    if not p.future.done()]
            if not take:
                continue
            self._busy += 1
            self._on_batch(len(take))
            run = asyncio.get_running_loop().run_in_executor(
                self._executor, embed_bucketed, self.encoder, [p.text for p in take], self.max_pad_ratio,
                self.max_batch, self.run_tokens)
            run.add_done_callback(functools.partial(self._finish, take))

    def _finish(self, take, run: asyncio.Future) -> None:
        self._busy -= 1
        settle([(p, row) for row, p in enumerate(take)], run.exception() or run.result())
        self._dispatch()

    def close(self) -> None:
        super().close()
        self._executor.shutdown(wait=True, cancel_futures=True)


class SharedBuckets(MicroBatcher):
    """Takes up to `max_batch` raw texts; tokenised buckets left over wait in `_runs` and go first."""

    def __init__(self, *args, **kwargs):
        self._runs: deque[list[tuple]] = deque()
        super().__init__(*args, **kwargs)

    def _next(self) -> tuple[str, list] | None:
        with self._ready:
            while True:
                while self._runs:
                    run = [(p, t) for p, t in self._runs.popleft() if not p.future.done()]
                    if run:
                        self._busy += 1
                        return "run", run
                if take := self._pop():
                    self._busy += 1
                    return "raw", take
                if self._closed:
                    return None
                self._ready.wait()

    def _work(self, keeps_warm: bool = False) -> None:  # the shipped workers' signature; never keeps warm
        while (job := self._next()) is not None:
            kind, items = job
            run: list[tuple] = items if kind == "run" else [(p, None) for p in items]
            try:
                if kind == "raw":
                    tokens: list[Tokens] = self.encoder.tokenize([p.text for p in items])
                    groups = buckets([len(t) for t in tokens], self.max_pad_ratio, self.max_batch, self.run_tokens)
                    runs = [[(items[i], tokens[i]) for i in g] for g in groups]
                    run = runs[0]
                    if len(runs) > 1:
                        with self._ready:
                            self._runs.extend(runs[1:])
                            self._ready.notify(len(runs) - 1)
                self._on_batch(len(run))
                vectors = self.encoder.embed_tokens([t for _, t in run])
                result: list[Embedded] | BaseException = [
                    Embedded(vectors[row], len(t), t.truncated) for row, (_, t) in enumerate(run)]
            except Exception as error:
                result = error
            with self._ready:
                self._busy -= 1
            deliver([p for p, _ in run], result)


def variants(micro_batches: list[str], shared_takes: list[str]) -> dict[str, tuple[str, list[str]]]:
    """name -> (code run before the service, its arguments): the batcher and take size before this decision,
    then the shipped batcher at each take size."""
    out = {"hand-off, micro-batch 32 (before)": (HANDOFF, ["--micro-batch", "32"])}
    for size in micro_batches:
        shipped = " (shipped)" if size == str(Config().micro_batch) else ""
        out[f"pull, micro-batch {size}{shipped}"] = ("", ["--micro-batch", size])
    for size in shared_takes:
        out[f"shared buckets, takes of {size}"] = (SHARED, ["--micro-batch", size])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--micro-batches", default="32,16,8", help="take sizes to run the shipped batcher with")
    ap.add_argument("--shared-takes", default="", help="take sizes to run SharedBuckets with (none by default)")
    args = ap.parse_args()
    runs = variants(args.micro_batches.split(","), [s for s in args.shared_takes.split(",") if s])
    sets = queries.build(queries.FULL, 32 * 1024)
    mixed = sets.load_mixed
    short = queries.short_questions(args.calls * args.rounds * len(runs) + 100)
    short_load = queries.short_questions(60_000, start=10_000_000)
    cfg = Config()
    encoder = Encoder(cfg.encoder_dir, cfg.precision, cfg.ort_threads)
    ceilings: list[float] = []

    def ceiling(r: int) -> None:
        ceilings.append(local.CORES * local.ceiling_rate(encoder, mixed[200:], cfg, 1, args.seconds / 2)["qps"])
        print(f"round {r + 1}, ceiling: {ceilings[-1]:.0f} q/s", file=sys.stderr, flush=True)

    figures = rotate(runs, args.rounds, load_and_one_caller(mixed, short, args.calls, args.seconds, short_load),
                     ceiling)
    base = next(iter(runs))
    print(f"Two-core ceiling on the mixed texts, median of {args.rounds}: {np.median(ceilings):.0f} q/s "
          f"({', '.join(f'{c:.0f}' for c in ceilings)})\n")
    print(f"| variant | 32-caller mixed q/s (each round) | of the ceiling | vs {base}, rounds higher | "
          "32-caller short q/s | one caller short p50 ms |\n|---|---|---|---|---|---|")
    for name, got in figures.items():
        diff = np.array(got["mixed"]) - np.array(figures[base]["mixed"])
        print(f"| {name} | {np.median(got['mixed']):.0f} ({', '.join(f'{v:.0f}' for v in got['mixed'])}) | "
              f"{np.median(np.array(got['mixed']) / np.array(ceilings)):.0%} | "
              f"{np.median(diff):+.0f} q/s, {(diff > 0).sum()} of {len(diff)} | {np.median(got['short']):.0f} | "
              f"{np.median(got['p50']):.2f} |")


if __name__ == "__main__":
    main()
