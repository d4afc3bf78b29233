"""A per-provider circuit breaker: stop calling a provider that keeps failing, probe it again later.

closed --N consecutive failures--> open --cooldown elapsed--> half-open (one probe at a time)
half-open --probe succeeds--> closed;  half-open --probe fails--> open (a new cooldown)
"""
from __future__ import annotations

import threading
import time
from enum import StrEnum
from typing import Callable, TypeVar

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


StateListener = Callable[[str, BreakerState, BreakerState], None]  # (breaker name, old, new)


class CircuitBreaker:
    def __init__(self, name: str, *, failure_threshold: int = 5, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, on_state_change: StateListener | None = None) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must be 0 or more")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_state_change = on_state_change
        # A lock, not just the event loop, because the router may share providers across threads.
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._transitions: list[tuple[BreakerState, BreakerState]] = []

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has elapsed reads as half-open."""
        return self._locked(lambda: self._state)

    def reading(self) -> BreakerState:
        """The state as `state` reads it, without taking the step from open to half-open (and telling the listener
        of it): for a reader on another thread, such as the metrics collector."""
        with self._lock:
            return BreakerState.HALF_OPEN if self._cooled() else self._state

    @property
    def cooling(self) -> bool:
        """Open and cooling down: a call would be refused at once. Once the cooldown has passed the breaker reads
        half-open, and its probe may go out."""
        return self.state is BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def allow(self) -> bool:
        """May a call go out now? In half-open this admits one probe; its outcome must then be recorded."""
        return self._locked(self._allow)

    def record_success(self) -> None:
        self._locked(self._success)

    def record_failure(self) -> None:
        self._locked(self._failure)

    def record_abandoned(self) -> None:
        """An admitted call ended with no verdict (e.g. it was cancelled): free the probe slot."""
        self._locked(self._abandon)

    def _allow(self) -> bool:
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def _success(self) -> None:
        # Outcomes of calls admitted before the breaker opened are stale: they neither close it nor
        # extend its cooldown.
        if self._state is BreakerState.OPEN:
            return
        self._consecutive_failures = 0
        self._probe_in_flight = False
        self._move_to(BreakerState.CLOSED)

    def _failure(self) -> None:
        if self._state is BreakerState.OPEN:
            return
        self._consecutive_failures += 1
        self._probe_in_flight = False
        if self._state is BreakerState.HALF_OPEN or self._consecutive_failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._move_to(BreakerState.OPEN)

    def _abandon(self) -> None:
        self._probe_in_flight = False

    def _locked(self, operation: Callable[[], T]) -> T:
        """Run `operation` under the lock, then tell the listener about state changes, outside the lock
        so that a listener may read the breaker."""
        with self._lock:
            if self._cooled():
                self._move_to(BreakerState.HALF_OPEN)
            result = operation()
            transitions, self._transitions = self._transitions, []
        if self._on_state_change is not None:
            for old, new in transitions:
                self._on_state_change(self.name, old, new)
        return result

    def _cooled(self) -> bool:
        """Open, and its cooldown has passed: half-open, once asked (the lock held)."""
        return self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s

    def _move_to(self, new: BreakerState) -> None:
        if new is not self._state:
            self._transitions.append((self._state, new))
            self._state = new
