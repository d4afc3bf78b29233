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
import re
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from classifier_service.heads import HeadRegistry, TierHead, Uncalibrated
from router_service.replicas import every_replica
from tierwise.data import DataError, Record, load, split

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


# What is left of a JSON text at the point a parser stops in one cut short there: a number's or a literal's first
# characters, or a \u escape and up to its four digits.
_TORN_TAIL = re.compile(r"[-+.eE0-9]+|t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?|u[0-9a-fA-F]{0,4}")


def _cut_short(err: BaseException, size: int) -> bool:
    """Whether a line that failed to read is the start of a record (a writer killed, or still appending): its
    parser ran out of text, or it ends in the middle of a character. A line bad before its end is no record."""
    if isinstance(err, UnicodeDecodeError):
        return err.end == size and "unexpected end of data" in err.reason
    if not isinstance(err, json.JSONDecodeError):
        return False  # nested past the parser's depth: no record is
    rest = err.doc[err.pos:]
    return not rest or err.msg.startswith("Unterminated string") or bool(_TORN_TAIL.fullmatch(rest))


def read_labels(path: Path, copy: Path, warnings: list[str]) -> list[tuple[Record, dict]]:
    """The routing records of `path` with their JSON (answers dropped: training reads none), as the file is now.
    A record cut short (a line that opens a JSON object and does not close it) is what a writer killed or still
    appending leaves, at most one per write (tierwise/atomic.py): it is skipped, with a warning. The shared loader
    checks the rest in `copy`, a copy of what was read, and its errors name `path`'s lines."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read routing records ({err})") from None
    lines, raws = [], []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        opens_a_record = raw.lstrip().startswith(b"{")
        try:
            line = raw.decode("utf-8")
            if opens_a_record:
                raws.append(json.loads(line))  # a last line complete but for its newline is a record too
        except (ValueError, RecursionError) as err:  # a UnicodeDecodeError too
            if not (opens_a_record and _cut_short(err, len(raw))):
                raise DataError(f"{path}:{n}: not a routing record ({str(err)[:200]})") from None
            line = ""
            warnings.append(f"{path}:{n}: a record cut short (its writer killed, or still appending), skipped")
        lines.append(line)
    copy.write_text("\n".join(lines), encoding="utf-8")
    try:
        records = load([copy])
    except DataError as err:
        raise DataError(str(err).replace(str(copy), str(path), 1)) from None
    for raw in raws:  # the loader accepted every line: each non-blank one opened a record, parsed above
        for outcome in raw["outcomes"]:
            outcome.pop("response", None)
    return list(zip(records, raws))


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
        (work / "read").mkdir()
        lineups: dict[tuple[str, ...], list[tuple[Record, dict, str]]] = defaultdict(list)
        for i, path in enumerate(paths):
            for record, raw in read_labels(path, work / "read" / f"{i}.jsonl", report.warnings):
                lineups[record.models].append((record, raw, path.name))
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
