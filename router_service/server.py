"""The router's gRPC front door (RouterService over the core), and the process that serves it: gRPC, and the
OpenAI-compatible HTTP API beside it when `http.listen` is set."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing

import grpc

from tierwise import serving
from tierwise.handlers import add_servicer
from tierwise.own_task import Sender, in_own_task
from tierwise.serving import rpc_span
from tierwise.telemetry import setup_metrics, setup_tracing, shut_down
from tierwise.tls import ClientTLS, ServerTLS
from tierwise.v1 import router_pb2 as pb
from tierwise.v1 import router_pb2_grpc as pb_grpc
from tierwise.watching import every_or_sighup

from . import idempotency
from .access_log import AccessLogInterceptor
from .auth import LATER, NEVER, NOW, front_door, watch
from .chains import build_chains, check_health, close_chains
from .classifier_client import ClassifierClient
from .config import RouterConfig
from .core import RouterCore
from .dispatch import Dispatcher
from .head_choice import LineupHead
from .http import Health, HttpServer, build_app
from .ledger import SpendLedger
from .shadow import Shadow
from .shared_answers import SharedAnswers
from .strategies import Strategies
from .telemetry import RouterMetrics

log = logging.getLogger("tierwise.router")
SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"].full_name
SETTLE_S = 1.0  # for calls cut at the end of the grace to unwind (each charges its key what it got)


class RouterServicer(pb_grpc.RouterServiceServicer):
    """RouterService over gRPC: each call a server span (parented by the caller's trace context) around the core."""

    def __init__(self, core: RouterCore):
        self.core = core

    async def Route(self, request: pb.RouteRequest, context) -> pb.RouteResponse:
        async with self.core.metrics.calls.call("Route", context), \
                rpc_span(self.core.tracer, SERVICE, "Route", context, log) as span:
            return await self.core.route(request, _deadline(context), span)

    async def Complete(self, request: pb.CompleteRequest, context) -> pb.CompleteResponse:
        async with self.core.metrics.calls.call("Complete", context), \
                rpc_span(self.core.tracer, SERVICE, "Complete", context, log) as span:
            key = idempotency.checked(next((value for name, value in context.invocation_metadata() or ()
                                            if name == idempotency.HEADER), None))
            summary, replayed = await self.core.complete("Complete", request, _deadline(context), span, key)
            if replayed:
                context.set_trailing_metadata(((idempotency.REPLAYED, "true"),))
            return summary

    async def CompleteStream(self, request: pb.CompleteRequest, context):
        async def produce(send: Sender) -> None:
            # Ending the call with an error drops the deltas not yet written: they go out first.
            async with self.core.metrics.calls.call("CompleteStream", context), \
                    rpc_span(self.core.tracer, SERVICE, "CompleteStream", context, log, send.flushed) as span, \
                    aclosing(self.core.answer("CompleteStream", request, _deadline(context), span,
                                              stream=True)) as events:
                async for event in events:
                    send(event)

        async with aclosing(in_own_task(produce)) as events:  # closed with the call, not when collected
            async for event in events:
                yield event


async def _nothing_to_reload() -> None:
    log.info("SIGHUP: nothing to reload (no API keys file)")


def _spend(method: str, request, metadata: dict[str, str], strategies: Strategies, default: str) -> str:
    """When a call's monthly spend is checked: never for a Route whose strategy asks no model (the judge); later, by
    the core before it pays, for a Complete with an idempotency key, which may be a retry answered for nothing."""
    if method == "Complete" and idempotency.HEADER in metadata:
        return LATER
    # A request that does not parse has no strategy.
    free = method == "Route" and not strategies.pays_to_decide(getattr(request, "strategy", "") or default)
    return NEVER if free else NOW


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def serve(cfg: RouterConfig, listen: str, classifier_address: str, metrics_listen: str = "",
                version: str = "0.1.0", *, tls: ServerTLS | None = None, classifier_tls: ClientTLS | None = None,
                health_listen: str = "") -> int:
    provider = setup_tracing("tierwise-router", version)
    try:
        meter_provider = setup_metrics("tierwise-router", version, metrics_listen)
        metrics = RouterMetrics()
        ledger = SpendLedger(cfg.spend.ledger, cfg.spend.sync_s)
        guard = front_door(cfg.auth, SERVICE, metrics, ledger)
        classifier = ClassifierClient(classifier_address, cfg.classifier.timeout_ms, classifier_tls)
        shared = SharedAnswers.at(cfg.idempotency.shared_dir, cfg.idempotency.ttl_s)
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError; KeysFileError and LedgerError ValueErrors
        print(f"tierwise-router: {err}", flush=True)
        return 2
    chains = build_chains(cfg, metrics)
    try:
        shadow = Shadow(cfg, chains, metrics, ledger=ledger)
    except ValueError as err:  # a shadow file it cannot write
        print(f"tierwise-router: {err}", flush=True)
        return 2
    lineup = None if cfg.classifier.head else LineupHead(
        classifier, cfg.lineup(), cfg.classifier.head_refresh_s)
    strategies = Strategies(deps={"config": cfg, "classifier": classifier, "chains": chains, "lineup_head": lineup})
    if guard is not None:
        guard.spend = lambda method, request, metadata: _spend(method, request, metadata, strategies, cfg.strategy)
    # The access log first, so it sees the front door's refusals too.
    interceptors = [AccessLogInterceptor(SERVICE)] if cfg.telemetry.access_log else []
    server = grpc.aio.server(options=serving.server_options(("grpc.max_receive_message_length",
                                                              cfg.limits.receive_bytes)),
                             interceptors=[*interceptors, *([guard] if guard else [])] or None)
    core = RouterCore(cfg, strategies, Dispatcher(cfg, chains), metrics, shadow, shared)
    add_servicer(pb_grpc.add_RouterServiceServicer_to_server, RouterServicer(core), server, metrics.calls)
    try:
        http = HttpServer.bind(cfg.http.listen) if cfg.http.listen else None
    except (OSError, ValueError) as err:
        print(f"tierwise-router: cannot serve HTTP on {cfg.http.listen}: {err}", flush=True)
        return 2

    tasks: list[asyncio.Task] = []
    http_health = Health()
    stop_by = time.monotonic()  # set at SIGTERM: when the calls under way (and the shadows they start) must be done

    def draining(deadline: float) -> None:
        nonlocal stop_by
        stop_by = deadline
        http_health.drain()

    async def load() -> str:
        strategies.get(cfg.strategy)
        if guard is not None:
            tasks.append(asyncio.create_task(watch(guard.keys, cfg.auth.reload_s)))
        else:  # SIGHUP's default would end the router at once, undrained, its spend unsaved
            tasks.append(asyncio.create_task(every_or_sighup(None, _nothing_to_reload)))
        if lineup is not None:
            await lineup.refresh()
            tasks.append(asyncio.create_task(lineup.run()))
        if ledger.path is not None:
            tasks.append(asyncio.create_task(ledger.run()))
        if shared is not None:
            tasks.append(asyncio.create_task(shared.run()))
        if cfg.classifier.keep_warm_ms:
            tasks.append(asyncio.create_task(classifier.keep_warm(cfg.classifier.keep_warm_ms / 1000)))
        if any(p.config.health_check_s for chain in chains.values() for p in chain.providers):
            tasks.append(asyncio.create_task(check_health(chains, metrics)))
        head = cfg.classifier.head or (f"{lineup.name} (this lineup's)" if lineup.name else "the classifier's default")
        if http is not None:
            await http.start(build_app(core, guard.gate if guard else None, http_health), tls,
                             headers_within_s=cfg.http.body_timeout_s)
        return (f"strategy={cfg.strategy} classifier={classifier_address} head={head}"
                + (f" http={http.address}" if http else ""))

    async def close() -> None:
        if http is not None:  # still serving while it drains: a retry may yet collect the work its caller left
            # Work its caller left is no call under way: only calls someone waits for hold the drain.
            await http.stop(stop_by, idle=lambda: not http_health.calls,
                            cut=lambda: (core.once.stop(), http_health.cut()))  # keyed calls' work is cut too
        await core.once.close(stop_by)  # no retry reaches this process now; one elsewhere may yet collect its work
        # Calls cut at the end of the grace pay for what they got as they unwind: before the ledger is flushed.
        await serving.waited(lambda: core.admission.count == 0, time.monotonic() + SETTLE_S)
        for task in tasks:
            task.cancel()
        if shared is not None:  # after the claims are given up and the heartbeat has stopped
            shared.close()
        await shadow.drain(timeout=max(0.0, stop_by - time.monotonic()))
        ledger.flush()  # after the shadows' last charges
        await classifier.close()
        await close_chains(chains)
        shut_down(provider, meter_provider)

    return await serving.run("tierwise-router", listen, [SERVICE], server, load, close, tls=tls,
                             health_listen=health_listen, draining=draining, grace=cfg.shutdown.grace_s)
