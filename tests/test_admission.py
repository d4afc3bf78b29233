"""A burst of calls at the router, over real sockets: each is answered or refused with RESOURCE_EXHAUSTED,
never CANCELLED."""
from __future__ import annotations

import asyncio
import collections
import time

import grpc
import pytest

from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc

from .servers import router_stack

BURST = 2000


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with router_stack(tmp_path_factory.mktemp("router"), "heuristic") as services:
        yield services


async def burst(address: str, n: int, strategy: str) -> collections.Counter:
    """`n` Route calls at once from one aio client on one connection; how each ended."""
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        route = router_pb2_grpc.RouterServiceStub(channel).Route

        async def one(i: int) -> str:
            try:
                await route(pb.RouteRequest(query=f"What is {i} + {i}?", strategy=strategy), timeout=60)
                return "OK"
            except grpc.aio.AioRpcError as err:
                return err.code().name

        return collections.Counter(await asyncio.gather(*(one(i) for i in range(n))))


def test_a_burst_is_answered_or_refused_never_cancelled(stack):
    """Before the servers raised the gRPC core's limit on calls it holds for the event loop, 3-10 % of such a
    burst ended CANCELLED, dropped by the core before the service saw it."""
    _, _, router = stack
    started = time.monotonic()
    codes = asyncio.run(asyncio.wait_for(burst(router.address, BURST, "heuristic"), 120))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= BURST // 2, codes
    assert time.monotonic() - started < 60
