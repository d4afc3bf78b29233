"""The Python client (tierwise_client) and the `tierwise route` / `tierwise complete` commands against real servers:
TLS with a client certificate, and the caller's trace context at a real OTLP receiver."""
from __future__ import annotations

import asyncio
import time
import json
import subprocess
import sys

import grpc
import pytest

from tierwise_client import AsyncRouterClient, ClientOptions, RouterClient

from .certs import authority, issue, write_ca
from .otlp_receiver import OtlpReceiver
from .provider_double import Fault, unused_port
from .servers import KEY_ENV, UNUSED_CLASSIFIER, router_config, router_stack, running_router

TRACE_ID = "7af92f3577b34da6a3ce929d0e0e4739"
PARENT_SPAN_ID = "10f067aa0ba902b8"


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with router_stack(tmp_path_factory.mktemp("client"), "heuristic", env) as (double, _, router):
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


def test_both_clients_pass_the_generation_options_to_the_provider(stack):
    double, router = stack
    options = {"top_p": 0.5, "stop": "END", "seed": 9, "response_format": {"type": "json_object"}}
    expected = {**options, "stop": ["END"]}

    async def run():
        async with AsyncRouterClient(router.address) as tw:
            return "".join([p async for p in tw.stream("hi there", **options)])

    before = len(double.requests)
    with RouterClient(router.address) as tw:
        tw.complete("hi there", **options)
    asyncio.run(run())
    sent = [r.body for r in double.requests[before:]]
    assert len(sent) == 2 and all({k: body.get(k) for k in expected} == expected for body in sent), sent


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


def test_clients_do_not_ask_every_provider_again_after_the_router_asked_them_all(stack):
    """The router's "no provider could answer" comes after every provider was asked: it says not to retry
    (grpc-retry-pushback-ms -1), so neither the sync nor the async client sends the call again, which would bill
    every provider once more. A router that cannot be reached is still retried (above)."""
    double, router = stack
    double.reset()
    for model in ("t1-a", "t1-b", "t2-a", "t3-a"):
        double.set_persistent(model, Fault.http_error(400 if model == "t3-a" else 503))  # one refuses, none answer
    try:
        with RouterClient(router.address, ClientOptions(retries=3, backoff_s=0.01)) as tw:
            with pytest.raises(grpc.RpcError) as err:
                tw.complete("hi there")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("grpc-retry-pushback-ms", "-1") in tuple(err.value.trailing_metadata())
        once = len(double.requests)
        assert once <= 2 * 4, "one pass: four providers, each asked at most twice (its own retry)"

        async def run() -> None:
            async with AsyncRouterClient(router.address, ClientOptions(retries=3, backoff_s=0.01)) as tw:
                with pytest.raises(grpc.aio.AioRpcError):
                    await tw.complete("hi there")

        asyncio.run(run())
        # (Fewer the second time: the first call's failures opened some breakers. Retried, it would be 4x.)
        assert 0 < len(double.requests) - once <= once, "each client sent the call once"
    finally:
        double.reset()


def test_when_every_provider_said_when_to_come_back_the_router_and_the_client_wait_that_long(stack):
    """Every provider asked answered 429 with a Retry-After: not a reason to give up, but to wait. The router
    passes on the soonest wait (grpc-retry-pushback-ms, Retry-After over HTTP); the client waits it out and asks
    once more, which the providers, recovered, answer."""
    double, router = stack
    double.reset()
    double.script("t3-a", Fault.rate_limited(11))  # past the providers' own retry cap: they fail over at once
    try:
        with RouterClient(router.address, ClientOptions(retries=0)) as tw:
            with pytest.raises(grpc.RpcError) as err:
                tw.complete("hi there", strategy="tier3")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("grpc-retry-pushback-ms", "11000") in tuple(err.value.trailing_metadata())
        double.script("t3-a", Fault.rate_limited(1))
        double.script("t3-a", Fault.rate_limited(1))  # its own retry, then the router's answer says 1 s
        started = time.monotonic()
        with RouterClient(router.address, ClientOptions(retries=1, timeout_s=30)) as tw:
            assert tw.complete("hi there", strategy="tier3").content
        assert time.monotonic() - started >= 2.0, "the provider's second wait, then the client's"
    finally:
        double.reset()


