"""Sentence encoder: the exported all-MiniLM-L6-v2 ONNX graph run by onnxruntime (no torch)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

PRECISIONS = {"int8": "model.int8.onnx", "fp32": "model.fp32.onnx"}


@dataclass(frozen=True)
class Tokens:
    """One text, tokenised: ids (truncated to max_tokens) and whether truncation cut it."""
    ids: np.ndarray
    truncated: bool

    def __len__(self) -> int:
        return len(self.ids)


class Encoder:
    """Tokenises and embeds texts into L2-normalised 384-d sentence embeddings.

    `session.run` releases the GIL, so several threads may call `embed_tokens` at once; each run
    uses `threads` intra-op threads (1 is best on small machines, see docs/decisions).
    """

    def __init__(self, model_dir: str | Path, precision: str = "int8", threads: int = 1, max_tokens: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        model_dir = Path(model_dir)
        manifest_path = model_dir / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} missing: run `make setup` to export the encoder")
        self.manifest = json.loads(manifest_path.read_text())
        self.name = self.manifest["name"]
        self.dimension = int(self.manifest["dimension"])
        # Fewer tokens than the export's limit: a text is cut shorter (faster runs; research/d0021_token_length).
        limit = int(self.manifest["max_tokens"])
        if max_tokens is not None and not 1 < max_tokens <= limit:
            raise ValueError(f"max_tokens must be 2 to {limit}, not {max_tokens}")
        self.max_tokens = limit if max_tokens is None else max_tokens
        self.precision = precision
        filename = PRECISIONS[precision]
        self.version = f"{self.name}/onnx-{precision}@{self.manifest['files'][filename][:12]}"
        if self.max_tokens != limit:
            self.version += f"/max{self.max_tokens}"

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self._tokenizer.no_padding()

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads spin by default and steal the cores gRPC and the other workers need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(model_dir / filename), opts, providers=["CPUExecutionProvider"])

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        encodings: list[Encoding] = self._tokenizer.encode_batch(texts)
        return [Tokens(np.asarray(e.ids, dtype=np.int64), bool(e.overflowing)) for e in encodings]

    def embed_tokens(self, batch: list[Tokens]) -> np.ndarray:
        """Embed pre-tokenised texts in one run, padded to the longest: (n, dimension) float32.

        int8 activations are scaled per run, so a text's embedding moves slightly with its batch mates;
        the server batches only what queues up under load (decision 0009)."""
        width = max(len(t) for t in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tokens in enumerate(batch):
            ids[row, : len(tokens)] = tokens.ids
            mask[row, : len(tokens)] = 1
        vectors = self._session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts one run each, as an idle server does (offline use: training, eval), so the
        embeddings heads learn from do not depend on which texts happened to share a batch."""
        tokens = self.tokenize(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for row, t in enumerate(tokens):
            out[row] = self.embed_tokens([t])[0]
        return out
