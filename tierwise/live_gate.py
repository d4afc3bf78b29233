"""A cascade gate that asks a model (`verify`), run on recorded answers through the configured providers.

`tierwise eval --gate verify --config tierwise.yaml` replays the verifier exactly as the router runs it:
the same gate class, prompt, providers, prices and failure rule. Each recorded tier 1 and tier 2 answer is
judged once per run (the cascade and `embedding+cascade` share the verdicts); the calls are live and paid.
"""
from __future__ import annotations

import asyncio

import numpy as np
from tqdm import tqdm

from router_service.config import RouterConfig
from router_service.gates import Verdict, gate
from router_service.server import open_chains
from router_service.telemetry import RouterMetrics

from .data import Record

Key = tuple[int, str, str]  # (tier, query, answer)


class LiveGate:
    def __init__(self, cfg: RouterConfig, gate_name: str, concurrency: int = 4):
        self.cfg = cfg
        self.gate_name = gate_name
        self.concurrency = concurrency
        self.verdicts: dict[Key, Verdict] = {}

    @property
    def spent_usd(self) -> float:
        return sum(v.cost_usd for v in self.verdicts.values())

    @property
    def errors(self) -> list[str]:
        """Why the verifier could not rule, per answer it failed on (each such answer counts as rejected)."""
        return [v.error for v in self.verdicts.values() if v.error]

    @property
    def calls(self) -> int:
        """Answers a model was asked about (the rest failed on their face, for free)."""
        return sum(v.asked_model for v in self.verdicts.values())

    def judge(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(accepted at the configured bar, P(acceptable) or NaN where the verdict is final whatever the bar, what
        the verdict cost, whether a model was asked), each (records, 2): the tier 1 and 2 answers."""
        keys = [[(t, r.query, r.responses[t - 1]) for t in (1, 2)] for r in records]
        todo = list(dict.fromkeys(k for pair in keys for k in pair if k not in self.verdicts))
        if todo:
            asyncio.run(self._ask(todo))

        def column(field: str, kind: type) -> np.ndarray:
            values = [[getattr(self.verdicts[k], field) for k in pair] for pair in keys]
            return np.array(values, dtype=kind).reshape(-1, 2)

        scores = [[np.nan if self.verdicts[k].score is None else self.verdicts[k].score for k in pair] for pair in keys]
        return (column("accept", bool), np.array(scores, dtype=float).reshape(-1, 2), column("cost_usd", float),
                column("asked_model", bool))

    async def _ask(self, todo: list[Key]) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        async with open_chains(self.cfg, RouterMetrics()) as chains:
            checker = gate(self.gate_name, {"config": self.cfg, "chains": chains})
            with tqdm(total=len(todo), desc=f"{self.gate_name} gate", unit="answer") as bar:
                async def one(key: Key) -> None:
                    tier, query, answer = key
                    async with slots:
                        self.verdicts[key] = await checker.judge(query, answer, tier=tier)
                    bar.update()

                await asyncio.gather(*(one(k) for k in todo))
