"""Benchmark records in the shared routing format (see ../shared/data/README.md) and the held-out split."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .tiers import N_TIERS, TIERS, tier_list

ACCEPTABLE = 0.5
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing"
TEST_SHARE = 5  # one record in five (by id hash) is held out: never trained, calibrated or selected on
# No query costs a million dollars; past that a cost is a unit mistake, and sums of such costs overflow to inf.
MAX_COST_USD = 1e6
COST_RANGE = f"a number in [0, {MAX_COST_USD:g}] (USD)"


@dataclass(frozen=True)
class Record:
    id: str
    source: str
    task: str
    query: str
    scores: tuple[float, float, float]  # per tier 1..3
    costs: tuple[float, float, float]
    responses: tuple[str | None, str | None, str | None]
    models: tuple[str, str, str] = ("", "", "")  # the tier lineup that produced the outcomes
    # Live records labelled by the router's shadow: the tier it answered at, and what it paid for that answer.
    routed_tier: int | None = None
    paid_usd: float | None = None

    @property
    def oracle_tier(self) -> int:
        """Lowest acceptable tier; unsolvable queries count as tier 1 (every tier scores the same)."""
        for tier, score in enumerate(self.scores, start=1):
            if score >= ACCEPTABLE:
                return tier
        return 1

    @property
    def held_out(self) -> bool:
        return is_held_out(self.id)


def fifth(record_id: str) -> int:
    """Which of the TEST_SHARE parts the record's id hash puts it in; part 0 is held out."""
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) % TEST_SHARE


def is_held_out(record_id: str) -> bool:
    return fifth(record_id) == 0


class DataError(ValueError):
    """Records that are malformed, or cannot support the measurement asked of them."""


def load(paths: list[str | Path], warnings: list[str] | None = None) -> list[Record]:
    """The records of `paths`; DataError naming the file and line of the first that is not one. A record cut short
    is skipped (`json_lines`), its warning added to `warnings` (None: logged)."""
    return [to_record(raw, f"{path}:{n}") for path in paths for n, raw in json_lines(Path(path), warnings)]


# What is left of a JSON text at the point a parser stops in one cut short there: a number's or a literal's first
# characters, or a \u escape and up to its four digits.
_TORN_TAIL = re.compile(r"[-+.eE0-9]+|t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?|u[0-9a-fA-F]{0,4}")


