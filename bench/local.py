"""In-process measurements with the service's own encoder: token lengths, and the encoder's compute floor.

The floor (tokenise + one ONNX run per text, no gRPC, no server) tells how much of a gRPC latency is the
model itself on this machine.
"""
from __future__ import annotations

import time

from classifier_service.config import Config
from classifier_service.encoder import Encoder

from .queries import QuerySets
from .stats import distribution, latency_summary

TOKEN_SETS = ("short", "mixed", "load_short", "load_mixed")
FLOOR_SETS = ("short", "mixed")


def token_lengths(encoder: Encoder, sets: QuerySets) -> dict[str, dict]:
    out = {}
    for name in TOKEN_SETS:
        tokens = encoder.tokenize(getattr(sets, name))
        out[name] = {**distribution([len(t) for t in tokens]), "truncated": sum(t.truncated for t in tokens)}
    return out


def encoder_floor(encoder: Encoder, sets: QuerySets) -> dict[str, dict]:
    def embed_one(text: str) -> None:
        encoder.embed_tokens(encoder.tokenize([text]))

    for text in sets.warmup:
        embed_one(text)
    out = {}
    for name in FLOOR_SETS:
        latencies = []
        for text in getattr(sets, name):
            t0 = time.perf_counter()
            embed_one(text)
            latencies.append(time.perf_counter() - t0)
        out[name] = latency_summary(latencies)
    return out


def measure(cfg: Config, sets: QuerySets) -> tuple[dict, dict]:
    """(token-length distributions, encoder floor latencies), with the server's precision and threads."""
    encoder = Encoder(cfg.encoder_dir, cfg.precision, cfg.ort_threads)
    return token_lengths(encoder, sets), encoder_floor(encoder, sets)
