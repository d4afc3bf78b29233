"""The one interface every routing strategy implements, and the registry that builds them by name."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar

from tierwise.tiers import FRONTIER

from ..gates import QualityGate


@dataclass(frozen=True)
class Decision:
    tier: int
    strategy: str
    reason: str
    probabilities: tuple[float, ...] = ()
    degraded: bool = False
    head_version: str = ""
    thresholds: tuple[float, ...] = ()
    # What reaching the decision cost (a judge model's call), at the prices of tier `cost_tier`.
    cost_usd: float = 0.0
    cost_tier: int = 0

    def degrade(self, strategy: str, why: str) -> "Decision":
        """This decision, reported as the fallback that stood in for `strategy`."""
        return replace(self, strategy=strategy, degraded=True, reason=f"{why}; fell back to {self.strategy}: {self.reason}")


@dataclass(frozen=True)
class RouteInput:
    query: str
    head: str = ""
    # Monotonic time by which the caller needs the answer (None: no deadline).
    deadline: float | None = None
    # A head's decision at this tradeoff instead of its calibrated one (a cascade's start; None: the head's).
    tradeoff: float | None = None
    # The quality vs frontier a head's decision is held to: its tradeoff calibrated for it (None: its default).
    quality_target: float | None = None
    # Told of each provider attempt a strategy makes to decide, as on_attempt(tier, attempt, purpose).
    on_attempt: Callable[..., None] | None = None
    # The highest tier the caller's API key may pay for, a model asked to decide included.
    max_tier: int = FRONTIER


class Strategy(ABC):
    """Decides the cheapest adequate tier for a query."""

    name: ClassVar[str]
    # True for strategies built on a starting strategy (`start+name`), like cascade.
    composable: ClassVar[bool] = False
    # The gate each answer must pass, or the dispatcher escalates, up to `max_tier` (None: the first answer is
    # returned). A cascade sets both.
    gate: QualityGate | None = None
    max_tier: int = FRONTIER
    # A provider is asked (and paid) for the decision itself, as the judge's model is: Route costs the key then too.
    pays_to_decide: bool = False
    # The tier is the caller's to name (tier1..tier3, cheapest): the conversation's floor does not raise it; a tier
    # whose providers cannot take the request is still skipped.
    pinned: ClassVar[bool] = False

    @abstractmethod
    async def decide(self, request: RouteInput) -> Decision: ...


Factory = Callable[..., Strategy]
_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        return factory
    return add


def registered() -> list[str]:
    return sorted(_REGISTRY)


def factory(name: str) -> Factory | None:
    return _REGISTRY.get(name)


def known(name: str) -> bool:
    """Whether `name` names a strategy: a registered one, or `X+Y` where Y is composable and X registered."""
    start, _, outer = name.rpartition("+")
    make = factory(outer)
    return make is not None and (not start or (factory(start) is not None and getattr(make, "composable", False)))


def loop_through(name: str, starts: dict[str, str]) -> list[str]:
    """The strategies `name` builds on, `starts` giving what each builds on (the judge's fallback, the cascade's
    start; X+cascade starts from X), when they lead back to `name` ([] when they end)."""
    chain, step = [name], starts.get(name, "")
    while step and step not in chain:
        chain.append(step)
        step = step.rpartition("+")[0] or starts.get(step, "")
    return [*chain, name] if step == name else []


@dataclass
class Strategies:
    """Builds each named strategy once, on first use, from the shared dependencies."""
    deps: dict = field(default_factory=dict)
    _built: dict[str, Strategy] = field(default_factory=dict)

    def get(self, name: str) -> Strategy:
        """A strategy by name; `X+Y` composes: Y built with X as its starting strategy."""
        if name not in self._built:
            if not known(name):
                raise KeyError(name)
            start, _, outer = name.rpartition("+")
            make = factory(outer)
            self._built[name] = make(self, start=start) if start else make(self)
        return self._built[name]

    def pays_to_decide(self, name: str) -> bool:
        """Whether strategy `name` pays a provider for its decision (False for no strategy: the call is refused for
        its name)."""
        try:
            return self.get(name).pays_to_decide
        except KeyError:
            return False
