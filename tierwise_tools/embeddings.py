"""Sentence embeddings of records' queries for the offline tools, cached on disk."""
from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
from tqdm import tqdm

from classifier_service.encoder import Encoder
from tierwise.atomic import write_atomic
from tierwise.data import Record

from .paths import ENCODER_DIR

CHUNK = 16  # texts a worker embeds between looks at the queue
MAX_WORKERS = 8


def offline_encoder(encoder_dir: Path = ENCODER_DIR) -> Encoder:
    """The int8 encoder the offline tools embed with: one onnxruntime thread a run, because `embed_records` runs
    texts on every core at once, and a second thread within one short text's run is no faster."""
    return Encoder(encoder_dir, "int8", threads=1)


def workers() -> int:
    """Encoder runs at once: the CPUs this process may use, at most MAX_WORKERS. joblib counts them from the CPU
    affinity and a container's CPU quota, so a Job limited to 2 CPUs on a large node runs 2, not one per node core."""
    return max(1, min(joblib.cpu_count(), MAX_WORKERS))


def embed_records(encoder: Encoder, records: list[Record], cache_dir: Path) -> np.ndarray:
    """Embeddings of the records' queries, cached on disk per (queries, encoder version). The cache file is
    written atomically; one that does not hold exactly these embeddings' shape (torn, foreign) is recomputed."""
    digest = hashlib.sha256(encoder.version.encode() + b"|one run per text")
    for r in records:
        digest.update(r.query.encode() + b"\0")
    path = cache_dir / f"{digest.hexdigest()[:20]}.npy"
    if path.exists():
        try:
            cached = np.load(path)
        except (OSError, ValueError, EOFError):
            cached = None
        if cached is not None and cached.shape == (len(records), encoder.dimension) and cached.dtype == np.float32:
            return cached
    out = np.empty((len(records), encoder.dimension), dtype=np.float32)
    texts = [r.query for r in records]
    with tqdm(total=len(texts), desc="embedding", unit="query") as progress:

        def chunk(start: int) -> None:  # each text runs alone (Encoder.embed), so the order of runs changes nothing
            out[start : start + CHUNK] = encoder.embed(texts[start : start + CHUNK])
            progress.update(len(texts[start : start + CHUNK]))

        with ThreadPoolExecutor(workers(), thread_name_prefix="embed") as pool:
            list(pool.map(chunk, range(0, len(texts), CHUNK)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, out)
    write_atomic(path, buffer.getvalue())
    return out
