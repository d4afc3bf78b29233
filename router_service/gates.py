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


class SurfaceGate(QualityGate):
    """Reject answers that fail on their face: empty, cut off at max_tokens, refusing or hedging. It cannot
    tell a right answer from a wrong one; it catches the failures a provider returns as success."""

    name = "surface"

    def check(self, query: str, answer: str, finish_reason: str = "stop") -> Verdict:
        text = answer.strip()
        if not text:
            return Verdict(False, "empty answer")
        if finish_reason == "length":
            return Verdict(False, "answer cut off at max_tokens")
        if REFUSAL.search(text[:400]):
            return Verdict(False, "refusal or uncertainty")
        return Verdict(True, "passed surface checks")


class HeuristicGate(SurfaceGate):
    """The seed's gate: the surface checks, plus rejecting answers far too short for a long question. That
    rule rejects short correct answers: on routerbench's dev part, the answers it rejects are acceptable
    more often than those it passes (decision 0012). Kept for comparison; `surface` is the default."""

    name = "heuristic"

    def check(self, query: str, answer: str, finish_reason: str = "stop") -> Verdict:
        verdict = super().check(query, answer, finish_reason)
        words = len(answer.split())
        if verdict.accept and len(query.split()) > 60 and words < 10:
            return Verdict(False, f"{words}-word answer to a {len(query.split())}-word question")
        return verdict


GATES: dict[str, type[QualityGate]] = {g.name: g for g in (SurfaceGate, HeuristicGate)}


def gate(name: str) -> QualityGate:
    if name not in GATES:
        raise KeyError(f"unknown gate {name!r}; available: {sorted(GATES)}")
    return GATES[name]()
