"""The gRPC classifier server: validation, admission control, cache, heads, health and reflection."""
from __future__ import annotations

import asyncio
import logging
import math

import grpc
import numpy as np
from opentelemetry import trace

from tierwise import serving
from tierwise.handlers import add_servicer
from tierwise.metrics import quality_target
from tierwise.serving import InFlight, Rejected, check_text, rpc_span, shown
from tierwise.telemetry import setup_metrics, setup_tracing, shut_down
from tierwise.watching import every_or_sighup
from tierwise.v1 import classifier_pb2 as pb
from tierwise.v1 import classifier_pb2_grpc as pb_grpc

from .batching import Embedded, MicroBatcher
from .cache import DecisionCache
from .config import Config
from .encoder import Encoder
from .heads import HeadRegistry, TierHead
from .metrics import ClassifierMetrics
from .reloading import HeadReloader, signature

log = logging.getLogger("tierwise.classifier")
SERVICE = pb.DESCRIPTOR.services_by_name["ClassifierService"].full_name
WARMUP_TEXTS = ["hi", "What is the capital of France?",
                "Write a function that parses ISO-8601 durations and explain its edge cases. " * 6]


class ClassifierServicer(pb_grpc.ClassifierServiceServicer):
    def __init__(self, cfg: Config, heads: HeadRegistry):
        self.cfg = cfg
        self.heads = heads
        self.encoder: Encoder | None = None
        self.batcher: MicroBatcher | None = None
        self.cache: DecisionCache[tuple] = DecisionCache(cfg.cache_size)
        self.admission = InFlight(cfg.max_inflight, "texts", log)
        # A budget of their own, so a big batch never leaves a router's single calls refused.
        self.bulk_admission = InFlight(cfg.max_batch_inflight, "texts of ClassifyBatch calls", log)
        self.tracer = trace.get_tracer("tierwise.classifier")
        self.metrics = ClassifierMetrics(queued=lambda: self.batcher.queued if self.batcher else 0,
                                         in_flight=lambda: self.admission.count + self.bulk_admission.count,
                                         cache=lambda: (self.cache.hits, self.cache.misses))

    def load(self) -> None:
        """Load the encoder and run it a few times so the first real call is not the slow one."""
        encoder = Encoder(self.cfg.encoder_dir, self.cfg.precision, self.cfg.ort_threads)
        for head in self.heads:
            if head.dimension != encoder.dimension:
                raise ValueError(f"head {head.name} expects {head.dimension}-d embeddings, encoder gives {encoder.dimension}")
        tokens = encoder.tokenize(WARMUP_TEXTS)
        for _ in range(self.cfg.warmup_rounds):
            for t in tokens:
                encoder.embed_tokens([t])
        self.batcher = MicroBatcher(encoder, self.cfg.workers, self.cfg.micro_batch,
                                    on_batch=self.metrics.batch_size.record,
                                    inline_max_tokens=self.cfg.inline_max_tokens,
                                    run_tokens=self.cfg.run_cap, keep_warm_s=self.cfg.keep_warm_ms / 1000)
        self.encoder = encoder  # last: a call that finds the encoder set finds the batcher too

    # -- RPCs -----------------------------------------------------------------------------------

    async def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        async with (self.metrics.call("Classify", context),
                    rpc_span(self.tracer, SERVICE, "Classify", context, log) as span):
            head = self._head(request.head)
            check_text(request.text, "text", self.cfg.max_text_bytes)
            result = (await self._classify([request.text], head, span, *requested_tradeoff(request, head)))[0]
            span.set_attribute("tierwise.tier", result.tier)
            span.set_attribute("tierwise.top_probability", result.confidence)
            span.set_attribute("tierwise.outside_support", result.outside_support)
            span.set_attribute("tierwise.cache_hit", result.cache_hit)
            return result

    async def ClassifyBatch(self, request: pb.ClassifyBatchRequest, context) -> pb.ClassifyBatchResponse:
        async with (self.metrics.call("ClassifyBatch", context),
                    rpc_span(self.tracer, SERVICE, "ClassifyBatch", context, log) as span):
            head = self._head(request.head)
            texts = list(request.texts)
            if not texts:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "texts: must hold at least one text")
            if len(texts) > self.cfg.max_batch:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"texts: {len(texts)} texts exceed the batch limit of {self.cfg.max_batch}")
            for i, text in enumerate(texts):
                check_text(text, f"texts[{i}]", self.cfg.max_text_bytes)
            results = await self._classify(texts, head, span, *requested_tradeoff(request, head), bulk=True)
            span.set_attribute("tierwise.tiers", [r.tier for r in results])
            span.set_attribute("tierwise.top_probabilities", [r.confidence for r in results])
            span.set_attribute("tierwise.cache_hits", sum(r.cache_hit for r in results))
            return pb.ClassifyBatchResponse(results=results)

    async def ListHeads(self, request: pb.ListHeadsRequest, context) -> pb.ListHeadsResponse:
        async with (self.metrics.call("ListHeads", context),
                    rpc_span(self.tracer, SERVICE, "ListHeads", context, log)):
            encoder = self._ready_encoder()
            return pb.ListHeadsResponse(
                heads=[pb.HeadInfo(name=h.name, version=h.version, is_default=h.name == self.heads.default,
                                   tiers=[1, 2, 3], target_quality=h.target_quality, card=h.card,
                                   tradeoff=h.tradeoff, relative_cost=h.relative_cost, models=h.models,
                                   calibration=h.calibration,
                                   support_centroids=0 if h.support is None else len(h.support.bars))
                       for h in self.heads],
                encoder=pb.EncoderInfo(name=encoder.name, version=encoder.version,
                                       dimension=encoder.dimension, max_tokens=encoder.max_tokens),
                default_head=self.heads.default,
                max_batch=self.cfg.max_batch,
                max_text_bytes=self.cfg.max_text_bytes,
            )

    # -- the work -------------------------------------------------------------------------------

    async def _classify(self, texts: list[str], head: TierHead, span, tradeoff: float | None = None,
                        kept_target: float = 0.0, bulk: bool = False) -> list[pb.ClassifyResponse]:
        """Tiers decided at `tradeoff` (the one calibrated for `kept_target`, when that is set), or the head's own.
        The cache holds what the encoder and head computed, not a decision, so any tradeoff is answered from it.
        `bulk` texts are admitted on their own budget and wait behind single calls' texts."""
        encoder = self._ready_encoder()
        version = f"{head.name}|{head.version}|{encoder.version}"  # a version string is only its author's to keep unique
        keys = [self.cache.key(version, t) for t in texts]
        cached = [self.cache.get(k) for k in keys]
        misses = [i for i, c in enumerate(cached) if c is None]
        span.set_attribute("tierwise.head", head.name)
        span.set_attribute("tierwise.head_version", head.version)
        span.set_attribute("tierwise.encoder_version", encoder.version)
        span.set_attribute("tierwise.batch_size", len(texts))
        if misses:
            with (self.bulk_admission if bulk else self.admission).admit(len(misses)):
                embedded = await self.batcher.embed([texts[i] for i in misses], bulk)
            for i, entry in zip(misses, cache_entries(head, embedded)):
                cached[i] = entry
                self.cache.put(keys[i], entry)
        if tradeoff is not None:
            span.set_attribute("tierwise.tradeoff", tradeoff)
        miss_set = set(misses)
        tiers, out = replies(head, encoder.version, cached, [i not in miss_set for i in range(len(texts))], tradeoff,
                             kept_target)
        self.metrics.decided(head.name, tiers)
        return out

    def _ready_encoder(self) -> Encoder:
        if self.encoder is None:
            raise Rejected(grpc.StatusCode.UNAVAILABLE, "model is loading; health reports SERVING when ready")
        return self.encoder

    def _head(self, name: str) -> TierHead:
        head = self.heads.get(name)
        if head is None:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"head: unknown head {shown(name)}; loaded heads: {', '.join(self.heads.names)}")
        return head



