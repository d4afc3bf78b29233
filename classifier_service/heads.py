"""Tier heads: per-tier success models over the sentence embedding, applied with numpy.

A head predicts, for each tier t, P(tier t answers acceptably) with an independent logistic model, and
routes to the tier with the best expected quality net of cost: argmax_t P_t - tradeoff * relative_cost_t
(ties go to the cheaper tier). `tradeoff` is the one operating knob; it is calibrated per quality target.
Queries no tier solves get low P_t everywhere, so the rule sends them to the cheapest tier by itself.
A query unlike anything the head was trained on (outside its support: not as close to any centroid of
its training queries as most of that centroid's own queries are) goes to tier 3: the head's
probabilities say nothing there.

A head file (JSON, format "tierwise.head/v2") holds the weights, the relative cost of each tier for the
model lineup it was trained on, the calibrated tradeoffs and a model card. Many heads share one encoder
pass. Why per-tier success heads instead of one oracle-tier label: docs/decisions/0007; why the support
check: docs/decisions/0008.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tierwise.atomic import write_atomic
from tierwise.tiers import CHEAPEST, FRONTIER, TIERS

FORMAT = "tierwise.head/v2"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """`name` if it can name a head (it is a directory name under the heads dir); ValueError saying why not."""
    if not _NAME.match(name):
        raise ValueError(f"head name {name!r} must match {_NAME.pattern}: 1-64 lowercase letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return name


class Uncalibrated(KeyError):
    """A head asked for a quality target above every one it is calibrated for."""

    def __str__(self) -> str:  # the message, not KeyError's quoted repr of it
        return str(self.args[0])


@dataclass(frozen=True)
class TierHead:
    name: str
    version: str
    coef: np.ndarray  # (3, dimension): one logistic model per tier
    intercept: np.ndarray  # (3,)
    relative_cost: tuple[float, float, float] = (0.02, 0.2, 1.0)  # mean cost of each tier / tier 3's
    tradeoff: float = 0.0  # the default target's; 0 = best expected quality regardless of cost
    target_quality: float = 0.0
    encoder: str = ""
    models: tuple[str, ...] = ()  # the tier lineup the head was trained on; () = any lineup
    trained_on: tuple[tuple[str, ...], ...] = ()  # every lineup its training records named (several if pooled)
    card: dict[str, str] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)  # quality target ("0.95") -> tradeoff
    support: "Support | None" = None  # where the training queries lie; None = no check

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.coef.ndim != 2 or self.coef.shape[0] != len(TIERS) or self.intercept.shape != (len(TIERS),):
            raise ValueError(f"head {self.name}: coef must be (3, d) and intercept (3,)")
        if len(self.relative_cost) != len(TIERS) or min(self.relative_cost) < 0:
            raise ValueError(f"head {self.name}: relative_cost must be 3 non-negative numbers")
        if self.models and len(self.models) != len(TIERS):
            raise ValueError(f"head {self.name}: models must name one model per tier, or none")
        if self.support is not None and self.support.centroids.shape[1] != self.coef.shape[1]:
            raise ValueError(f"head {self.name}: support centroids must be {self.coef.shape[1]}-d")
        # A fit that diverged writes NaN (json.dumps allows it): such a head sends every row to tier 1.
        numbers = [("coef", self.coef), ("intercept", self.intercept), ("relative_cost", self.relative_cost),
                   ("tradeoff", self.tradeoff), ("calibration", list(self.calibration.values()))]
        if self.support is not None:
            numbers += [("support", self.support.centroids), ("support", self.support.bars)]
        for what, values in numbers:
            if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
                raise ValueError(f"head {self.name}: {what} must hold finite numbers only")

    @property
    def dimension(self) -> int:
        return self.coef.shape[1]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, 3): P(tier 1 acceptable), P(tier 2 acceptable), P(tier 3 acceptable); independent, no sum rule."""
        return success(embeddings, self.coef, self.intercept)

    def check_support(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(support margin, outside) per row; without support every row is inside with margin 1."""
        if self.support is None:
            return np.ones(len(embeddings)), np.zeros(len(embeddings), dtype=bool)
        return self.support.check(embeddings)

    def outside(self, embeddings: np.ndarray) -> np.ndarray:
        """Rows whose query is unlike the training queries."""
        return self.check_support(embeddings)[1]

    def decide(self, probabilities: np.ndarray, tradeoff: float | None = None,
               outside: np.ndarray | None = None) -> np.ndarray:
        """The chosen tier per row at `tradeoff` (default: the head's own); rows `outside` the support get tier 3."""
        return decide(probabilities, self.relative_cost, self.tradeoff if tradeoff is None else tradeoff, outside)

    def route(self, embeddings: np.ndarray, target: float) -> np.ndarray:
        """The tier per row with the support check, at the tradeoff that keeps `target` as a request asking for it is
        served: the least calibrated target at or above it; KeyError when none is."""
        return self.decide(self.probabilities(embeddings), self.tradeoff_keeping(target)[0], self.outside(embeddings))

    def tradeoff_keeping(self, target: float) -> tuple[float, float]:
        """(tradeoff, calibrated target) for the least target the head is calibrated for that is at least `target`:
        its promise keeps `target` too. Uncalibrated (a KeyError) when every calibrated target is below it."""
        calibrated = {float(k): v for k, v in self.calibration.items()} or {self.target_quality: self.tradeoff}
        least = min((t for t in calibrated if t >= target - 1e-9), default=None)
        if least is None:
            raise Uncalibrated(f"head {self.name} has no tradeoff calibrated for quality {target:g} or above (it has: "
                           f"{', '.join(f'{t:g}' for t in sorted(calibrated))}); run `tierwise calibrate`")
        return calibrated[least], least

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "tiers": list(TIERS),
            "encoder": self.encoder,
            "models": list(self.models),
            "trained_on": [list(lineup) for lineup in self.trained_on],
            "relative_cost": [round(float(c), 6) for c in self.relative_cost],
            "tradeoff": round(float(self.tradeoff), 6),
            "target_quality": self.target_quality,
            "calibration": {k: round(float(v), 6) for k, v in sorted(self.calibration.items())},
            "card": self.card,
            "intercept": [round(float(v), 6) for v in self.intercept],
            "coef": [[round(float(v), 6) for v in row] for row in self.coef],
            **({} if self.support is None else {"support": self.support.to_json()}),
        }

    def save(self, path: Path) -> None:
        """Write the head file atomically: a classifier reloading `path` reads the old head or this one, whole."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(self.to_json(), separators=(",", ":")) + "\n")

    def versioned(self, when: str) -> "TierHead":
        """This head under a version derived from its content, so any change of weights or tradeoffs shows."""
        return replace(self, version=f"{self.name}-{when}-{self._digest()[:8]}")

    def same_answers(self, other: "TierHead") -> bool:
        """Whether `other` answers every query as this head does: the same name, lineup, encoder, weights, costs,
        tradeoffs and support, whatever the dates in their versions and cards (a retraining on the same labels)."""
        return ((self.name, self.models, self.encoder, self.target_quality, self._digest())
                == (other.name, other.models, other.encoder, other.target_quality, other._digest()))

    def _digest(self) -> str:
        content = self.coef.tobytes() + self.intercept.tobytes() + json.dumps(
            [self.tradeoff, list(self.relative_cost), sorted(self.calibration.items()),
             self.support and self.support.to_json()]).encode()
        return hashlib.sha256(content).hexdigest()

    def publish(self, directory: Path) -> None:
        """Write head.json and its MODEL_CARD.md into `directory`, each atomically, the head last (as promote
        installs): a failure part-way never leaves a new head beside the card of the one before it."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(directory) / "MODEL_CARD.md", self.model_card())
        self.save(Path(directory) / "head.json")

    def model_card(self) -> str:
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.card.items())
        lineup = " / ".join(self.models) if self.models else "any (pooled lineups)"
        return (f"# Tier head `{self.name}`\n\nVersion `{self.version}`. Lineup (tiers 1/2/3): {lineup}. "
                f"Routes to argmax_t P(tier t acceptable) - {self.tradeoff:g} x relative cost "
                f"{list(self.relative_cost)} (target quality vs frontier {self.target_quality}).{self._support_sentence()}\n\n"
                "Held-out numbers are measured on the records whose id hash puts them in the test fifth; "
                "those records were never used to fit, select or calibrate.\n\n| fact | value |\n|---|---|\n"
                + rows + "\n")

    def _support_sentence(self) -> str:
        if self.support is None:
            return ""
        return (f" Queries outside its support ({len(self.support.bars)} centroids of its training queries, each with "
                "its own similarity bar) go to tier 3.")

    @classmethod
    def load(cls, path: Path) -> "TierHead":
        """The head in `path`; a file that is not one (half-written, wrong format) is a ValueError naming it."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls._from_json(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a tier head ({type(err).__name__}: {err})") from None

    @classmethod
    def _from_json(cls, data: dict) -> "TierHead":
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}; retrain it with `tierwise train`")
        if list(data["tiers"]) != list(TIERS):
            raise ValueError(f"tiers must be {list(TIERS)}")
        return cls(
            name=data["name"],
            version=data["version"],
            coef=np.asarray(data["coef"], dtype=np.float32),
            intercept=np.asarray(data["intercept"], dtype=np.float32),
            relative_cost=tuple(float(c) for c in data["relative_cost"]),
            tradeoff=float(data["tradeoff"]),
            target_quality=float(data.get("target_quality", 0.0)),
            encoder=data.get("encoder", ""),
            models=tuple(str(m) for m in data.get("models", [])),
            trained_on=tuple(tuple(str(m) for m in lineup) for lineup in data.get("trained_on", [])),
            card={str(k): str(v) for k, v in data.get("card", {}).items()},
            calibration={str(k): float(v) for k, v in data.get("calibration", {}).items()},
            support=Support.from_json(data["support"]) if "support" in data else None,
        )


def success(embeddings: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Per-tier logistic models applied to embeddings: (n, 3) success probabilities."""
    return 1.0 / (1.0 + np.exp(-np.clip(embeddings @ coef.T + intercept, -40, 40)))


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Support:
    """Where a head's training queries lie: unit centroids (k-means) and, per centroid, the cosine
    similarity that most of its own queries reach (a low quantile). A query that reaches no centroid's
    bar is outside the support. Per-centroid bars, because a tight cluster of short math questions and a
    diffuse cluster of trivia need different bars."""
    centroids: np.ndarray  # (k, d), unit rows
    bars: np.ndarray  # (k,)

    def margin(self, embeddings: np.ndarray) -> np.ndarray:
        """(n,): max over centroids of (cosine similarity - that centroid's bar)."""
        return (unit(embeddings) @ self.centroids.T - self.bars).max(axis=1)

    def check(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(margin, outside) per row: a row is outside when it reaches no centroid's bar (margin < 0)."""
        margin = self.margin(embeddings)
        return margin, margin < 0

    def outside(self, embeddings: np.ndarray) -> np.ndarray:
        return self.check(embeddings)[1]

    def to_json(self) -> dict:
        # float16 is ample for cosines and keeps a head file small; base64 keeps it one JSON string.
        return {"bars": [round(float(b), 5) for b in self.bars], "dimension": int(self.centroids.shape[1]),
                "centroids_f16": base64.b64encode(self.centroids.astype("<f2").tobytes()).decode()}

    @classmethod
    def from_json(cls, data: dict) -> "Support":
        bars = np.asarray(data["bars"], dtype=np.float32)
        flat = np.frombuffer(base64.b64decode(data["centroids_f16"]), dtype="<f2").astype(np.float32)
        if flat.size != len(bars) * int(data["dimension"]):
            raise ValueError("support: centroids do not match bars x dimension")
        return cls(unit(flat.reshape(len(bars), int(data["dimension"]))), bars)


def decide(probabilities: np.ndarray, relative_cost, tradeoff: float, outside: np.ndarray | None = None) -> np.ndarray:
    """Tier (1..3) per row maximising P(acceptable) - tradeoff * relative cost; argmax keeps the cheaper on ties.
    Rows marked `outside` the head's support go to tier 3."""
    tiers = np.argmax(probabilities - tradeoff * np.asarray(relative_cost), axis=1).astype(np.int32) + CHEAPEST
    if outside is not None:
        tiers[np.asarray(outside, dtype=bool)] = FRONTIER
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
    def from_dir(cls, directory: Path, default: str | None = None, installing: bool = False) -> "HeadRegistry":
        """Load every <name>/head.json below `directory`; "default" is the default head when present. `installing`:
        for a tool about to install a head by its name, every head must be in the directory its name names."""
        paths = sorted(Path(directory).glob("*/head.json"))
        if not paths:
            raise FileNotFoundError(f"no */head.json under {directory}")
        heads = [TierHead.load(p) for p in paths]
        homes: dict[str, Path] = {}
        for path, head in zip(paths, heads):
            if head.name in homes:
                raise ValueError(f"{homes[head.name]} and {path} both hold head {head.name!r}: head names must be "
                                 "unique (a head's directory carries its name)")
            homes[head.name] = path
            if installing and path.parent.name != head.name:
                raise ValueError(f"{path} holds head {head.name!r}: a head's directory carries its name, and a "
                                 f"head installed by name would land beside it; rename the directory to {head.name}")
        if default is None and any(h.name == "default" for h in heads):
            default = "default"
        return cls(heads, default)

    @property
    def names(self) -> list[str]:
        return sorted(self._heads)

    def get(self, name: str) -> TierHead | None:
        return self._heads.get(name or self.default)

    def for_lineup(self, models: tuple[str, ...]) -> TierHead:
        """The head trained on exactly this tier lineup, else the default head."""
        return next((h for h in self if h.models and h.models == tuple(models)), self._heads[self.default])

    def __iter__(self):
        return iter(self._heads[n] for n in self.names)
