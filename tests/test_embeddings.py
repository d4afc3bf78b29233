"""The offline tools' embeddings of records (tierwise_tools.embeddings), with the real int8 encoder."""
import os

import numpy as np

from tierwise.data import Record
from tierwise_tools import embeddings


def test_records_embedded_on_several_workers_get_each_their_own_vector(tmp_path, monkeypatch):
    """The offline tools embed on every core at once; each text still runs alone, so the vectors are the ones a
    single thread gives, in the records' order."""
    encoder = embeddings.offline_encoder()
    texts = [f"Question {i}: " + "why does the sky look blue at noon and red at dusk? " * (i % 7) for i in range(45)]
    records = [Record(id=f"r{i}", source="s", task="t", query=q, models=("a", "b", "c"), scores=(1.0, 1.0, 1.0),
                      costs=(1.0, 2.0, 3.0), responses=("", "", "")) for i, q in enumerate(texts)]
    monkeypatch.setattr(embeddings, "workers", lambda: 3)
    x = embeddings.embed_records(encoder, records, tmp_path)
    assert np.array_equal(x, np.vstack([encoder.embed([q]) for q in texts]))
    assert np.array_equal(np.load(next(tmp_path.glob("*.npy"))), x), "the cache holds the same vectors"


def test_the_workers_are_no_more_than_the_cpus_this_process_may_use():
    assert 1 <= embeddings.workers() <= min(len(os.sched_getaffinity(0)), embeddings.MAX_WORKERS)
