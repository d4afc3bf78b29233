"""Per-key limits at the router's front door: requests per minute and provider spend per calendar month (UTC).

Rates live in this process's memory, so N replicas admit up to N times a key's requests per minute between them.
Spend is kept in the router's spend ledger (router_service/ledger.py): in memory by default, or with `spend.ledger`
in files that outlive a restart and that replicas sharing a volume add up. It is what the router's own cost
accounting charged for the answers it delivered (`cost_usd`, escalations and verifier calls included); it is known
only once an answer is done, so the call that crosses a monthly limit finishes and the next ones are refused. A call
that pays no provider (a Route whose strategy asks no model to decide) is not refused for spend: only for its rate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from .ledger import SpendLedger, month

MAX_RPM = 10**9  # a limit past any traffic; far past, a bucket's arithmetic overflows a float


@dataclass(frozen=True)
class Refusal:
    kind: str            # rate_limited | spend_limited
    retry_after_s: int   # whole seconds until a retry can succeed
    message: str


@dataclass
class _Bucket:
    rpm: int
    tokens: float
    at: float


class Limits:
    """Token buckets (a minute's worth of requests, refilled evenly) and this month's spend, per key id."""

    def __init__(self, clock=time.monotonic, wall=time.time, ledger: SpendLedger | None = None):
        self._clock = clock
        self._wall = wall
        self._buckets: dict[str, _Bucket] = {}
        self.ledger = ledger or SpendLedger(wall=wall)

    def admit(self, key_id: str, rpm: int, monthly_usd: float, *, paid: bool = True) -> Refusal | None:
        """None, and one request counted, when the key is within its limits (0 = no limit); else why not. A call
        that is not `paid` for costs the key nothing, so its monthly spend does not refuse it."""
        return (self.over_spend(key_id, monthly_usd) if paid else None) or self._over_rate(key_id, rpm)

    def refund(self, key_id: str, rpm: int) -> None:
        """One request counted by `admit` given back."""
        bucket = self._buckets.get(key_id)
        if bucket is not None and bucket.rpm == rpm:  # a bucket is made for a limit only: never rpm 0
            bucket.tokens = min(float(rpm), bucket.tokens + 1)

    def charge(self, key_id: str, usd: float) -> None:
        self.ledger.charge(_account(key_id), usd)

    def spent(self, key_id: str) -> float:
        return self.ledger.spent(_account(key_id))

    def _over_rate(self, key_id: str, rpm: int) -> Refusal | None:
        if not rpm:
            return None
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(rpm, float(rpm), now)
        else:  # its limit may have changed in the keys file: a lower one is no fresh start (the cap below)
            bucket.rpm = rpm
        bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.at) * rpm / 60)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        wait = max(1, math.ceil((1 - bucket.tokens) * 60 / rpm))
        return Refusal("rate_limited", wait, f"rate limit: key {key_id} may make {rpm} requests a minute; retry "
                                             f"after {wait} s (at {_utc(self._wall() + wait)})")

    def over_spend(self, key_id: str, monthly_usd: float) -> Refusal | None:
        if not monthly_usd:
            return None
        spent = self.spent(key_id)
        if spent < monthly_usd:
            return None
        wall = self._wall()
        now = datetime.fromtimestamp(wall, timezone.utc)
        following = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=timezone.utc)
        wait = max(1, math.ceil(following.timestamp() - wall))
        return Refusal("spend_limited", wait,
                       f"monthly spend limit: key {key_id} spent ${spent:.6g} of its ${monthly_usd:g} in "
                       f"{month(wall)} (UTC); retry after {wait} s (at {_utc(following.timestamp())})")


def _account(key_id: str) -> str:
    return f"key:{key_id}"  # apart from the shadow's account in a shared ledger


def _utc(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
