"""`tierwise promote`: check a newly trained head on labelled records it never saw, then install it.

The candidate (a head `tierwise train --out` wrote outside the serving directory) routes the records of its
own tier lineup at its calibrated point for the quality target, and so does the head serving that lineup
today (the one of the same name, else the one a lookup by lineup picks, usually the default head). The
candidate is installed unless:
  - those records show that it misses the target: the 95% upper bootstrap bound of its quality vs frontier
    there is below it (a point estimate below the target on a few hundred records is mostly noise; the
    candidate's own calibration already holds the target with a bound, decision 0024), and the serving head
    keeps at least as much quality there (refusing would otherwise keep the worse head); or
  - the serving head meets the target there and saves at least as much.
Installing writes head.json atomically into `<heads dir>/<name>/`, keeping the replaced file (and its model card)
as `head.json.previous` (`tierwise rollback` swaps them back); a classifier serving that directory swaps the head
in within `--heads-reload-seconds`. Why: docs/decisions/0015 and 0024.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from classifier_service.heads import HeadRegistry, TierHead
from tierwise.atomic import changing, write_atomic
from tierwise.data import DataError, Record, check_measurable
from tierwise.metrics import quality_bounds, routing_metrics

from .embeddings import embed_records, offline_encoder


def measure(head, records: list[Record], x, target: float) -> dict:
    """`head` at its tradeoff for `target` on `records` (embeddings `x`)."""
    tiers = head.route(x, target)
    return {"head": head.name, "version": head.version, "models": list(head.models), **summary(records, tiers)}


def summary(records: list[Record], tiers) -> dict:
    """What `verdict` weighs of routing `records` to `tiers`: quality, its bounds, savings, tier mix."""
    m = routing_metrics(records, tiers)
    lower, upper = quality_bounds(records, tiers)
    return {"quality_vs_frontier": round(m["quality_vs_frontier"], 5),
            "quality_vs_frontier_lower_bound": round(lower, 5), "quality_vs_frontier_upper_bound": round(upper, 5),
            "cost_savings": round(m["cost_savings"], 5), "tier_mix": [round(t, 4) for t in m["tier_mix"]]}


def verdict(candidate: dict, serving: dict | None, target: float) -> tuple[bool, str]:
    """(install?, why). Both heads were measured on the same records, so comparing them is paired."""
    quality, upper = candidate["quality_vs_frontier"], candidate["quality_vs_frontier_upper_bound"]
    if upper < target - 1e-12:
        below = (f"the candidate keeps {quality:.4f} of the frontier's quality on these records (95% upper bound "
                 f"{upper:.4f}), below the {target:g} target")
        # Refusing keeps the serving head; that is no safer when it does worse on the very same records.
        if serving is not None and (quality, candidate["cost_savings"]) > \
                (serving["quality_vs_frontier"], serving["cost_savings"]):
            return True, (f"{below}, but the serving head {serving['version']} keeps less "
                          f"({serving['quality_vs_frontier']:.4f}): the candidate is the better of the two")
        return False, below
    if serving is not None and serving["quality_vs_frontier"] >= target - 1e-12 \
            and serving["cost_savings"] >= candidate["cost_savings"]:
        return False, (f"the serving head {serving['version']} already meets {target:g} here and saves as much "
                       f"({serving['cost_savings']:.1%} against {candidate['cost_savings']:.1%})")
    meets = (f"the candidate meets {target:g} ({quality:.4f})" if quality >= target - 1e-12 else
             f"the candidate's {quality:.4f} is within these records' noise of {target:g} (95% upper bound {upper:.4f})")
    return True, (f"{meets} saving {candidate['cost_savings']:.1%}" + ("" if serving is None else
                  f"; the serving head: {serving['quality_vs_frontier']:.4f}, {serving['cost_savings']:.1%}"))


def lineup_records(candidate, records: list[Record], whose: str = "the candidate's") -> list[Record]:
    """The records produced by the candidate's tier lineup (all of them for a head trained on pooled lineups)."""
    if not candidate.models:
        return records
    mine = [r for r in records if r.models == candidate.models]
    if not mine:
        raise DataError(f"--data: no records from {whose} lineup {' / '.join(candidate.models)} "
                        f"(found: {sorted({' / '.join(r.models) for r in records})})")
    return mine


def serving_heads(heads_dir: Path, candidate) -> tuple[TierHead | None, TierHead | None]:
    """(what serves the candidate's lineup today: the head of the same name, else the head a lookup by lineup
    picks, the default head for a lineup without its own; what that lookup picks); (None, None) for an empty
    directory. The directory is read once."""
    if not any(heads_dir.glob("*/head.json")):
        return None, None
    registry = HeadRegistry.from_dir(heads_dir, installing=True)
    found = registry.for_lineup(candidate.models)
    return registry.get(candidate.name) or found, found


def install(candidate_dir: Path, target_dir: Path) -> None:
    """Copy the candidate's head.json (and model card) into `target_dir`, keeping the old head as head.json.previous.
    Each file is replaced atomically, the head last: a reloading classifier never reads half a head, and a kill
    at any point leaves the serving head, or the new one with the old one kept beside it. Callers install no head
    that `same_answers` as the one there: keeping it as its own previous would lose the one a rollback restores."""
    target_dir.mkdir(parents=True, exist_ok=True)
    settle(target_dir)
    head, card = target_dir / "head.json", target_dir / "MODEL_CARD.md"
    new = (candidate_dir / "head.json").read_bytes()
    if head.exists():
        write_atomic(previous(head), head.read_bytes())
        _put(previous(card), _read(card))  # the previous head's card, or none if it had none
    _put(card, _read(candidate_dir / "MODEL_CARD.md"))
    write_atomic(head, new)