def json_lines(path: Path, warnings: list[str] | None = None) -> list[tuple[int, object]]:
    """(line number, parsed JSON) of each non-blank line of `path`. A line that opens a JSON object and is cut
    short, which is what a writer killed or still appending leaves (at most one per write: tierwise/atomic.py), is
    skipped with a warning; any other line that is not JSON is a DataError naming it."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read routing records ({err})") from None
    out = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")  # a file saved with CRLF endings
        try:
            line = raw.decode("utf-8")
            if line.strip():
                out.append((n, json.loads(line)))
        except (ValueError, RecursionError) as err:  # a UnicodeDecodeError too
            if not (raw.lstrip().startswith(b"{") and _cut_short(err, len(raw))):
                raise DataError(f"{path}:{n}: not a routing record ({type(err).__name__}: not valid JSON)") from None
            said = f"{path}:{n}: a record cut short (its writer killed, or still appending), skipped"
            if warnings is None:
                logging.getLogger("tierwise.data").warning(said)
            else:
                warnings.append(said)
    return out


def _cut_short(err: BaseException, size: int) -> bool:
    """Whether a line that failed to read is the start of a record: its parser ran out of text, or it ends in the
    middle of a character. A line bad before its end is no record."""
    if isinstance(err, UnicodeDecodeError):
        return err.end == size and "unexpected end of data" in err.reason
    if not isinstance(err, json.JSONDecodeError):
        return False  # nested past the parser's depth: no record is
    rest = err.doc[err.pos:]
    return not rest or err.msg.startswith("Unterminated string") or bool(_TORN_TAIL.fullmatch(rest))


def to_record(raw: object, where: str) -> Record:
    """The record a line's JSON holds; DataError naming `where` when it holds none."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: not a routing record (a JSON object is needed)")
    listed = raw.get("outcomes")
    if listed is None or "query" not in raw:
        raise DataError(f"{where}: not a routing record (it needs a query and outcomes)")
    tiers_given = [o.get("tier") if isinstance(o, dict) else None for o in listed] if isinstance(listed, list) else []
    if sorted(tiers_given, key=repr) != sorted(TIERS, key=repr) or any(type(t) is not int for t in tiers_given):
        raise DataError(f"{where}: outcomes: must be a list of one object per tier, with tiers "
                        f"{', '.join(map(str, TIERS[:-1]))} and {TIERS[-1]} once each")
    tiers = sorted(listed, key=lambda o: o["tier"])
    for field, wanted in (("score", "a number in [0, 1]"), ("cost_usd", COST_RANGE)):
        if not all(_number(o.get(field)) for o in tiers):
            raise DataError(f"{where}: outcomes[].{field}: must be {wanted}, got {[o.get(field) for o in tiers]}")
    for field in ("source", "task"):
        if not isinstance(raw.get(field) or "", str):
            raise DataError(f"{where}: {field}: must be a string")
    if not all(isinstance(o.get("model") or "", str) for o in tiers):
        raise DataError(f"{where}: outcomes[].model: must be a string")
    if not all(isinstance(o.get("response"), (str, type(None))) for o in tiers):
        raise DataError(f"{where}: outcomes[].response: must be a string or null")
    if not (isinstance(raw.get("id"), str) and raw["id"] or _number(raw.get("id")) and isinstance(raw["id"], int)):
        raise DataError(f"{where}: id: must be a non-empty string (or a whole number)")
    paid = raw.get("paid_usd")
    if paid is not None and not _number(paid):
        raise DataError(f"{where}: paid_usd: must be {COST_RANGE}, got {paid!r}")
    scores = tuple(float(o["score"]) for o in tiers)
    costs = tuple(float(o["cost_usd"]) for o in tiers)
    record = Record(
        id=str(raw["id"]), source=raw.get("source") or "", task=raw.get("task") or "", query=raw["query"],
        scores=scores, costs=costs, responses=tuple(o.get("response") for o in tiers),
        models=tuple(o.get("model") or "" for o in tiers),
        routed_tier=raw.get("routed_tier"), paid_usd=None if paid is None else float(paid),
    )
    if not isinstance(record.query, str) or not record.query.strip():
        raise DataError(f"{where}: query: must be a non-empty string")
    if not all(0.0 <= s <= 1.0 for s in scores):
        raise DataError(f"{where}: outcomes[].score: must lie in [0, 1], got {list(scores)}")
    if not all(0.0 <= c <= MAX_COST_USD for c in costs):
        raise DataError(f"{where}: outcomes[].cost_usd: must be {COST_RANGE}, got {list(costs)}")
    if record.routed_tier is not None and (type(record.routed_tier) is not int or record.routed_tier not in TIERS):
        raise DataError(f"{where}: routed_tier: must be {tier_list()}, got {record.routed_tier!r}")
    if record.paid_usd is not None and not 0.0 <= record.paid_usd <= MAX_COST_USD:
        raise DataError(f"{where}: paid_usd: must be {COST_RANGE}, got {record.paid_usd}")
    if "lineup" in raw:
        # The router's tiers, written by the label tool and the shadow: the lineup even where a fallback answered.
        lineup = raw["lineup"]
        if not (isinstance(lineup, list) and len(lineup) == N_TIERS and all(isinstance(m, str) and m for m in lineup)):
            raise DataError(f"{where}: lineup: must name the three tiers' models, got {lineup!r}")
        record = replace(record, models=tuple(lineup))
    return record


def _number(value) -> bool:
    """A JSON number (not a boolean) a float holds."""
    return type(value) in (int, float) and bool(np.isfinite(float(value)) if abs(value) < 1e308 else False)


def check_measurable(records: list[Record], what: str) -> None:
    """Every quality number is relative to tier 3 (quality vs frontier, savings vs always tier 3): refuse
    records on which those ratios are undefined, naming why."""
    if not records:
        raise DataError(f"{what}: no records")
    ok, cost = arrays(records)
    if not ok[:, 2].any():
        raise DataError(f"{what}: tier 3 answered none of the {len(records)} records acceptably (score >= "
                        f"{ACCEPTABLE}), so quality vs frontier is undefined; check the records' scores")
    if cost[:, 2].sum() <= 0:
        raise DataError(f"{what}: tier 3 cost nothing on all {len(records)} records, so cost savings are undefined")


def repeats(records: list[Record]) -> np.ndarray | None:
    """Each record's id as a group number when some id appears more than once (the same file given twice, or a
    query the shadow labelled again: its ids hash the query), else None. One id's records are one observation:
    they are resampled, and cross-validated, together."""
    seen: dict[str, int] = {}
    groups = np.array([seen.setdefault(r.id, len(seen)) for r in records], dtype=np.int64)
    return groups if len(seen) < len(records) else None


def split(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(development part, held-out part)."""
    return [r for r in records if not r.held_out], [r for r in records if r.held_out]


def arrays(records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Per-record acceptable-answer matrix (n, 3) and cost matrix (n, 3)."""
    ok = np.array([[s >= ACCEPTABLE for s in r.scores] for r in records], dtype=bool).reshape(-1, N_TIERS)
    cost = np.array([r.costs for r in records], dtype=np.float64).reshape(-1, N_TIERS)
    return ok, cost


def shared_files() -> list[Path]:
    return sorted(SHARED_DATA.glob("*.dev.jsonl")) if SHARED_DATA.is_dir() else []
