"""Routing accuracy and latency of the int8 vs fp32 encoder on the held-out records (decision 0001).

Applies the shipped default head to held-out embeddings from each precision and reports decision
agreement, held-out routing metrics and single-query encoder latency. Usage, from the repository root:
    .venv/bin/python -m research.d0001_int8_precision [--limit N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from classifier_service.config import Config
from classifier_service.encoder import Encoder
from classifier_service.heads import HeadRegistry
from tierwise.data import load, shared_files, split
from tierwise.metrics import routing_metrics


def single_query_ms(encoder: Encoder, texts: list[str]) -> float:
    tokens = encoder.tokenize(texts)
    encoder.embed_tokens(tokens[:1])
    times = []
    for t in tokens:
        start = time.perf_counter()
        encoder.embed_tokens([t])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="held-out records to use (0 = all)")
    args = ap.parse_args()
    cfg = Config()
    head = HeadRegistry.from_dir(cfg.heads_dir).get("")
    _, test = split(load(shared_files()))
    test = test[: args.limit] if args.limit else test
    queries = [r.query for r in test]
    out = {"n_held_out": len(test), "head": head.version}
    tiers = {}
    for precision in ("int8", "fp32"):
        encoder = Encoder(cfg.encoder_dir, precision, threads=2)
        emb = encoder.embed(queries)
        tiers[precision] = head.decide(head.probabilities(emb))
        m = routing_metrics(test, tiers[precision])
        solo = Encoder(cfg.encoder_dir, precision, threads=1)
        m["p50_ms_short_1thread"] = single_query_ms(solo, [f"What is the capital of country {i}?" for i in range(100)])
        m["p50_ms_heldout_1thread"] = single_query_ms(solo, queries[:100])
        out[precision] = m
    out["decision_agreement"] = float((tiers["int8"] == tiers["fp32"]).mean())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