def roll_back(head_dir: Path) -> tuple[TierHead, TierHead]:
    """Swap `head_dir`'s head.json with the head.json.previous a promotion kept (and their model cards), so the
    classifier serves the previous head again and a second rollback undoes the first: (now serving, set aside).
    The previous head is loaded first (a damaged one is a DataError, and nothing changes). The heads being swapped
    are first written aside as `.swap` files: a kill part-way leaves the serving head whole, old or previous, and
    the next rollback or promotion finishes or undoes the swap (`settle`), so neither head is lost."""
    with changing(head_dir.parent):
        return _roll_back(head_dir)


def _roll_back(head_dir: Path) -> tuple[TierHead, TierHead]:
    settle(head_dir)
    head, card = head_dir / "head.json", head_dir / "MODEL_CARD.md"
    if not previous(head).exists():
        raise DataError(f"{head_dir}: nothing to roll back to (no head.json.previous: no promotion replaced a head "
                        "there)")
    try:
        restored, current = TierHead.load(previous(head)), TierHead.load(head)
    except ValueError as err:
        raise DataError(str(err)) from None
    write_atomic(swap(card), _read(card) or NO_CARD)
    write_atomic(swap(head), head.read_bytes())  # last of the two: once it is there, both are
    _put(card, _read(previous(card)))
    write_atomic(head, previous(head).read_bytes())
    settle(head_dir)
    return restored, current


def settle(head_dir: Path) -> None:
    """End a rollback that left `.swap` files (the heads it was swapping, written aside first): finish it when the
    head was already replaced (it then equals the previous one), else undo it (only the swap files were written)."""
    head, card = head_dir / "head.json", head_dir / "MODEL_CARD.md"
    if not swap(head).exists():
        swap(card).unlink(missing_ok=True)
        return
    # The card set aside goes where its head goes: the previous one's place, or back to being served. Its swap file
    # is gone when an earlier settle moved it; the head's swap file goes last.
    kept = previous(card) if _read(head) == _read(previous(head)) else card
    if (aside := _read(swap(card))) is not None:
        if aside == NO_CARD:
            kept.unlink(missing_ok=True)
            swap(card).unlink()
        else:
            swap(card).replace(kept)
    if kept == card:
        swap(head).unlink()
    else:
        swap(head).replace(previous(head))


NO_CARD = b"\0no model card\0"  # a swap file's content for a head that had no card (a card is text, never this)


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def swap(path: Path) -> Path:
    return path.with_name(path.name + ".swap")


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _put(path: Path, data: bytes | None) -> None:
    """`path` holding `data` (written atomically), or gone for None."""
    if data is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, data)


def promote(candidate_dir: Path, records: list[Record], heads_dir: Path, target: float, encoder_dir: Path,
            cache_dir: Path, dry_run: bool = False) -> dict:
    try:
        candidate = TierHead.load(candidate_dir / "head.json")
    except ValueError as err:
        raise DataError(f"--candidate: {err}") from None
    records = lineup_records(candidate, records)
    check_measurable(records, "records of the candidate's lineup")
    if not heads_dir.is_dir():
        raise DataError(f"--heads-dir: {heads_dir} is not a directory; name the one the classifier serves")
    # Another promotion (a second learn, a promote by hand) waits: each checks against the head it replaces.
    with nullcontext() if dry_run else changing(heads_dir):
        return _promote(candidate_dir, candidate, records, heads_dir, target, encoder_dir, cache_dir, dry_run)


def _promote(candidate_dir: Path, candidate: TierHead, records: list[Record], heads_dir: Path, target: float,
             encoder_dir: Path, cache_dir: Path, dry_run: bool) -> dict:
    try:  # found: what a router naming no head finds for this lineup (the first such head by name)
        current, found = serving_heads(heads_dir, candidate)
    except ValueError as err:
        raise DataError(f"--heads-dir: {err}") from None
    if found is not None and candidate.models and found.models == candidate.models and found.name != candidate.name:
        raise DataError(f"--candidate: head {found.name} already serves the lineup {' / '.join(candidate.models)} "
                        f"in {heads_dir}, and a lineup is served by one head: train the candidate with --name "
                        f"{found.name} to replace it, or remove {found.name} first")
    encoder = offline_encoder(encoder_dir)
    for head in (candidate, current):
        if head is not None and head.dimension != encoder.dimension:
            raise DataError(f"head {head.name} expects {head.dimension}-d embeddings, the encoder gives {encoder.dimension}")
    x = embed_records(encoder, records, cache_dir)
    mine = measure(candidate, records, x, target)
    theirs = None if current is None else measure(current, records, x, target)
    # Unchanged labels train the same head again, dates aside: weighing it against itself would refuse or reinstall it.
    if unchanged := current is not None and current.same_answers(candidate):
        ok, why = True, (f"the candidate answers as the head serving already does (version {current.version}): "
                         "nothing to install")
    else:
        ok, why = verdict(mine, theirs, target)
    installed = ok and not dry_run and not unchanged
    if installed:
        install(candidate_dir, heads_dir / candidate.name)
    return {"promoted": installed, "passed": ok, "unchanged": unchanged, "why": why, "n": len(records), "target_quality": target,
            "candidate": mine, "serving": theirs, "installed_to": str(heads_dir / candidate.name) if installed else None}