def cache_entries(head: TierHead, embedded: list[Embedded]) -> list[tuple]:
    """What the decision cache keeps per text: (probabilities, tokens, truncated, support margin, outside)."""
    vectors = np.stack([e.vector for e in embedded])
    probs = head.probabilities(vectors)
    margin, outside = head.check_support(vectors)
    return [(tuple(float(p) for p in probs[row]), e.tokens, e.truncated, float(margin[row]), bool(outside[row]))
            for row, e in enumerate(embedded)]


def replies(head: TierHead, encoder_version: str, cached: list[tuple], hits: list[bool],
            tradeoff: float | None, kept_target: float = 0.0) -> tuple[np.ndarray, list[pb.ClassifyResponse]]:
    """(tiers, replies) for cache entries at `tradeoff` (calibrated for `kept_target`, when set), or the head's
    own."""
    tiers = head.decide(np.array([c[0] for c in cached]), tradeoff, np.array([c[4] for c in cached]))
    return tiers, [
        pb.ClassifyResponse(tier=int(tier), probabilities=probs, head=head.name, head_version=head.version,
                            encoder_version=encoder_version, confidence=probs[tier - 1],
                            tradeoff=head.tradeoff if tradeoff is None else tradeoff,
                            relative_cost=head.relative_cost, cache_hit=hit, input_tokens=tokens,
                            truncated=truncated, support_margin=margin, outside_support=outside,
                            quality_target=kept_target)
        for tier, hit, (probs, tokens, truncated, margin, outside) in zip(tiers, hits, cached)]


