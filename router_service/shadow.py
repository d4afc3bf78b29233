"""Shadow A/B: re-ask a share of traffic at the frontier tier in the background, have a judge compare
the two answers, and record agreement, cost and tier (metrics + a JSONL log a later eval can read).

With `shadow.labels` set, a sampled request (at any tier, so the sample is unbiased) is instead
labelled as `tierwise label` labels a query: every tier answers, the judge scores tiers 1 and 2
against tier 3, and the record is appended to `shadow.labels` in the routing-data format, ready for
`tierwise train` and `tierwise eval`. The answer already sent to the user is reused, not asked again.

Never delays a reply: shadows start after the answer is built, run as background tasks, are capped
in number (excess is dropped and counted), and their failures are logged, never raised. Past
`shadow.monthly_budget_usd` of provider spend in a calendar month (UTC), no shadow starts until the
month ends: each one not started is counted, and the first is logged. The spend is kept in the router's spend
ledger (router_service/ledger.py), so with `spend.ledger` it outlives a restart and replicas share the budget.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from opentelemetry import trace

from tierwise.atomic import append_line, appendable
from tierwise.data import ACCEPTABLE

from .config import RouterConfig
from .dispatch import Result
from .messages import query_of
from .labelling import Labeler, Tab, record_id
from .ledger import SpendLedger, month
from .providers import DEFAULT_SAMPLING, ProviderError, TierChain
from .replicas import own_file
from .replies import parse_verdict, prompt

log = logging.getLogger("tierwise.router.shadow")
LIVE = "live"  # source and task of records labelled from live traffic
SPENDING = "shadow"  # the account the shadow's provider spend is kept under

COMPARE = (
    "You compare two answers to the same user message. answer_a is the candidate, answer_b the reference "
    "from a stronger model. Is answer_a as correct and useful as answer_b? Reply with JSON only, exactly like "
    '{"agree": true} or {"agree": false}.'
)


class Shadow:
    def __init__(self, cfg: RouterConfig, chains: Mapping[int, TierChain], metrics, rng: random.Random | None = None,
                 ledger: SpendLedger | None = None):
        self.cfg = cfg.shadow
        self.prices = cfg.tiers
        self.chains = chains
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.tracer = trace.get_tracer("tierwise.router")
        # The shadows running, each with what it is expected to cost: counted against the budget from its start.
        self.tasks: dict[asyncio.Task, tuple[float, int]] = {}  # -> (what it is expected to cost, the tier answered)
        self.log_path = own_file(self.cfg.log)
        self.labels_path = own_file(self.cfg.labels)
        self.labeler = (Labeler(cfg, chains, self.cfg.judge_tier, self.cfg.timeout_s)
                        if self.labels_path else None)
        self.spending = ledger or SpendLedger()
        self.budget_said = ""  # the month whose budget was reported spent
        for setting, path in (("shadow.log", self.log_path), ("shadow.labels", self.labels_path)):
            try:  # now, not at the first paid-for label (a read-only path, a volume not mounted)
                if path is not None:
                    appendable(path)
            except OSError as err:
                raise ValueError(f"{setting}: cannot write {path}: {err.strerror or err}") from None

    def maybe_start(self, messages: Sequence[Mapping[str, str]], strategy: str, result: Result,
                    options: Mapping[str, object]) -> bool:
        """Start a shadow for this answered request if it is sampled; returns whether one started.
        `options` (max_tokens, temperature, sampling) are the request's, so every answer is asked the same way.
        A request carrying images is never sampled, nor is one offering or answering tools: the judge reads and
        grades text answers only."""
        tools = options.get("sampling", DEFAULT_SAMPLING).tools
        text_only = not tools and not any(m.get("images") or m["role"] == "tool" for m in messages)
        eligible = (self.labeler is not None or result.tier < self.cfg.tier) and text_only
        if self.cfg.share <= 0 or not eligible or self.rng.random() >= self.cfg.share or self._over_budget(result.tier):
            return False
        if len(self.tasks) >= self.cfg.max_in_flight:
            self.metrics.shadow.add(1, {"outcome": "dropped_busy", "tier": result.tier})
            return False
        run = self._label if self.labeler is not None else self._compare
        task = asyncio.get_running_loop().create_task(self._run(run, list(messages), strategy, result, dict(options)))
        self.tasks[task] = self._expected_cost(result, options.get("max_tokens")), result.tier
        task.add_done_callback(lambda done: self.tasks.pop(done, None))
        return True

    def _expected_cost(self, result: Result, max_tokens: int | None) -> float:
        """About what a shadow of `result` will cost: the other tiers' answers (the frontier's alone for a
        comparison), each as long as the request lets it be (`max_tokens`; without one, as long as the answer sent),
        and the judge reading them. A burst of shadows started before any has finished counts against the budget
        from the start, and an answer another tier makes longer cannot take it past the budget many times over."""
        c = result.completion
        answer = max(c.output_tokens, max_tokens or 0)
        if self.labeler is not None:  # every other tier answers, and the judge grades each below the frontier
            asked, judged = [t for t in self.prices if t != result.tier], len(self.prices) - 1
        else:
            asked, judged = [self.cfg.tier], 1
        return (sum(self.prices[t].cost(c.input_tokens, answer) for t in asked)
                + judged * self.prices[self.cfg.judge_tier].cost(c.input_tokens + 2 * answer, 16))

    async def _run(self, run, messages: list[Mapping[str, str]], strategy: str, result: Result,
                   options: dict) -> None:
        with self.tracer.start_as_current_span("tierwise.shadow", attributes={
                "tierwise.tier": result.tier, "tierwise.shadow_tier": self.cfg.tier,
                "tierwise.shadow_labels": self.labeler is not None}) as span:
            record = {"ts": time.time(), "strategy": strategy, "tier": result.tier, "model": result.completion.model,
                      "cost_usd": result.cost_usd, "shadow_tier": self.cfg.tier}
            tab = Tab()
            try:
                await run(messages, result, options, record, tab)
                if "agree" in record:
                    span.set_attribute("tierwise.shadow_agree", record["agree"])
                self.metrics.shadow.add(1, {"outcome": _outcome(record), "tier": result.tier})
            except (ProviderError, ValueError, OSError) as err:  # OSError: a labels file no longer writable
                # No provider's words: a refusal can quote the prompt, and this goes to the log and the shadow file.
                record["error"] = err.quiet() if isinstance(err, ProviderError) else f"{type(err).__name__}: {err}"[:200]
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(err).__name__))
                self.metrics.shadow.add(1, {"outcome": "failed", "tier": result.tier})
                log.warning("shadow failed: %s", record["error"])
            except asyncio.CancelledError:
                record["error"] = "cancelled at shutdown"  # counted by drain
                raise
            finally:
                # Every call that returned was paid for, whether the shadow finished, failed or was cancelled: the
                # budget must see it all, or a judge that answers out of format would label without limit. The log
                # line says so too, so that its spent_usd adds up to what the ledger counted.
                self.spending.charge(SPENDING, tab.usd)
                self.metrics.cost.add(tab.usd, {"purpose": "shadow"})
                record["spent_usd"] = tab.usd
                try:
                    _append(self.log_path, record)
                except OSError as err:
                    log.error("shadow: cannot write %s: %s", self.log_path, err.strerror or err)

    async def _compare(self, messages: list[Mapping[str, str]], result: Result, options: dict, record: dict,
                       tab: Tab) -> None:
        reference = await self.chains[self.cfg.tier].complete(messages, deadline=self._deadline(), **options)
        record.update(shadow_model=reference.model,
                      shadow_cost_usd=tab.add(self.prices[self.cfg.tier].answer_cost(reference)))
        verdict = await self.chains[self.cfg.judge_tier].complete(
            prompt(COMPARE, user_message=query_of(messages), answer_a=result.completion.content,
                   answer_b=reference.content),
            max_tokens=16, temperature=0.0, deadline=self._deadline())
        record.update(judge_cost_usd=tab.add(self.prices[self.cfg.judge_tier].answer_cost(verdict)))
        record.update(agree=parse_verdict(verdict.content, "agree", bool))

    async def _label(self, messages: list[Mapping[str, str]], result: Result, options: dict, record: dict,
                     tab: Tab) -> None:
        query = query_of(messages)
        labelled = await self.labeler.record(query, record_id=record_id(LIVE, query), source=LIVE, task=LIVE,
                                             messages=messages, known={result.tier: result.completion}, tab=tab,
                                             **options)
        outcomes = labelled["outcomes"]
        labelled.update(routed_tier=result.tier, paid_usd=result.cost_usd, strategy=record["strategy"], ts=record["ts"])
        record.update(labelled=True, shadow_model=outcomes[self.cfg.tier - 1]["model"],
                      shadow_cost_usd=sum(o["cost_usd"] for o in outcomes if o["tier"] != result.tier),
                      judge_cost_usd=labelled["judge_cost_usd"])
        if result.tier < self.cfg.tier:
            record["agree"] = outcomes[result.tier - 1]["score"] >= ACCEPTABLE
        _append(self.labels_path, labelled)

    def _over_budget(self, tier: int) -> bool:
        """Whether this month's budget is spent, or will be by the shadows running; if so the shadow not started is
        counted, and a spent budget logged once a month."""
        budget, spent = self.cfg.monthly_budget_usd, self.spending.spent(SPENDING)
        if not budget or spent + sum(cost for cost, _ in self.tasks.values()) < budget:
            return False
        self.metrics.shadow.add(1, {"outcome": "over_budget", "tier": tier})
        if spent < budget:
            return True  # the shadows running may spend the rest: this month is not over yet
        now = month(time.time())
        if now != self.budget_said:
            self.budget_said = now
            log.warning("shadow: spent $%.4f of its monthly budget of $%g in %s (UTC); no more shadows this month",
                        spent, budget, now)
        return True

    def _deadline(self) -> float:
        return time.monotonic() + self.cfg.timeout_s

    async def drain(self, timeout: float = 10.0) -> None:
        """Let running shadows finish (at shutdown), up to `timeout`; cancel, count and log the rest."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
        cut = Counter(self.tasks[task][1] for task in pending)  # by tier, read before the tasks leave on cancelling
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            for tier, count in cut.items():
                self.metrics.shadow.add(count, {"outcome": "cancelled_shutdown", "tier": tier})
            log.warning("shadow: %d still running after %.1f s at shutdown were cancelled", len(pending), timeout)


def _outcome(record: dict) -> str:
    if "agree" not in record:
        return "labelled"
    return "agree" if record["agree"] else "disagree"


def _append(path: Path | None, record: dict) -> None:
    """One whole line per record (a paid-for label survives a restart mid-write; see tierwise/atomic.py)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    append_line(path, json.dumps(record, ensure_ascii=False))
