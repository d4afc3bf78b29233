"""`tierwise learn`: from the shadow's live labels to the head the classifier serves, in one run (a CronJob's).

For each tier lineup in the label files it trains a head as `tierwise train` does, on the development part and
with the shipped heads as priors; checks it as `tierwise promote` does, on the held-out fifth the training never
saw, against the head serving that lineup today (the paired rule); and installs it atomically into the directory
the classifier serves, which swaps it in while serving. A router naming no head then finds it by its lineup.

- **Label files.** Paths or globs; `{host}` stands for every replica's name, so the value of `shadow.labels`
  names all the replicas' files. Each file is read once. A record cut short, by a shadow still appending or
  killed mid-write, is skipped with a warning naming file and line. Any other line that is not a routing record
  is bad input, named by file and line, and nothing is trained.
- **The head's name.** `--name`; else the name of the head serving exactly this lineup in the heads directory,
  which it replaces (`head.json.previous` keeps the old one); else `learned-` and a hash of the lineup.
- **Several lineups** (the tiers' models changed while labelling): one head per lineup, each checked on its own.
- **Nothing half-written.** The head is trained into a scratch directory; `promote` copies it into place with
  an atomic rename, only when it passes.

Exit status: 0 every lineup with enough labels was promoted; 3 a candidate was refused (the serving head kept);
2 bad input; 4 nothing to do yet (no label files, or too few labels to train on).
"""
from __future__ import annotations

import glob
import hashlib
import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from classifier_service.heads import HeadRegistry, TierHead, Uncalibrated
from router_service.replicas import every_replica
from tierwise.data import DataError, Record, json_lines, split, to_record

from .fitting import MIN_DEV_RECORDS
from .paths import EMBEDDINGS_DIR, ENCODER_DIR
from .promote import promote
from .train import train

PROMOTED, BAD_INPUT, REFUSED, NOTHING_TO_DO = 0, 2, 3, 4


@dataclass
class Outcome:
    """What became of one lineup's labels."""
    lineup: tuple[str, ...]
    head: str
    labels: int
    held_out: int
    status: str  # promoted | passed (dry run) | already serving | refused | too few | bad input
    why: str
    check: dict | None = None  # promote's result


@dataclass
class Report:
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        statuses = {o.status for o in self.outcomes}
        if "bad input" in statuses:
            return BAD_INPUT
        if "refused" in statuses:
            return REFUSED
        return PROMOTED if statuses & {"promoted", "passed (dry run)"} else NOTHING_TO_DO

    def to_json(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}


def label_files(patterns: Sequence[str]) -> list[Path]:
    """The files `patterns` name. A glob (or `{host}`) matching nothing yet is no error; a missing plain path is."""
    paths: list[Path] = []
    for pattern in patterns:
        pattern = every_replica(pattern)
        if any(c in pattern for c in "*?["):
            paths += sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
        elif Path(pattern).is_file():
            paths.append(Path(pattern))
        else:
            raise DataError(f"--labels {pattern}: no such file")
    return list(dict.fromkeys(paths))


def read_labels(path: Path, warnings: list[str]) -> list[tuple[Record, dict]]:
    """The routing records of `path` with their JSON (answers dropped: training reads none), as the file is now.
    A record cut short is skipped with a warning (tierwise.data.json_lines)."""
    out = []
    for n, raw in json_lines(path, warnings):
        labelled = to_record(raw, f"{path}:{n}")
        for outcome in raw["outcomes"]:
            outcome.pop("response", None)
        out.append((labelled, raw))
    return out


def head_name(lineup: tuple[str, ...], heads_dir: Path) -> str:
    """The head serving exactly this lineup in `heads_dir` (the one a router naming no head uses), else a name
    derived from the lineup: stable, and valid for a head."""
    if any(heads_dir.glob("*/head.json")):
        try:
            serving = HeadRegistry.from_dir(heads_dir, installing=True).for_lineup(lineup)
        except ValueError as err:
            raise DataError(f"--heads-dir: {err}") from None
        if serving.models == lineup:
            return serving.name
    return "learned-" + hashlib.sha256("\n".join(lineup).encode()).hexdigest()[:12]


def learn(patterns: Sequence[str], heads_dir: Path, target: float, priors: Sequence[TierHead] = (),
          name: str | None = None, dry_run: bool = False) -> Report:
    report = Report()
    if not heads_dir.is_dir():  # found now, not after the training it would waste
        raise DataError(f"--heads-dir: {heads_dir} is not a directory; name the one the classifier serves")
    paths = label_files(patterns)
    report.files = [str(p) for p in paths]
    if not paths:
        report.warnings.append(f"no label files match {' '.join(patterns)} yet")
        return report
    with tempfile.TemporaryDirectory(prefix="tierwise-learn-") as scratch:
        work = Path(scratch)
        lineups: dict[tuple[str, ...], list[tuple[Record, dict, str]]] = defaultdict(list)
        for path in paths:
            for labelled, raw in read_labels(path, report.warnings):
                lineups[labelled.models].append((labelled, raw, path.name))
        if unknown := sum(len(lineups.pop(lineup)) for lineup in [k for k in lineups if not all(k)]):
            report.warnings.append(f"{unknown} records name no model for some tier: skipped")
        if name and len(lineups) > 1:
            raise DataError(f"--name {name}: the labels hold {len(lineups)} tier lineups and a name is for one head; "
                            "leave --name out to train one head per lineup")
        for lineup, labelled in sorted(lineups.items()):
            head = name or head_name(lineup, heads_dir)
            try:
                report.outcomes.append(_learn_lineup(lineup, labelled, work, heads_dir, target, priors, head,
                                                     dry_run))
            except (DataError, Uncalibrated) as err:  # the serving head has no tradeoff that keeps the target
                held = len(split([record for record, *_ in labelled])[1])
                report.outcomes.append(Outcome(lineup, head, len(labelled), held, "bad input", str(err)))
    return report


def _learn_lineup(lineup: tuple[str, ...], labelled: list[tuple[Record, dict, str]], work: Path, heads_dir: Path,
                  target: float, priors: Sequence[TierHead], name: str, dry_run: bool) -> Outcome:
    records = [record for record, *_ in labelled]
    dev, held_out = split(records)
    if len(dev) < MIN_DEV_RECORDS or not held_out:
        return Outcome(lineup, name, len(records), len(held_out), "too few",
                       f"{len(dev)} labels to train on and {len(held_out)} to check on; training needs "
                       f"{MIN_DEV_RECORDS} and the check at least one (one label in five is kept for the check)")
    data = work / "data" / name
    data.mkdir(parents=True)
    # One file per label file, of its name: the model card names them, and `calibrate` given those label files
    # leaves out the records the head was fitted on (files of one name in two directories count as one).
    by_file: dict[str, list[dict]] = defaultdict(list)
    for _, raw, file_name in labelled:
        by_file[file_name].append(raw)
    files = []
    for file_name, raws in sorted(by_file.items()):
        files.append(data / file_name)
        files[-1].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in raws), encoding="utf-8")
    candidate = work / "candidates" / name
    train(files, candidate, name, target, priors=priors)
    check = promote(candidate, held_out, heads_dir, target, ENCODER_DIR, EMBEDDINGS_DIR, dry_run)
    status = ("refused" if not check["passed"] else "promoted" if check["promoted"] else
              "already serving" if check["unchanged"] else "passed (dry run)")
    return Outcome(lineup, name, len(records), len(held_out), status, check["why"], check)
