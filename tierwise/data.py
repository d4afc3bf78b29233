"""Benchmark records in the shared routing format (see ../shared/data/README.md) and the held-out split."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACCEPTABLE = 0.5
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing"
TEST_SHARE = 5  # one record in five (by id hash) is held out: never trained, calibrated or selected on


@dataclass(frozen=True)
class Record:
    id: str
    source: str
    task: str
    query: str
    scores: tuple[float, float, float]  # per tier 1..3
    costs: tuple[float, float, float]
    responses: tuple[str | None, str | None, str | None]
    models: tuple[str, str, str] = ("", "", "")  # the tier lineup that produced the outcomes

    @property
    def oracle_tier(self) -> int:
        """Lowest acceptable tier; unsolvable queries count as tier 1 (every tier scores the same)."""
        for tier, score in enumerate(self.scores, start=1):
            if score >= ACCEPTABLE:
                return tier
        return 1

    @property
    def held_out(self) -> bool:
        return is_held_out(self.id)


def is_held_out(record_id: str) -> bool:
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) % TEST_SHARE == 0


def load(paths: list[str | Path]) -> list[Record]:
    records: list[Record] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    outcomes = {o["tier"]: o for o in raw["outcomes"]}
                    tiers = [outcomes[t] for t in (1, 2, 3)]
                    records.append(Record(
                        id=raw["id"], source=raw.get("source", ""), task=raw.get("task", ""), query=raw["query"],
                        scores=tuple(float(o["score"]) for o in tiers),
                        costs=tuple(float(o["cost_usd"]) for o in tiers),
                        responses=tuple(o.get("response") for o in tiers),
                        models=tuple(str(o.get("model", "")) for o in tiers),
                    ))
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"{path}:{n}: not a routing record ({err!r})") from None
    return records


def split(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(development part, held-out part)."""
    return [r for r in records if not r.held_out], [r for r in records if r.held_out]


def arrays(records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Per-record acceptable-answer matrix (n, 3) and cost matrix (n, 3)."""
    ok = np.array([[s >= ACCEPTABLE for s in r.scores] for r in records], dtype=bool).reshape(-1, 3)
    cost = np.array([r.costs for r in records], dtype=np.float64).reshape(-1, 3)
    return ok, cost


def shared_files() -> list[Path]:
    return sorted(SHARED_DATA.glob("*.dev.jsonl")) if SHARED_DATA.is_dir() else []
