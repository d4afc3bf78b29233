"""Offline replays registered by name, like the router's strategies, with typed options.

`replay(name, records, options)` replays one: a strategy (heuristic, embedding, cascade, cheapest), a baseline
(always-1, always-3, oracle, random) or the router's recorded decisions (as-routed). `start+cascade` composes,
as in the router: the cascade starts from the named strategy's replay.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from router_service.config import CascadeConfig, RouterConfig, load
from router_service.gates import GATES
from tierwise.data import Record

from . import evaluate
from .evaluate import CASCADE_STARTS, Replay
from .live_gate import LiveGate
from .paths import ENCODER_DIR, HEADS_DIR


@dataclass(frozen=True)
class ReplayOptions:
    target_quality: float = 0.95
    heads_dir: Path = HEADS_DIR
    head: str = ""  # "" routes each record by the head of its tier lineup, else the default head
    gate: str = ""  # the gate cascades run; "" for the router config's cascade.gate
    router: RouterConfig | None = None  # a config whose cascade section the cascades replay
    live_gate: LiveGate | None = None  # runs a gate that asks a model through the config's providers
    tradeoff: float | None = None  # the embedding head's operating point, if not its calibrated one

    @property
    def cascade(self) -> CascadeConfig:
        return self.router.cascade if self.router else CascadeConfig()


def cascade_options(config: Path | None, gate: str = "", concurrency: int = 4, verdicts: Path | None = None,
                    **options) -> ReplayOptions:
    """Options replaying the cascade of the router config at `config` (if any); a gate that asks a model runs live
    through its providers. Raises router_service.config.ConfigError for a bad config."""
    router = load(config) if config else None
    name = gate or (router.cascade.gate if router else "")
    live = (LiveGate(router, name, concurrency, verdicts)
            if router and name in GATES and not GATES[name].replayable else None)
    return ReplayOptions(gate=gate, router=router, live_gate=live, **options)


Replayer = Callable[[list[Record], ReplayOptions], Replay]
_REGISTRY: dict[str, Replayer] = {}
_COMPOSABLE: set[str] = set()
# What `tierwise eval` offers and reports, in its report's order.
LISTED = ("heuristic", "embedding", "cascade", "embedding+cascade", *evaluate.BASELINES, evaluate.AS_ROUTED)


def register(name: str, composable: bool = False) -> Callable[[Replayer], Replayer]:
    def add(replayer: Replayer) -> Replayer:
        _REGISTRY[name] = replayer
        if composable:
            _COMPOSABLE.add(name)
        return replayer
    return add


def unreplayable_start(name: str) -> str:
    return f"cascade.start: {name!r} cannot be replayed offline; {', '.join(CASCADE_STARTS[:-1])} and {CASCADE_STARTS[-1]} can"


def check(name: str) -> tuple[str, str]:
    """(start, replay) of a known name (start "" unless composed); KeyError saying what is known otherwise."""
    start, _, outer = name.rpartition("+")
    if outer not in _REGISTRY or (start and (outer not in _COMPOSABLE or start not in _REGISTRY)):
        raise KeyError(f"strategy: unknown {name!r}; one of {', '.join(LISTED)}")
    return start, outer


def replay(name: str, records: list[Record], options: ReplayOptions) -> Replay:
    """`name` replayed on `records`. KeyError naming what is wrong for an unknown or unreplayable name."""
    start, outer = check(name)
    replayer = _REGISTRY[outer]
    return replayer(records, options, start=start) if start else replayer(records, options)


@register("heuristic")
def _heuristic(records: list[Record], options: ReplayOptions) -> Replay:
    return evaluate.heuristic(records)


@register("embedding")
def _embedding(records: list[Record], options: ReplayOptions) -> Replay:
    return evaluate.embedding(records, options.target_quality, ENCODER_DIR, options.heads_dir, options.head,
                              tradeoff=options.tradeoff)


@register("cheapest")  # the router's always-tier-1 strategy, a cascade's start
def _cheapest(records: list[Record], options: ReplayOptions) -> Replay:
    return evaluate.baseline("always-1", records)


for _name in evaluate.BASELINES:
    register(_name)(lambda records, options, _name=_name: evaluate.baseline(_name, records))


@register(evaluate.AS_ROUTED)
def _as_routed(records: list[Record], options: ReplayOptions) -> Replay:
    return evaluate.as_routed(records)


@register("cascade", composable=True)
def _cascade(records: list[Record], options: ReplayOptions, start: str = "") -> Replay:
    """As the router runs it: plain `cascade` starts where `cascade.start` says, at `cascade.start_tradeoff`; the
    gate is `cascade.gate` unless the options name one."""
    settings = options.cascade
    first = start or settings.start
    if first not in CASCADE_STARTS:
        raise KeyError(unreplayable_start(first))
    from_start = replace(options, tradeoff=settings.start_tradeoff)
    return evaluate.cascade(records, lambda replayable: replay(first, replayable, from_start),
                            options.gate or settings.gate, f"{start}+cascade" if start else "cascade", options.live_gate)