def requested_tradeoff(request, head: TierHead) -> tuple[float | None, float]:
    """(tradeoff, calibrated target): the tradeoff the request asks for, itself or as the head's for the least
    calibrated target that keeps the request's quality target (that target, else 0); None for the head's own.
    INVALID_ARGUMENT unless the tradeoff is finite and >= 0, or the head is calibrated for the target or above."""
    if request.HasField("quality_target"):
        if request.HasField("tradeoff"):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "quality_target: set it or tradeoff, not both")
        try:
            return head.tradeoff_keeping(quality_target(request.quality_target))
        except (ValueError, KeyError) as err:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"quality_target: {err.args[0]}") from None
    if not request.HasField("tradeoff"):
        return None, 0.0
    if not (math.isfinite(request.tradeoff) and request.tradeoff >= 0):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"tradeoff: must be finite and >= 0, not {request.tradeoff}")
    return request.tradeoff, 0.0


async def serve(cfg: Config, version: str = "0.1.0") -> int:
    provider = setup_tracing("tierwise-classifier", version)
    try:
        meter_provider = setup_metrics("tierwise-classifier", version, cfg.metrics_listen)
    except ValueError as err:
        print(f"tierwise-classifier: {err}", flush=True)
        return 2
    loaded = signature(cfg.heads_dir)
    try:
        registry = HeadRegistry.from_dir(cfg.heads_dir, cfg.default_head)
    except (OSError, ValueError) as err:  # no heads, a head that does not load, an unknown --default-head
        print(f"tierwise-classifier: cannot serve the heads in {cfg.heads_dir}: {err}", flush=True)
        return 2
    servicer = ClassifierServicer(cfg, registry)
    server = grpc.aio.server(options=serving.server_options(
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        # Clients re-resolve DNS only when a connection ends: ageing connections out lets routers
        # find classifier replicas added by the autoscaler.
        ("grpc.max_connection_age_ms", 60_000),
        ("grpc.max_connection_age_grace_ms", 10_000),
    ))
    add_servicer(pb_grpc.add_ClassifierServiceServicer_to_server, servicer, server, servicer.metrics.calls)

    tasks: list[asyncio.Task] = []

    async def load() -> str:
        await asyncio.get_running_loop().run_in_executor(None, servicer.load)
        reloader = HeadReloader(cfg.heads_dir, cfg.default_head, servicer.encoder.dimension, loaded)
        tasks.append(asyncio.create_task(reload_heads(servicer, reloader, cfg.heads_reload_seconds or None)))
        return (f"encoder={servicer.encoder.version} heads={','.join(servicer.heads.names)} "
                f"default={servicer.heads.default} workers={cfg.workers} ort_threads={cfg.ort_threads}")

    async def close() -> None:
        for task in tasks:
            task.cancel()
        servicer.batcher.close()
        shut_down(provider, meter_provider)

    return await serving.run("tierwise-classifier", cfg.listen, [SERVICE], server, load, close, tls=cfg.tls,
                             health_listen=cfg.health_listen)


async def reload_heads(servicer: ClassifierServicer, reloader: HeadReloader, every: float | None) -> None:
    """Swap in the heads directory's new contents when it changes: checked every `every` s (None: never) and
    at once on SIGHUP.
    A call already running keeps the head it started with; the decision cache is keyed by head version."""
    loop = asyncio.get_running_loop()

    async def check() -> None:
        registry = await loop.run_in_executor(None, reloader.poll)
        if registry is not None:
            before = {h.name: h.version for h in servicer.heads}
            servicer.heads = registry
            after = {h.name: h.version for h in registry}
            log.info("heads reloaded: %s", ", ".join(f"{n}={v}" for n, v in after.items()),
                     extra={"fields": {"changed": sorted(n for n in after if before.get(n) != after[n]),
                                       "removed": sorted(set(before) - set(after))}})
    await every_or_sighup(every, check)
