"""clients/python as a distribution of its own: installed into a fresh venv (grpcio and protobuf from the package
index), it asks a real router; and the asyncio client against real servers on 127.0.0.1."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import grpc
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import tierwise_client
from tierwise_client import AsyncRouterClient, ClientOptions

from .provider_double import Fault, unused_port
from .servers import ROOT, router_stack

CLIENT = ROOT / "clients" / "python"
QUERY = "What time does the store close?"
# What the client package may pull in: its two dependencies and theirs.
ALLOWED = {"tierwise-client", "grpcio", "protobuf", "typing-extensions", "typing_extensions", "pip", "setuptools"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The real classifier (ONNX model) and router, providers replaced by the test double."""
    with router_stack(tmp_path_factory.mktemp("client-package"), "embedding") as (double, _, router):
        yield double, router


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv with nothing but `pip install ./clients/python` (run from a copy of the checkout's layout,
    so the build leaves nothing in the working tree); its python."""
    work = tmp_path_factory.mktemp("fresh")
    shutil.copytree(CLIENT, work / "clients" / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pip", "install", "-q", "./clients/python"], cwd=work,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return python


def in_venv(python: Path, code: str) -> str:
    out = subprocess.run([str(python), "-c", code], cwd=python.parent, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_fresh_venv_installs_only_grpcio_and_protobuf(fresh_venv):
    listed = json.loads(subprocess.run([str(fresh_venv), "-m", "pip", "list", "--format=json"], capture_output=True,
                                       text=True, timeout=60, check=True).stdout)
    names = {p["name"].lower() for p in listed}
    assert {"tierwise-client", "grpcio", "protobuf"} <= names and names <= ALLOWED, names
    # Nothing of the server came along.
    assert in_venv(fresh_venv, "import importlib.util as u; print(u.find_spec('tierwise'))") == "None"


def test_the_installed_client_routes_through_a_real_router(fresh_venv, stack):
    _, router = stack
    reply = json.loads(in_venv(fresh_venv, f"""
import json, tierwise_client
with tierwise_client.RouterClient({router.address!r}) as tw:
    r = tw.route({QUERY!r})
print(json.dumps({{"tier": r.tier, "model": r.model, "strategy": r.strategy, "degraded": r.degraded,
                  "probabilities": list(r.probabilities), "file": tierwise_client.__file__}}))
"""))
    assert reply["tier"] in (1, 2, 3) and reply["model"] and reply["strategy"] == "embedding"
    assert not reply["degraded"] and len(reply["probabilities"]) == 3
    assert str(fresh_venv.parent.parent) in reply["file"], "imported from the venv, not the checkout"


def test_the_declared_ranges_hold_the_pinned_versions():
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {canonicalize_name(name): version.split()[0] for name, version in pins.items()}
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]["dependencies"]
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in server.get("optional-dependencies", {}).values() for r in group]
    for spec in [*client, *server["dependencies"], *extras]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        if name == "tierwise-client":
            assert requirement.specifier.contains(tierwise_client.__version__), spec
            continue
        assert name in pins, f"{spec}: not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name]), f"{spec} excludes the pinned {pins[name]}"
    assert {Requirement(s).name for s in client} == {"grpcio", "protobuf"}
    declared = {canonicalize_name(Requirement(spec).name) for spec in [*server["dependencies"], *extras]}
    assert not set(pins) - declared, "pinned in requirements.txt but declared in no group of pyproject.toml"


# ------------------------------------------------------------------------------------------- the asyncio client


def test_async_client_routes_completes_and_streams(stack):
    double, router = stack
    double.reset()

    async def run():
        async with AsyncRouterClient(router.address, ClientOptions(timeout_s=20)) as tw:
            decision = await tw.route(QUERY, strategy="heuristic")
            answer = await tw.complete([("system", "be brief"), ("user", "hi there")], strategy="heuristic")
            pieces = [p async for p in tw.stream("hi there", strategy="heuristic")]
            return decision, answer, pieces, tw.last_summary

    decision, answer, pieces, summary = asyncio.run(run())
    assert decision.tier in (1, 2, 3) and decision.strategy == "heuristic"
    assert answer.content == "answer from t1-a: 2 words" and answer.tier == 1
    assert len(pieces) > 1 and "".join(pieces) == summary.content == answer.content
    assert [r.stream for r in double.requests_for("t1-a")] == [False, True]


def test_async_client_reports_invalid_argument_without_retrying(stack):
    _, router = stack

    async def run():
        async with AsyncRouterClient(router.address, ClientOptions(retries=3, backoff_s=0.01)) as tw:
            await tw.route("hi", strategy="no-such-strategy")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(run())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "strategy" in err.value.details()


def test_async_client_retries_unavailable_then_gives_up_with_the_status():
    attempts = []

    async def run():
        async with AsyncRouterClient(f"127.0.0.1:{unused_port()}",
                                     ClientOptions(retries=2, backoff_s=0.01, timeout_s=5)) as tw:
            stub_route = tw._stub.Route

            def counting(*args, **kwargs):
                attempts.append(1)
                return stub_route(*args, **kwargs)
            tw._stub.Route = counting
            await tw.route("hi")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(run())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and len(attempts) == 3


def test_async_stream_is_not_retried_once_text_arrived(stack):
    double, router = stack
    double.reset()
    double.script("t1-a", Fault.disconnect_mid_stream(after_chunks=2))
    pieces = []

    async def run():
        async with AsyncRouterClient(router.address, ClientOptions(retries=3, backoff_s=0.01)) as tw:
            async for piece in tw.stream("hi there", strategy="heuristic"):
                pieces.append(piece)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(run())
    assert err.value.code() == grpc.StatusCode.ABORTED and pieces
    assert len(double.requests_for("t1-a")) == 1


def test_a_malformed_traceparent_is_refused_before_any_call():
    async def run():
        async with AsyncRouterClient(f"127.0.0.1:{unused_port()}") as tw:
            await tw.route("hi", traceparent="00-not-a-trace")

    with pytest.raises(ValueError, match="traceparent"):
        asyncio.run(run())


def test_client_options_refuse_half_a_client_certificate():
    with pytest.raises(ValueError, match="certificate_chain and private_key"):
        ClientOptions(tls=True, certificate_chain=b"pem")
    with pytest.raises(ValueError, match="tls=True"):
        ClientOptions(certificate_chain=b"pem", private_key=b"pem")


def test_tierwise_client_is_the_one_client():
    out = subprocess.run([sys.executable, "-c", "import tierwise.client, tierwise_client; "
                          "print(tierwise.client.RouterClient is tierwise_client.RouterClient)"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "True", out.stderr