def test_an_async_stream_the_caller_leaves_ends_at_once_and_frees_its_place(tmp_path, double):
    """Leaving an async stream early cancels its call: a router admitting one call at a time admits the next one
    at once, instead of after the abandoned call's deadline. The next stream's summary is its own."""
    double.reset()
    double.set_reply("t1-a", " ".join(["word"] * 20000))
    doc = router_config(double.base_url, strategy="cheapest", limits={"max_in_flight": 1})
    with running_router(doc, UNUSED_CLASSIFIER, tmp_path, env={KEY_ENV: "k"}) as router:
        async def run() -> None:
            async with AsyncRouterClient(router.address, ClientOptions(timeout_s=30, retries=0)) as tw:
                streamed = tw.stream("Write at length.")
                async for _ in streamed:
                    break
                await streamed.aclose()
                assert tw.last_summary is None
                double.set_reply("t1-a", None)
                for _ in range(50):  # the router hears of the cancel a moment later
                    try:
                        assert (await tw.complete("hi there")).content
                        break
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the abandoned stream still held the router's only place")
                assert [p async for p in tw.stream("hi there")] and tw.last_summary.content.startswith("answer")

        asyncio.run(run())
    double.reset()


def test_messages_as_dicts_and_a_bad_per_call_timeout(stack):
    double, router = stack
    with RouterClient(router.address, ClientOptions(retries=0)) as tw:
        assert tw.complete([{"role": "user", "content": "hi there"}]).content
        for bad in (0, -1.0, float("inf"), float("nan")):  # gRPC would take the last two as a deadline passed
            with pytest.raises(ValueError, match="timeout_s must be positive"):
                tw.route("hi", timeout_s=bad)
    for options in ({"timeout_s": float("inf")}, {"timeout_s": float("nan")}, {"backoff_s": float("nan")}):
        with pytest.raises(ValueError, match="timeout_s and max_message_bytes must be positive"):
            ClientOptions(**options)
    for name, value in (("root_certificates", b"not a certificate"), ("root_certificates", "-----BEGIN CERT")):
        with pytest.raises(ValueError, match=f"{name}: must be PEM bytes"):
            ClientOptions(tls=True, **{name: value})


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


def test_traceparent_makes_the_routers_span_a_child_of_the_callers(stack, receiver):
    _, router = stack
    with RouterClient(router.address) as tw:
        tw.route("hi", traceparent=f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")

    def ours(resource, span):
        return span.trace_id.hex() == TRACE_ID and span.name == "tierwise.v1.RouterService/Route"

    assert receiver.wait_for_spans(ours), "the router's Route span did not join the caller's trace"
    [span] = [s for r, s in receiver.spans() if ours(r, s)]
    assert span.parent_span_id.hex() == PARENT_SPAN_ID


def test_client_certificate_for_a_router_requiring_mtls(tmp_path):
    server_ca, client_ca = authority("router CA"), authority("clients CA")
    cert, key = issue(server_ca, "router").write(tmp_path, "router")
    mine = issue(client_ca, "caller", client=True)
    stranger = issue(authority("another CA"), "caller", client=True)
    roots = write_ca(server_ca, tmp_path / "ca.crt").read_bytes()
    with running_router(router_config("http://127.0.0.1:9", strategy="heuristic"), UNUSED_CLASSIFIER, tmp_path,
                        "--tls-cert", str(cert), "--tls-key", str(key),
                        "--tls-client-ca", str(write_ca(client_ca, tmp_path / "clients.crt"))) as router:
        options = ClientOptions(timeout_s=10, retries=0, tls=True, root_certificates=roots,
                                certificate_chain=mine.cert_pem, private_key=mine.key_pem)
        with RouterClient(router.address, options) as tw:
            assert tw.route("hi").strategy == "heuristic"
        for chain, pem_key in ((None, None), (stranger.cert_pem, stranger.key_pem)):
            refused = ClientOptions(timeout_s=10, retries=0, tls=True, root_certificates=roots,
                                    certificate_chain=chain, private_key=pem_key)
            with RouterClient(router.address, refused) as tw, pytest.raises(grpc.RpcError) as err:
                tw.route("hi")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
