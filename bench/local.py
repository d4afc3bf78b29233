"""In-process measurements with the service's own encoder: token lengths, and the encoder's ceiling.

The ceiling is what the model alone reaches on this machine, with no gRPC and no server: one query at a
time (tokenise + one ONNX run), and batched the way a busy server's worker runs what queued (length-bucketed,
at most `run_tokens` padded tokens a run: classifier_service.batching.embed_bucketed), taken 32 at a time or the
server's `micro_batch` if larger: larger takes bucket better, so the ceiling does not fall when the server takes
fewer (decision 0028). Every gRPC figure is reported as a ratio to it, measured in the same run: the batched
ceiling on exactly the texts the gRPC load run sent (it runs after it), so the two divide like for like.

One thread here is one core: the tokenizer's own thread pool is off (TOKENIZERS_PARALLELISM=false, set by the
bench for this process alone), or a "one thread" figure would take the second core's time for tokenising.
"""
from __future__ import annotations

import threading
import time

from classifier_service.batching import MAX_PAD_RATIO, embed_bucketed
from classifier_service.config import Config
from classifier_service.encoder import Encoder

from .queries import PAUSE_S, QuerySets
from .stats import distribution, latency_summary

TOKEN_SETS = ("short", "mixed", "load_short", "load_mixed")
FLOOR_SETS = ("short", "mixed")
CEILING_SETS = ("load_short", "load_mixed")  # the texts the gRPC load runs send
CORES = 2  # the two-core ceiling: twice what one core reaches
CEILING_TAKE = 32  # texts per take in the ceiling at least: the best per-text rate in decision 0027's table


def token_lengths(encoder: Encoder, sets: QuerySets) -> dict[str, dict]:
    out = {}
    for name in TOKEN_SETS:
        tokens = encoder.tokenize(getattr(sets, name))
        out[name] = {**distribution([len(t) for t in tokens]), "truncated": sum(t.truncated for t in tokens)}
    return out


def encoder_floor(encoder: Encoder, sets: QuerySets) -> dict[str, dict]:
    """Single-query latencies, one text after another; and on the short after-pause set, each after PAUSE_S
    idle, the way calls reach a quiet deployment (caches and the CPU have gone cold meanwhile)."""
    def embed_one(text: str) -> None:
        encoder.embed_tokens(encoder.tokenize([text]))

    for text in sets.warmup:
        embed_one(text)
    out = {}
    for name, pause in [(name, 0.0) for name in FLOOR_SETS] + [("short_after_pause", PAUSE_S)]:
        latencies = []
        for text in getattr(sets, "after_pause" if pause else name):
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            embed_one(text)
            latencies.append(time.perf_counter() - t0)
        out[name] = latency_summary(latencies)
    return out


def _batched(encoder: Encoder, texts: list[str], batch: int, run_tokens: int | None,
             deadline: float) -> tuple[int, float]:
    """(texts embedded, CPU seconds of this thread): `batch` at a time until done or past `deadline`."""
    done, cpu = 0, time.thread_time()
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        embed_bucketed(encoder, chunk, MAX_PAD_RATIO, batch, run_tokens)
        done += len(chunk)
        if time.perf_counter() >= deadline:
            break
    return done, time.thread_time() - cpu


def batched_rate(encoder: Encoder, texts: list[str], batch: int, threads: int, max_seconds: float,
                 run_tokens: int | None = None) -> dict:
    """Queries/s of `threads` threads sharing one session, each taking its own share of `texts` `batch` at a time
    and running it as the server's workers do (its padding ratio, at most `run_tokens` padded tokens a run)."""
    shares = [texts[i::threads] for i in range(threads)]
    results: list[tuple[int, float]] = [(0, 0.0)] * threads
    started = time.perf_counter()
    deadline = started + max_seconds

    def work(i: int) -> None:
        results[i] = _batched(encoder, shares[i], batch, run_tokens, deadline)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    done, cpu = sum(r[0] for r in results), sum(r[1] for r in results)
    return {"threads": threads, "batch": batch, "n": done, "seconds": elapsed, "qps": done / elapsed, "cpu_s": cpu,
            "qps_per_cpu_s": done / cpu if cpu else 0.0}


def ceiling_rate(encoder: Encoder, texts: list[str], cfg: Config, threads: int, max_seconds: float) -> dict:
    """`batched_rate` as the ceiling takes it: the server's padding and run-token cap, in takes of at least
    CEILING_TAKE texts. Twice one thread's rate is the two-core ceiling."""
    return batched_rate(encoder, texts, max(CEILING_TAKE, cfg.micro_batch), threads, max_seconds, cfg.run_cap)


def ceiling(encoder: Encoder, sent: dict[str, list[str]], warmup: list[str], cfg: Config,
            max_seconds: float) -> dict[str, dict]:
    """Per load set, on the texts the gRPC run `sent`: one thread's batched rate (one core), two threads' rate,
    and the two-core ceiling; `same_texts` says whether each covered all of them within `max_seconds`."""
    encoder.embed_tokens(encoder.tokenize(warmup))
    out = {}
    for name, texts in sent.items():
        one = ceiling_rate(encoder, texts, cfg, 1, max_seconds)
        two = ceiling_rate(encoder, texts, cfg, CORES, max_seconds)
        out[name] = {"batch": one["batch"], "max_pad_ratio": MAX_PAD_RATIO,
                     "run_tokens": cfg.run_cap, "one_thread": one, "two_threads": two,
                     "ceiling_qps": CORES * one["qps"], "texts": len(texts),
                     "same_texts": one["n"] == two["n"] == len(texts)}
    return out


def encoder_for(cfg: Config) -> Encoder:
    """The service's encoder, with its precision and ORT threads."""
    return Encoder(cfg.encoder_dir, cfg.precision, cfg.ort_threads)


def measure(encoder: Encoder, sets: QuerySets) -> dict:
    """Token-length distributions and single-query latencies (the batched ceiling comes after the gRPC load run,
    on the texts it sent: `ceiling`)."""
    return {"tokens": token_lengths(encoder, sets), "single": encoder_floor(encoder, sets)}
