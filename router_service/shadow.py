"""Shadow A/B: re-ask a share of traffic at the frontier tier in the background, have a judge compare
the two answers, and record agreement, cost and tier (metrics + a JSONL log a later eval can read).

Never delays a reply: shadows start after the answer is built, run as background tasks, are capped
in number (excess is dropped and counted), and their failures are logged, never raised.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path
from typing import Mapping, Sequence

from opentelemetry import trace

from .config import RouterConfig
from .dispatch import Result, last_user_text
from .providers import ProviderError, TierChain
from .strategies.judge import parse_json_field

log = logging.getLogger("tierwise.router.shadow")

COMPARE = (
    "You compare two answers to the same user message. Answer A is the candidate, answer B the reference "
    "from a stronger model. Is A as correct and useful as B? Reply with JSON only, exactly like "
    '{"agree": true} or {"agree": false}.'
)


class Shadow:
    def __init__(self, cfg: RouterConfig, chains: Mapping[int, TierChain], metrics, rng: random.Random | None = None):
        self.cfg = cfg.shadow
        self.prices = cfg.tiers
        self.chains = chains
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.tracer = trace.get_tracer("tierwise.router")
        self.tasks: set[asyncio.Task] = set()
        self.log_path = Path(self.cfg.log) if self.cfg.log else None

    def maybe_start(self, messages: Sequence[Mapping[str, str]], strategy: str, result: Result) -> bool:
        """Start a shadow for this answered request if it is sampled; returns whether one started."""
        if self.cfg.share <= 0 or result.tier >= self.cfg.tier or self.rng.random() >= self.cfg.share:
            return False
        if len(self.tasks) >= self.cfg.max_in_flight:
            self.metrics.shadow.add(1, {"outcome": "dropped_busy"})
            return False
        task = asyncio.get_running_loop().create_task(self._run(list(messages), strategy, result))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _run(self, messages: list[Mapping[str, str]], strategy: str, result: Result) -> None:
        with self.tracer.start_as_current_span("tierwise.shadow", attributes={
                "tierwise.tier": result.tier, "tierwise.shadow_tier": self.cfg.tier}) as span:
            record = {"ts": time.time(), "strategy": strategy, "tier": result.tier, "model": result.completion.model,
                      "cost_usd": result.cost_usd, "shadow_tier": self.cfg.tier}
            try:
                reference = await self.chains[self.cfg.tier].complete(messages, deadline=self._deadline())
                record.update(shadow_model=reference.model, shadow_cost_usd=self.prices[self.cfg.tier].cost(
                    reference.input_tokens, reference.output_tokens))
                verdict = await self.chains[self.cfg.judge_tier].complete(
                    [{"role": "system", "content": COMPARE},
                     {"role": "user", "content": f"User message:\n{last_user_text(messages)}\n\n"
                                                 f"Answer A:\n{result.completion.content}\n\n"
                                                 f"Answer B:\n{reference.content}"}],
                    max_tokens=16, temperature=0.0, deadline=self._deadline())
                record.update(judge_cost_usd=self.prices[self.cfg.judge_tier].cost(
                    verdict.input_tokens, verdict.output_tokens))
                agree = parse_json_field(verdict.content, "agree", bool)
                record["agree"] = agree
                span.set_attribute("tierwise.shadow_agree", agree)
                self.metrics.shadow.add(1, {"outcome": "agree" if agree else "disagree", "tier": result.tier})
                self.metrics.cost.add(record["shadow_cost_usd"] + record["judge_cost_usd"], {"purpose": "shadow"})
            except (ProviderError, ValueError) as err:
                record["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(err).__name__))
                self.metrics.shadow.add(1, {"outcome": "failed"})
                log.warning("shadow comparison failed: %s", record["error"])
            self._write(record)

    def _deadline(self) -> float:
        return time.monotonic() + self.cfg.timeout_s

    def _write(self, record: dict) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    async def drain(self, timeout: float = 10.0) -> None:
        """Let running shadows finish (at shutdown), up to `timeout`."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
