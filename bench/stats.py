"""Latency summaries and process measurements (standard library only: shared by both interpreters)."""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "mean_ms": sum(ms) / len(ms), "min_ms": min(ms),
            "max_ms": max(ms)}


def distribution(values: Sequence[int]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "p10": percentile(values, 10), "p50": percentile(values, 50),
            "p90": percentile(values, 90), "max": max(values), "mean": sum(values) / len(values)}


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) of a live process, in MB (10^6 bytes, the issue's unit)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key.lower() + "_mb"] = int(value.split()[0]) * 1024 / 1e6  # reported in kB, that is KiB
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces; fields after its closing paren are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot (the aggregate line of /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def cpu_account(measured: Callable[[], float], client: Callable[[], float] | None = own_cpu_seconds
                ) -> Iterator[dict[str, float]]:
    """Splits the machine's busy CPU time over a block into the measured process, its client and all others.

    The machine may be shared: "other_s" shows how much CPU something else took while we measured.
    Pass client=None when the measured process is its own client.
    """
    client = client or (lambda: 0.0)
    account: dict[str, float] = {}
    wall, busy, target, own = time.perf_counter(), system_busy_seconds(), measured(), client()
    yield account
    account["wall_s"] = time.perf_counter() - wall
    account["measured_s"] = measured() - target
    account["client_s"] = client() - own
    account["other_s"] = max(0.0, system_busy_seconds() - busy - account["measured_s"] - account["client_s"])
