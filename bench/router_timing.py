"""Pieces the router bench shares with its LiteLLM baseline (which runs under another interpreter).

Standard library and the official `openai` SDK only: both environments have those.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from openai import AsyncOpenAI

from .stats import latency_summary

KEY = "bench-provider-key"  # the double accepts any key
MODEL = "t1-a"  # tier 1's first provider in tests.test_router_complete.router_config
SEED = 20_240_601
WORDS = ("river", "harbour", "planet", "kingdom", "valley", "glacier", "algorithm", "protein", "contract",
         "theorem", "molecule", "invoice", "recipe", "satellite", "poem", "ledger", "Norway", "Kenya", "Peru")
Call = Callable[[str], Awaitable[object]]


def texts(prefix: str, count: int, max_words: int = 18) -> list[str]:
    """Unique short-to-medium queries of 7 to max_words words; the prefix keeps every run's set disjoint."""
    rng = random.Random(f"{SEED}-{prefix}")
    return [f"{prefix} {i}: explain the " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, max_words - 4)))
            for i in range(count)]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sdk_call(base_url: str) -> Call:
    """The direct baseline: the official SDK straight to the double, no retries."""
    client = AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=10.0)
    return lambda text: client.chat.completions.create(model=MODEL, messages=user(text))


async def interleaved(calls: dict[str, Call], count: int, warmup: int) -> dict[str, dict]:
    """`count` sequential calls of each kind, round-robin so drift and noise hit every kind alike.

    Each call gets a text of its own (unique per kind and index), so no cache anywhere answers it.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    errors: dict[str, list[str]] = {name: [] for name in calls}
    samples = {name: texts(name, warmup + count) for name in calls}
    for i in range(warmup + count):
        for name, call in calls.items():
            started = time.perf_counter()
            try:
                await call(samples[name][i])
            except Exception as err:  # counted and reported with the first message, not a crash
                errors[name].append(f"{type(err).__name__}: {err}")
                continue
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: summary(times[name], len(errors[name])) | {"first_error": (errors[name] or [""])[0][:300]}
            for name in calls}


def summary(seconds: Sequence[float], errors: int) -> dict:
    """latency_summary plus the error count; NaN latencies when nothing succeeded (so the report shows it)."""
    if not seconds:
        return {"n": 0, **dict.fromkeys(("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"), math.nan),
                "errors": errors}
    return {**latency_summary(seconds), "errors": errors}
