"""Start the real services as subprocesses on 127.0.0.1 for integration tests (bounded waits)."""
from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServiceProcess:
    proc: subprocess.Popen
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    address: str = ""
    pump: threading.Thread | None = None

    def wait_for(self, marker: str, timeout: float = 60.0) -> str:
        """The first stdout line containing `marker`; fails with the output so far after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if marker in line:
                return line
        raise AssertionError(f"no line with {marker!r} within {timeout}s; output:\n" + "".join(self.output))

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.pump is not None:
            self.pump.join(5)  # the output holds the process's last lines once stop() returns
        return self.proc.returncode


def start(module: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return watch(subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))


def watch(proc: subprocess.Popen) -> ServiceProcess:
    """`proc` (started with text stdout) as a ServiceProcess whose output lines are collected as they come."""
    service = ServiceProcess(proc)

    def pump() -> None:
        for line in proc.stdout:
            service.output.append(line)
            service.lines.put(line)

    service.pump = threading.Thread(target=pump, daemon=True)
    service.pump.start()
    return service


def start_classifier(*args: str, env: dict[str, str] | None = None, wait_ready: bool = True) -> ServiceProcess:
    service = start("classifier_service", "--listen", "127.0.0.1:0", *args, env=env)
    line = service.wait_for("listening on")
    service.address = line.split("listening on ")[1].split()[0]
    if wait_ready:
        service.wait_for("ready on")
    return service


def start_router(config: Path | str, classifier_address: str, *args: str,
                 env: dict[str, str] | None = None) -> ServiceProcess:
    service = start("router_service", "--listen", "127.0.0.1:0", "--config", str(config),
                    "--classifier", classifier_address, *args, env=env)
    line = service.wait_for("listening on")
    service.address = line.split("listening on ")[1].split()[0]
    service.wait_for("ready on")
    return service


KEY_ENV = "TIERWISE_TEST_PROVIDER_KEY"
# A classifier budget no real classifier meets for LONG_QUERY. gRPC enforces a deadline by a timer that a busy
# machine runs late (a 10 us budget on a short query was once met by an answer 5 ms later), so the budget is 1 ms
# against a long text's encode of tens of milliseconds: a wide margin.
MISSED_BUDGET_MS = 1.0
LONG_QUERY = " ".join(f"Is water wet in case {i}, and why or why not?" for i in range(30))
UNUSED_CLASSIFIER = "127.0.0.1:1"  # no classifier listens here: for routers whose strategies never call one


def router_config(base_url: str, timeout_s: float = 2.0, **overrides) -> dict:
    """Three tiers of providers on `base_url` (each waiting `timeout_s` for an answer), `overrides` over the rest."""
    def provider(name: str, **extra) -> dict:
        return {"name": name, "base_url": base_url, "model": name, "api_key_env": KEY_ENV,
                "timeout_s": timeout_s, "max_retries": 1, "breaker_failures": 3, "breaker_cooldown_s": 1.0, **extra}
    tiers = [{"tier": 1, "price_per_mtok": {"input": 0.25, "output": 1.25},
              "providers": [provider("t1-a"), provider("t1-b")]},
             {"tier": 2, "price_per_mtok": {"input": 3.0, "output": 15.0}, "providers": [provider("t2-a")]},
             {"tier": 3, "price_per_mtok": {"input": 15.0, "output": 75.0}, "providers": [provider("t3-a")]}]
    doc = {"strategy": "heuristic", "classifier": {"timeout_ms": 500}, "tiers": tiers,
           "judge": {"tier": 1, "timeout_ms": 2000, "fallback": "heuristic"},
           "cascade": {"start": "heuristic", "gate": "surface", "max_tier": 3}}
    doc.update(overrides)
    return doc


def capability_config(base_url: str, capability: str, able: set[str], **overrides) -> dict:
    """`router_config` (heuristic) whose providers named in `able` have `capability` (vision, tools) and the others
    not."""
    doc = router_config(base_url, **{"strategy": "heuristic", **overrides})
    for tier in doc["tiers"]:
        for provider in tier["providers"]:
            provider[capability] = provider["name"] in able
    return doc


@contextmanager
def running_router(doc: dict, classifier_address: str, config_dir: Path, *args: str,
                   env: dict[str, str] | None = None, check_exit: bool = True):
    """A router with config `doc` (written to config_dir), stopped on exit; by default it must exit cleanly."""
    path = Path(config_dir) / "tierwise.yaml"
    path.write_text(yaml.safe_dump(doc))
    router = start_router(path, classifier_address, *args, env=env)
    try:
        yield router
    finally:
        code = router.stop()
    if check_exit:
        assert code == 0, "".join(router.output)


@contextmanager
def router_stack(config_dir: Path, strategy: str, env: dict[str, str] | None = None):
    """The provider test double, a classifier and a router wired to both: yields (double, classifier, router)."""
    from .provider_double import ProviderDouble

    env = {KEY_ENV: "k", **(env or {})}
    with ProviderDouble() as double:
        classifier = start_classifier(env=env)
        try:
            with running_router(router_config(double.base_url, strategy=strategy), classifier.address, config_dir,
                                env=env, check_exit=False) as router:
                yield double, classifier, router
        finally:
            classifier.stop()


def http_address(router: ServiceProcess) -> str:
    """The HTTP API's host:port, from the router's ready line (`... http=HOST:PORT`)."""
    ready = next(line for line in router.output if " ready on " in line)
    return ready.split(" http=")[1].split()[0]


@contextmanager
def part_of_a_body(address: str, path: str, timeout: float = 20) -> Iterator[socket.socket]:
    """A connection to `address` that has sent a POST to `path` declaring a 100-byte JSON body, and 10 bytes of it."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n".encode()
                     + b'content-length: 100\r\n\r\n{"model": ')
        yield conn


def post(address: str, body: bytes, headers: dict[str, str] | None = None,
         path: str = "/v1/chat/completions") -> tuple[int, dict, dict]:
    """Raw POST (to /v1/chat/completions by default): status, headers, JSON body."""
    conn = http.client.HTTPConnection(address, timeout=20)
    try:
        conn.request("POST", path, body, {"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def openai_client(router: ServiceProcess) -> OpenAI:
    """The official SDK pointed at `router`'s HTTP API, no retries."""
    return OpenAI(base_url=f"http://{http_address(router)}/v1", api_key="unused", max_retries=0, timeout=20)
