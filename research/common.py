"""What several probes share: the shared routing records with their cached int8 embeddings, and the ways the
probes sweep and score a routing. Research code, not product code (research/README.md)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tierwise.data import Record, arrays, load, shared_files
from tierwise.metrics import QUALITY_TARGETS, routing_metrics, savings_at_quality
from tierwise_tools.calibration import TRADEOFFS
from tierwise_tools.embeddings import embed_records, offline_encoder
from tierwise_tools.paths import EMBEDDINGS_DIR


def embed(records: list[Record]) -> np.ndarray:
    """The records' int8 embeddings, one encoder run per text, from the cache `tierwise train` fills (run
    `make train` first)."""
    return embed_records(offline_encoder(), records, EMBEDDINGS_DIR)


@dataclass
class Shared:
    """Every record of the shared dev files, embedded, with its per-tier success (0/1 floats) and its file."""
    records: list[Record]
    x: np.ndarray
    ok: np.ndarray
    source: np.ndarray
    held: np.ndarray  # the held-out fifth (int(sha256(id)[:8 hex digits], 16) % 5 == 0: tierwise/data.py)

    @property
    def dev(self) -> np.ndarray:
        return ~self.held


def shared() -> Shared:
    records = load(shared_files())
    if not records:
        sys.exit("no records: the probes need ../shared/data/routing")
    x = embed(records)
    return Shared(records, x, arrays(records)[0].astype(float), np.array([r.source for r in records]),
                  np.array([r.held_out for r in records]))


Experiment = Callable[[Shared], None]


def cli(doc: str, default: Experiment | None = None, **modes: tuple[str, Experiment]) -> None:
    """A probe's command line: `doc` (its module docstring) is the help, each of `modes` (flag name: (help,
    experiment)) a flag choosing one experiment, `default` the one run without a flag (none: a flag is
    required). The chosen experiment runs on the shared records."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    choice = parser.add_mutually_exclusive_group(required=default is None) if modes else parser
    for flag, (text, _) in modes.items():
        choice.add_argument(f"--{flag.replace('_', '-')}", action="store_true", help=text)
    args = parser.parse_args()
    run = next((experiment for flag, (_, experiment) in modes.items() if getattr(args, flag)), default)
    run(shared())


def curve(records, choices) -> str:
    """'S90/S95/S99': savings at 90/95/99% quality vs frontier over the routings `choices` (the `curve`
    figure of `tierwise eval`)."""
    points = [(m["quality_vs_frontier"], m["cost_savings"]) for m in (routing_metrics(records, t) for t in choices)]
    return "/".join(f"{s:.0%}" if s is not None else "none" for s in (savings_at_quality(points, q) for q in QUALITY_TARGETS))


def op(records, tiers, digits: int = 1) -> str:
    """'Q/S': quality vs frontier and savings of routing `records` to `tiers`."""
    m = routing_metrics(records, np.asarray(tiers))
    return f"{m['quality_vs_frontier']:.3f}/{m['cost_savings']:.{digits}%}"


def ordinal(p: np.ndarray, t2: float, t3: float) -> np.ndarray:
    """The previous multiclass head's rule: softmax over the oracle tier, two ordinal thresholds."""
    return np.where(p[:, 2] >= t3, 3, np.where(p[:, 1] + p[:, 2] >= t2, 2, 1))


def multiclass_sweep(p: np.ndarray) -> list[np.ndarray]:
    grid = np.linspace(0, 1, 41)
    return [ordinal(p, a, b) for a in grid for b in grid]


TIER_2_BIASES = np.concatenate([-np.geomspace(0.01, 0.3, 7)[::-1], [0.0], np.geomspace(0.01, 0.3, 7)])


def biased(p: np.ndarray, cost, tradeoff: float, bias: float) -> np.ndarray:
    """tier = argmax_t P_t - tradeoff x cost_t + bias x [t = 2]; bias 0 is the shipped rule."""
    return np.argmax(p - tradeoff * np.asarray(cost) + [0.0, bias, 0.0], axis=1) + 1


def two_knobs(p: np.ndarray, cost):
    """((tradeoff, bias), tiers) for every pair; it contains the one-knob sweep (bias 0)."""
    for tradeoff in TRADEOFFS:
        for bias in TIER_2_BIASES:
            yield (tradeoff, bias), biased(p, cost, tradeoff, bias)



def pack(seqs: list[list[int]], query_lengths: list[int]):
    """(ids, attention mask, token types) as torch tensors, padded to the longest sequence; tokens from each
    sequence's query length on are type 1 (the answer of a query-answer pair). Needs torch (.venv-export)."""
    import torch

    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for k, (s, q) in enumerate(zip(seqs, query_lengths)):
        ids[k, :len(s)], mask[k, :len(s)], types[k, q:len(s)] = torch.tensor(s), 1, 1
    return ids, mask, types
