"""What the serving probes share: start `python -m classifier_service` once per variant each round, in an order
that rotates from round to round (the machine is shared, so load falls on every variant alike), and measure
each start. A variant is code run before the service starts and the service's arguments."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from typing import Callable

from bench import grpc_load
from tierwise.blas import VARIABLES
from tierwise_tools.paths import ROOT

from .d0021_route_path import spawn

Variant = tuple[str, list[str]]  # (code run first, arguments)


def rotate(variants: dict[str, Variant], rounds: int, measure: Callable[..., dict[str, float]],
           after_round: Callable[[int], None] = lambda r: None,
           with_pid: bool = False) -> dict[str, dict[str, list[float]]]:
    """name -> figure -> its value in each round; `measure` gets a started service's address (and, `with_pid`,
    its process id)."""
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            code, args = variants[name]
            service = spawn(ROOT, "classifier_service", code, None, *args)
            try:
                got = measure(service.address, service.proc.pid) if with_pid else measure(service.address)
            finally:
                service.stop()
            for key, value in got.items():
                figures[name].setdefault(key, []).append(value)
            print(f"round {r + 1}, {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()), file=sys.stderr,
                  flush=True)
        after_round(r)
    return figures


def load_and_one_caller(mixed: list[str], short: list[str], calls: int, seconds: float,
                        short_load: list[str] | None = None) -> Callable[[str], dict[str, float]]:
    """The figures a start gets, after 200 mixed texts to warm up: 32 callers sending unique mixed texts for
    `seconds` ("mixed", q/s); with `short_load`, 32 callers sending unique short ones for half as long ("short");
    then one caller sending the next `calls` of `short` one at a time ("p50", ms)."""
    used = 0

    def measure(address: str) -> dict[str, float]:
        nonlocal used
        grpc_load.concurrent(address, mixed[:200], 32, 2.0)
        got = {"mixed": grpc_load.concurrent(address, mixed[200:], 32, seconds)["qps"]}
        if short_load is not None:
            got["short"] = grpc_load.concurrent(address, short_load, 32, seconds / 2)["qps"]
        got["p50"] = grpc_load.sequential(address, short[used:used + calls], warmup=short[-20:])["p50_ms"]
        used += calls
        return got

    return measure


def port_server(stack: ExitStack, command: list[str]) -> tuple[str, subprocess.Popen]:
    """A server subprocess, BLAS on one thread, that prints its port once ready: (its address, the process). It is
    killed when `stack` closes."""
    env = {**os.environ, **{name: "1" for name in VARIABLES}}
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    stack.callback(lambda: (proc.kill(), proc.wait()))
    port = proc.stdout.readline().strip()
    if not port:
        raise RuntimeError(f"{' '.join(command)} exited before it was ready")
    return f"127.0.0.1:{port}", proc
