"""The benchmark's query sets: unique short questions and unique mixed-length real queries (or a synthetic stand-in).

Every set is disjoint from the others so nothing measured as a cache miss was classified before.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tierwise import data

WORDS = (
    "Norway", "Peru", "Kenya", "Vietnam", "Chile", "Iceland", "Morocco", "Nepal", "Portugal", "Ghana",
    "Canada", "Egypt", "Finland", "Mongolia", "Uruguay", "Laos", "Jordan", "Ireland", "Bolivia", "Latvia",
    "river", "mountain", "harbour", "planet", "kingdom", "island", "valley", "desert", "forest", "glacier",
    "algorithm", "protein", "contract", "theorem", "molecule", "invoice", "recipe", "satellite", "poem", "ledger",
)
SEED = 20_240_601
PAUSE_S = 0.05  # idle before each call of the after-pause runs: what a deployment at under 20 requests/s sees


@dataclass(frozen=True)
class Sizes:
    short: int  # sequential single-query latency, short texts
    mixed: int  # sequential single-query latency, mixed-length texts
    cache_repeats: int  # calls with one repeated text
    load_short: int  # most texts sent by the concurrent clients, per set
    load_mixed: int
    load_seconds: float  # time cap of each concurrent run
    warmup: int  # unmeasured calls before each sequential run
    ceiling_seconds: float  # time cap of each in-process batched run (one thread, then two): a safety, long
    # enough for it to cover every text the load run sent
    after_pause: int  # short texts sent one at a time, each after PAUSE_S of idle


FULL = Sizes(short=300, mixed=200, cache_repeats=200, load_short=12_000, load_mixed=4_000, load_seconds=15.0, warmup=20,
             ceiling_seconds=60.0, after_pause=100)
QUICK = Sizes(short=40, mixed=30, cache_repeats=30, load_short=600, load_mixed=300, load_seconds=3.0, warmup=5,
              ceiling_seconds=15.0, after_pause=10)


@dataclass(frozen=True)
class QuerySets:
    source: str  # where the mixed-length texts came from
    short: list[str]
    mixed: list[str]
    load_short: list[str]
    load_mixed: list[str]
    warmup: list[str]
    cache_text: str
    after_pause: list[str]


def short_questions(count: int, start: int = 0) -> list[str]:
    return [f"What is the capital of {WORDS[i % len(WORDS)]} number {i}?" for i in range(start, start + count)]


def synthetic_queries(count: int, rng: random.Random) -> list[str]:
    """Word-list texts of 3 to ~220 words, skewed short like real prompts; each is unique by its index."""
    texts = []
    for i in range(count):
        n_words = min(220, max(3, int(rng.lognormvariate(3.2, 1.0))))
        texts.append(f"Query {i}: " + " ".join(rng.choice(WORDS) for _ in range(n_words)))
    return texts


def real_queries(rng: random.Random, max_text_bytes: int) -> list[str]:
    unique = dict.fromkeys(r.query for r in data.load(data.shared_files()) if r.query.strip())
    texts = [q for q in unique if len(q.encode("utf-8")) <= max_text_bytes]
    rng.shuffle(texts)
    return texts


def build(sizes: Sizes, max_text_bytes: int) -> QuerySets:
    """The sets; texts longer than the server's max_text_bytes are left out (the server would refuse them)."""
    rng = random.Random(SEED)
    files = data.shared_files()
    mixed_needed = sizes.mixed + sizes.load_mixed
    pool = real_queries(rng, max_text_bytes) if files else []
    if len(pool) > sizes.mixed:
        source = f"real: {len(pool)} unique queries from " + ", ".join(f.name for f in files)
    else:
        source = (f"synthetic (shared routing data has {len(pool)} usable queries): "
                  "deterministic word-list texts of 3-220 words")
        pool = synthetic_queries(mixed_needed, rng)
    # The short load set is numbered after the latency set and the after-pause set after both, so no short text
    # repeats.
    return QuerySets(
        source=source,
        short=short_questions(sizes.short),
        mixed=pool[: sizes.mixed],
        load_short=short_questions(sizes.load_short, start=sizes.short),
        load_mixed=pool[sizes.mixed : mixed_needed],
        warmup=[f"Warm-up request {i}: how are you today?" for i in range(sizes.warmup)],
        cache_text="What is the capital of France?",
        after_pause=short_questions(sizes.after_pause, start=sizes.short + sizes.load_short),
    )
