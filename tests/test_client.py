"""The Python client package and the `tierwise route` / `tierwise complete` commands against real servers."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import pytest

from tierwise.client import AsyncRouterClient, ClientOptions, RouterClient

from .provider_double import Fault, unused_port
from .servers import router_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with router_stack(tmp_path_factory.mktemp("client"), "heuristic") as (double, _, router):
        yield double, router


def test_sync_client_routes_completes_and_streams(stack):
    double, router = stack
    with RouterClient(router.address) as tw:
        assert tw.route("hi").tier == 1
        assert tw.complete("hi there").content == "answer from t1-a: 2 words"
        assert "".join(tw.stream([("system", "be brief"), ("user", "hi there")])) == "answer from t1-a: 2 words"
        assert tw.last_summary.tier == 1


def test_async_client(stack):
    _, router = stack

    async def run():
        async with AsyncRouterClient(router.address) as tw:
            decision = await tw.route("hi", strategy="heuristic")
            pieces = [p async for p in tw.stream("hi there")]
            return decision, "".join(pieces), tw.last_summary

    decision, text, summary = asyncio.run(run())
    assert decision.tier == 1 and text == summary.content


def test_client_retries_unavailable_then_gives_up_with_the_status():
    with RouterClient(f"127.0.0.1:{unused_port()}", ClientOptions(retries=2, backoff_s=0.01, timeout_s=3)) as tw:
        with pytest.raises(grpc.RpcError) as err:
            tw.route("hi")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_does_not_retry_a_stream_that_already_sent_text(stack):
    double, router = stack
    double.reset()
    double.script("t1-a", Fault.disconnect_mid_stream(after_chunks=2))
    pieces = []
    with RouterClient(router.address, ClientOptions(retries=3, backoff_s=0.01)) as tw:
        with pytest.raises(grpc.RpcError) as err:
            for piece in tw.stream("hi there"):
                pieces.append(piece)
    assert err.value.code() == grpc.StatusCode.ABORTED and pieces
    assert len(double.requests_for("t1-a")) == 1


def test_cli_route_and_complete(stack):
    _, router = stack
    cli = [sys.executable, "-m", "tierwise_tools.cli"]
    out = subprocess.run([*cli, "route", "What is 2 + 2?", "--address", router.address],
                         capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout)["tier"] == 1
    out = subprocess.run([*cli, "complete", "hi there", "--address", router.address],
                         capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "answer from t1-a: 2 words" and "[tier 1 t1-a/t1-a" in out.stderr
    bad = subprocess.run([*cli, "route", "   ", "--address", router.address], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "INVALID_ARGUMENT: query:" in bad.stderr
