"""Provider spend per account and calendar month (UTC): what the per-key limits and the shadow's budget count.

Without a file the ledger is this process's memory: it starts at zero with the process, and each replica counts on
its own. With `spend.ledger` set (a path; `{host}` = this host's name), each router process
- keeps its month's spend in its own file, rewritten atomically (tierwise/atomic.py) every `spend.sync_s` seconds
  while it changes, and at shutdown;
- reads that file back at start, so a restart or a rollout resumes the month's count instead of starting over;
- adds every other file the path matches (`{host}` read as `*`) for the same month, re-read every `spend.sync_s`:
  replicas writing to a shared volume share one limit, each seeing the others' spend at most that late.

A file of another replica that cannot be read (being replaced on a volume without atomic renames, or damaged)
keeps the last spend read from it, with a warning; this process's own file must be readable and writable at start,
or the router does not start (a limit that silently restarts from zero is the failure this file exists to prevent).
A write that fails later is retried at the next sync, with a warning.
"""
from __future__ import annotations

import asyncio
import calendar
import fcntl
import glob
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from tierwise.atomic import write_atomic

from .replicas import every_replica, own_file

log = logging.getLogger("tierwise.router.ledger")


class LedgerError(ValueError):
    """This process's ledger file cannot be used."""


class SpendLedger:
    """USD spent per account this month: this process's own, plus (with a file) the other replicas'."""

    def __init__(self, template: str = "", sync_s: float = 5.0, wall=time.time, host: str | None = None):
        self._wall = wall
        self.sync_s = sync_s
        self.path = own_file(template, host)
        self._pattern = every_replica(template)
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._month = month(wall())
        self._own: dict[str, float] = {}
        self._others: dict[str, tuple[str, dict[str, float]]] = {}  # file -> (month, spend per account)
        self._others_total: dict[str, dict[str, float]] = {}  # month -> account -> their spend added up
        self._dirty = False
        if self.path is not None:
            _hold(self.path)
            self._restore()
            try:
                self._write({"month": self._month, "usd": dict(self._own)})
            except OSError as err:
                raise LedgerError(f"spend.ledger: cannot write {self.path} ({err})") from None
            self._read_others()

    def charge(self, account: str, usd: float) -> None:
        with self._lock:
            self._roll()
            self._own[account] = self._own.get(account, 0.0) + usd
            self._dirty = self.path is not None

    def spent(self, account: str) -> float:
        """This month's spend of `account`, by this process and (as last read) every other replica."""
        with self._lock:
            self._roll()
            return self._own.get(account, 0.0) + self._others_total.get(self._month, {}).get(account, 0.0)

    def sync(self) -> None:
        """Write this process's spend if it changed, then re-read the other replicas' files."""
        if self.path is None:
            return
        self.flush()
        self._read_others()

    def flush(self) -> None:
        # One writer at a time (the sync thread, or shutdown on the loop), so an older snapshot never lands last.
        with self._writing:
            with self._lock:
                if self.path is None or not self._dirty:
                    return
                doc = {"month": self._month, "usd": dict(self._own)}
                self._dirty = False
            try:
                self._write(doc)
            except OSError as err:
                with self._lock:
                    self._dirty = True  # written at the next sync instead
                log.warning("spend ledger: cannot write %s: %s", self.path, err)

    async def run(self) -> None:
        """Sync every `sync_s` seconds until cancelled (the file work off the event loop)."""
        while True:
            await asyncio.sleep(self.sync_s)
            await asyncio.to_thread(self.sync)

    def _write(self, doc: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(doc, sort_keys=True))

    def _roll(self) -> None:
        now = month(self._wall())
        if now != self._month:
            self._month, self._own, self._dirty = now, {}, self.path is not None

    def _restore(self) -> None:
        if not self.path.exists():
            return
        try:
            found_month, usd = _parse(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise LedgerError(f"spend.ledger: cannot read {self.path} ({err}); it holds this month's spend, so the "
                              "router will not start without it: repair or remove it") from None
        if found_month == self._month:
            self._own = usd

    def _read_others(self) -> None:
        # A file untouched since before this month began (a pod long gone) cannot hold this month's spend; a day's
        # margin covers clocks that disagree across a shared volume.
        stale = calendar.timegm(time.strptime(month(self._wall()), "%Y-%m")) - 86400
        others, totals = {}, {}
        for name in sorted(glob.glob(self._pattern)):
            if Path(name) == self.path or Path(name).name.startswith("."):
                continue
            try:
                if os.stat(name).st_mtime < stale:
                    continue
                others[name] = _parse(Path(name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as err:
                log.warning("spend ledger: cannot read %s (%s); %s", name, err, "keeping the spend last read from it"
                            if name in self._others else "not counting it until it can be read")
                if name not in self._others:
                    continue
                others[name] = self._others[name]
            found_month, usd = others[name]
            total = totals.setdefault(found_month, {})
            for account, amount in usd.items():
                total[account] = total.get(account, 0.0) + amount
        with self._lock:
            self._others, self._others_total = others, totals


# This process's own files, each locked (its descriptor left open, never read again) for as long as it runs.
_HELD: set[Path] = set()


def _hold(path: Path) -> None:
    """Lock `path` for this process (through `.<name>.lock` beside it), or LedgerError when another process on this
    host holds it: two routers rewriting one file would each overwrite the other's spend."""
    path = path.resolve()
    if path in _HELD:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise LedgerError(f"spend.ledger: cannot write {path} ({err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LedgerError(f"spend.ledger: {path} is kept by another router process (on this host, or one sharing "
                          "its volume); {host} stands for the host's name, so give each process a path of its own"
                          ) from None
    except OSError as err:  # a volume without locks: nothing to check with, and nothing to refuse for
        log.warning("spend ledger: cannot lock %s (%s); make sure no other process on this host keeps it", path, err)
    _HELD.add(path)


def month(wall: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(wall))


def _parse(text: str) -> tuple[str, dict[str, float]]:
    doc = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("month"), str) or not isinstance(doc.get("usd"), dict):
        raise ValueError('not a spend ledger: expected {"month": "YYYY-MM", "usd": {account: amount}}')
    usd = doc["usd"]
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               and math.isfinite(v) and v >= 0 for k, v in usd.items()):
        raise ValueError("spend amounts must be finite numbers >= 0")
    return doc["month"], {k: float(v) for k, v in usd.items()}
