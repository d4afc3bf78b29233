"""Quality gates: does the cheaper tier's answer look good enough to return, or should we escalate?"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Verdict:
    accept: bool
    reason: str


class QualityGate(ABC):
    name: ClassVar[str]

    @abstractmethod
    def check(self, query: str, answer: str, finish_reason: str = "stop") -> Verdict: ...


REFUSAL = re.compile(r"\b(i (cannot|can't|am unable to|'m unable to)|as an ai\b|i'm not able to|i do not know|"
                     r"i don't know|not sure|i apologi[sz]e)", re.I)


class HeuristicGate(QualityGate):
    """The seed's gate: reject empty, cut-off, refusing or hedging answers, and answers far too short
    for a long question. Known weakness (measured in the quality issue): it rejects short correct
    answers and accepts long wrong ones."""

    name = "heuristic"

    def check(self, query: str, answer: str, finish_reason: str = "stop") -> Verdict:
        text = answer.strip()
        if not text:
            return Verdict(False, "empty answer")
        if finish_reason == "length":
            return Verdict(False, "answer cut off at max_tokens")
        if REFUSAL.search(text[:400]):
            return Verdict(False, "refusal or uncertainty")
        if len(query.split()) > 60 and len(text.split()) < 10:
            return Verdict(False, f"{len(text.split())}-word answer to a {len(query.split())}-word question")
        return Verdict(True, "passed surface checks")


GATES: dict[str, type[QualityGate]] = {HeuristicGate.name: HeuristicGate}


def gate(name: str) -> QualityGate:
    if name not in GATES:
        raise KeyError(f"unknown gate {name!r}; available: {sorted(GATES)}")
    return GATES[name]()
