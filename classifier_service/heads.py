"""Tier heads: small logistic-regression models over the sentence embedding, applied with numpy.

A head file (JSON, format "tierwise.head/v1") holds the weights, the tier of each output column, the
calibrated decision thresholds and a model card. Many heads share one encoder pass.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

FORMAT = "tierwise.head/v1"
TIERS = (1, 2, 3)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TierHead:
    name: str
    version: str
    coef: np.ndarray  # (3, dimension)
    intercept: np.ndarray  # (3,)
    # Escalate to tier 2 when P(tier >= 2) >= thresholds[0]; to tier 3 when P(tier 3) >= thresholds[1].
    thresholds: tuple[float, float] = (0.5, 0.5)
    target_quality: float = 0.0
    encoder: str = ""
    card: dict[str, str] = field(default_factory=dict)
    # Thresholds calibrated per quality target ("0.95" -> (t2, t3)); `thresholds` is the default target's.
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"head name {self.name!r} must match {_NAME.pattern}")
        if self.coef.ndim != 2 or self.coef.shape[0] != len(TIERS) or self.intercept.shape != (len(TIERS),):
            raise ValueError(f"head {self.name}: coef must be (3, d) and intercept (3,)")

    @property
    def dimension(self) -> int:
        return self.coef.shape[1]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax over tiers: (n, 3), columns P(tier 1), P(tier 2), P(tier 3)."""
        logits = embeddings @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        return logits / logits.sum(axis=1, keepdims=True)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """Cheapest tier allowed by the thresholds, per row."""
        return decide(probabilities, self.thresholds)

    def thresholds_for(self, target: float) -> tuple[float, float]:
        """The thresholds calibrated for `target` quality vs frontier; KeyError if none were."""
        key = f"{target:g}"
        if key in self.calibration:
            return self.calibration[key]
        if self.calibration or target != self.target_quality:
            raise KeyError(f"head {self.name} has no thresholds calibrated for quality {key} "
                           f"(it has: {', '.join(sorted(self.calibration)) or self.target_quality}); "
                           "run `tierwise calibrate`")
        return self.thresholds

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "tiers": list(TIERS),
            "encoder": self.encoder,
            "thresholds": [round(float(t), 6) for t in self.thresholds],
            "target_quality": self.target_quality,
            "calibration": {k: [round(float(t), 6) for t in v] for k, v in sorted(self.calibration.items())},
            "card": self.card,
            "intercept": [round(float(v), 6) for v in self.intercept],
            "coef": [[round(float(v), 6) for v in row] for row in self.coef],
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")
        tmp.replace(path)

    def versioned(self, when: str) -> "TierHead":
        """This head under a version derived from its content, so any change of weights or thresholds shows."""
        content = self.coef.tobytes() + self.intercept.tobytes() + json.dumps(
            [list(self.thresholds), sorted(self.calibration.items())]).encode()
        return replace(self, version=f"{self.name}-{when}-{hashlib.sha256(content).hexdigest()[:8]}")

    def publish(self, directory: Path) -> None:
        """Write head.json and its MODEL_CARD.md into `directory`."""
        self.save(Path(directory) / "head.json")
        (Path(directory) / "MODEL_CARD.md").write_text(self.model_card())

    def model_card(self) -> str:
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.card.items())
        return (f"# Tier head `{self.name}`\n\nVersion `{self.version}`; thresholds "
                f"P(tier>=2) >= {self.thresholds[0]}, P(tier 3) >= {self.thresholds[1]} "
                f"(target quality vs frontier {self.target_quality}).\n\n"
                "Held-out numbers are measured on the records whose id hash puts them in the test fifth; "
                "those records were never used to fit or calibrate.\n\n| fact | value |\n|---|---|\n" + rows + "\n")

    @classmethod
    def load(cls, path: Path) -> "TierHead":
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
        if list(data["tiers"]) != list(TIERS):
            raise ValueError(f"{path}: tiers must be {list(TIERS)}")
        return cls(
            name=data["name"],
            version=data["version"],
            coef=np.asarray(data["coef"], dtype=np.float32),
            intercept=np.asarray(data["intercept"], dtype=np.float32),
            thresholds=tuple(float(t) for t in data["thresholds"]),
            target_quality=float(data.get("target_quality", 0.0)),
            encoder=data.get("encoder", ""),
            card={str(k): str(v) for k, v in data.get("card", {}).items()},
            calibration={str(k): (float(v[0]), float(v[1])) for k, v in data.get("calibration", {}).items()},
        )


def decide(probabilities: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    escalate_2, escalate_3 = thresholds
    tiers = np.ones(len(probabilities), dtype=np.int32)
    tiers[probabilities[:, 1] + probabilities[:, 2] >= escalate_2] = 2
    tiers[probabilities[:, 2] >= escalate_3] = 3
    return tiers


class HeadRegistry:
    """All loaded heads by name, plus which one answers when a request names none."""

    def __init__(self, heads: list[TierHead], default: str | None = None):
        if not heads:
            raise ValueError("at least one head is required")
        self._heads = {h.name: h for h in heads}
        if len(self._heads) != len(heads):
            raise ValueError("head names must be unique")
        self.default = default or heads[0].name
        if self.default not in self._heads:
            raise ValueError(f"default head {self.default!r} is not loaded (loaded: {self.names})")

    @classmethod
    def from_dir(cls, directory: Path, default: str | None = None) -> "HeadRegistry":
        """Load every <name>/head.json below `directory`."""
        paths = sorted(Path(directory).glob("*/head.json"))
        if not paths:
            raise FileNotFoundError(f"no */head.json under {directory}")
        return cls([TierHead.load(p) for p in paths], default)

    @property
    def names(self) -> list[str]:
        return sorted(self._heads)

    def get(self, name: str) -> TierHead | None:
        return self._heads.get(name or self.default)

    def __iter__(self):
        return iter(self._heads[n] for n in self.names)
