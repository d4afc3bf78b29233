"""Where the offline tools find the repository's build output and committed heads."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENCODER_DIR = ROOT / "build" / "encoder"
EMBEDDINGS_DIR = ROOT / "build" / "embeddings"
HEADS_DIR = ROOT / "models" / "heads"
