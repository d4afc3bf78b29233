"""Sentence embeddings of records' queries for the offline tools, cached on disk."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from tqdm import tqdm

from classifier_service.encoder import Encoder
from tierwise.atomic import write_atomic
from tierwise.data import Record


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
    step = 64
    for start in tqdm(range(0, len(records), step), desc="embedding", unit="chunk"):
        out[start : start + step] = encoder.embed([r.query for r in records[start : start + step]])
    cache_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, out)
    write_atomic(path, buffer.getvalue())
    return out
