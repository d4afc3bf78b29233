"""The tiers' provider chains, built from the config, for the router and the offline tools alike."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from .config import RouterConfig
from .providers import Provider, TierChain
from .providers.balance import balance
from .telemetry import RouterMetrics

log = logging.getLogger("tierwise.router")


def build_chains(cfg: RouterConfig, metrics: RouterMetrics) -> dict[int, TierChain]:
    chains = {tier: TierChain([Provider(p, on_breaker_change=_log_breaker(metrics)) for p in t.providers],
                              hedge_after_s=t.hedge_after_ms / 1000, balance=balance(t.balance))
              for tier, t in cfg.tiers.items()}
    metrics.track_breakers({(tier, p.name): p.breaker for tier, chain in chains.items() for p in chain.providers})
    return chains


async def close_chains(chains: dict[int, TierChain]) -> None:
    for chain in chains.values():
        await chain.aclose()


@asynccontextmanager
async def open_chains(cfg: RouterConfig, metrics: RouterMetrics):
    """The tiers' provider chains for one run of an offline tool, closed when it ends."""
    chains = build_chains(cfg, metrics)
    try:
        yield chains
    finally:
        await close_chains(chains)


def _log_breaker(metrics: RouterMetrics):
    def changed(name, old, new) -> None:
        log.warning("circuit breaker %s: %s -> %s", name, old, new,
                    extra={"fields": {"provider": name, "from": str(old), "to": str(new)}})
        metrics.breaker_changed(name, old, new)
    return changed


async def check_health(chains: dict[int, TierChain], metrics: RouterMetrics) -> None:
    """Every provider with `health_check_s` checked that often, until cancelled."""
    providers = [p for chain in chains.values() for p in chain.providers if p.config.health_check_s]
    await asyncio.gather(*(_checking(p, metrics) for p in providers))


async def _checking(provider: Provider, metrics: RouterMetrics) -> None:
    while True:
        try:
            passed = await provider.check_health()
        except Exception:  # noqa: BLE001 - a check must never stop the checking; the next one runs as planned
            log.exception("health check of provider %s failed unexpectedly", provider.name)
            passed = None
        if passed is not None:
            metrics.health_checks.add(1, {"provider": provider.name, "result": "pass" if passed else "fail"})
        await asyncio.sleep(provider.config.health_check_s)
