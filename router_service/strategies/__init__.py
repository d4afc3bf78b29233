"""Routing strategies: importing this package registers every built-in strategy by name."""
from . import cascade, embedding, fixed, heuristic, judge  # noqa: F401
from .base import Decision, RouteInput, Strategies, Strategy, known, loop_through, registered

__all__ = ["Decision", "RouteInput", "Strategies", "Strategy", "known", "loop_through", "registered"]
