"""A cascade gate that asks a model (`verify`), run on recorded answers through the configured providers.

`tierwise eval --gate verify --config tierwise.yaml` replays the verifier exactly as the router runs it:
the same gate class, prompt, providers, prices and failure rule. Each recorded tier 1 and tier 2 answer is
judged once per run (the cascade and `embedding+cascade` share the verdicts); the calls are live and paid.
With a store (`--verdicts FILE`), each verdict is appended as it arrives and read back by later runs for the
same verifier model, so an interrupted run resumes, and `calibrate` then `eval` pay once. A kept verdict is
its score: the configured bar decides again. Failed calls are not kept; they are asked again.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from router_service.chains import open_chains
from router_service.config import RouterConfig
from router_service.gates import Verdict, gate, verifier_tier_for
from router_service.telemetry import RouterMetrics

from tierwise.atomic import append_line
from tierwise.data import DataError, Record

Key = tuple[int, str, str]  # (tier, query, answer)


class LiveGate:
    def __init__(self, cfg: RouterConfig, gate_name: str, concurrency: int = 4, store: Path | None = None):
        self.cfg = cfg
        self.gate_name = gate_name
        self.concurrency = concurrency
        self.verdicts: dict[Key, Verdict] = {}
        self.store = store
        self.kept: set[Key] = set()  # verdicts read back from the store: an earlier run paid for them
        self.unreadable = 0  # store lines that were not verdicts (e.g. torn by a killed run), skipped
        if store is not None:
            store.parent.mkdir(parents=True, exist_ok=True)
            store.touch()  # a store that cannot be written fails here, before any call is paid for
            self._read_store()

    @property
    def spent_usd(self) -> float:
        """What this run's verifier calls cost (kept verdicts still count in each cascade's cost)."""
        return sum(v.cost_usd for k, v in self.verdicts.items() if k not in self.kept)

    @property
    def errors(self) -> list[str]:
        """Why the verifier could not rule, per answer it failed on (each such answer counts as rejected)."""
        return [v.error for v in self.verdicts.values() if v.error]

    @property
    def calls(self) -> int:
        """Answers a model was asked about in this run (the rest failed on their face, for free, or were kept)."""
        return sum(v.asked_model for k, v in self.verdicts.items() if k not in self.kept)

    def _verifier_model(self, tier: int) -> str:
        return self.cfg.model_for(verifier_tier_for(self.cfg.cascade.verifier_tier, tier))

    def _read_store(self) -> None:
        bar = self.cfg.cascade.verifier_bar
        try:
            lines = self.store.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"--verdicts {self.store}: not a file of verdicts ({err})") from None
        for line in lines:
            try:
                row = json.loads(line)
                key = (int(row["tier"]), str(row["query"]), str(row["answer"]))
                score, cost, model = float(row["score"]), float(row["cost_usd"]), str(row["verifier"])
                gate_name = row["gate"]
            except (ValueError, KeyError, TypeError):
                self.unreadable += 1
                continue
            if gate_name == self.gate_name and model == self._verifier_model(key[0]):
                self.verdicts[key] = Verdict(score >= bar, f"verifier {model} (kept)", cost, asked_model=True,
                                             score=score)
                self.kept.add(key)

    def _keep(self, key: Key, verdict: Verdict) -> None:
        if self.store is None or verdict.score is None or verdict.error:
            return
        tier, query, answer = key
        row = {"gate": self.gate_name, "verifier": self._verifier_model(tier), "tier": tier, "query": query,
               "answer": answer, "score": verdict.score, "cost_usd": verdict.cost_usd}
        append_line(self.store, json.dumps(row))

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

        # A score of None (the verdict is final) becomes NaN in a float array.
        return column("accept", bool), column("score", float), column("cost_usd", float), column("asked_model", bool)

    async def _ask(self, todo: list[Key]) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        async with open_chains(self.cfg, RouterMetrics()) as chains:
            checker = gate(self.gate_name, {"config": self.cfg, "chains": chains})
            with tqdm(total=len(todo), desc=f"{self.gate_name} gate", unit="answer") as bar:
                async def one(key: Key) -> None:
                    tier, query, answer = key
                    async with slots:
                        self.verdicts[key] = await checker.judge(query, answer, tier=tier)
                    self._keep(key, self.verdicts[key])
                    bar.update()

                await asyncio.gather(*(one(k) for k in todo))
