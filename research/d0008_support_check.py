"""How a head does on what it never saw, with and without the support check (docs/decisions/0008).

For each task of a file, a head is trained and calibrated (as `tierwise train` does) on the dev part of the
file's other tasks and routes every record of the left-out task, with and without the support check. Then,
for each file, a head pooled over the other files' lineups routes its held-out part (an unseen lineup), with
5-fold and with leave-one-lineup-out calibration. Run `make train` first (it caches the embeddings).
Usage, from the repository root: .venv/bin/python -m research.d0008_support_check
"""
from __future__ import annotations

import numpy as np

from research.common import cli, op
from tierwise_tools.fitting import route_unseen


def with_and_without(records, plain, checked, digits: int = 0) -> str:
    """'without check Q/S, with Q/S' for both routings of `records`."""
    return f"without check {op(records, plain, digits)}, with {op(records, checked, digits)}"


def generalisation(records, x, source, dev) -> None:
    task = np.array([r.task for r in records])
    for name in sorted(set(source)):
        rows = np.where(source == name)[0]
        every, plain, checked = [], [], []
        for left_out in sorted(set(task[rows])):
            train = rows[dev[rows] & (task[rows] != left_out)]
            test = rows[task[rows] == left_out]
            a, b, outside = route_unseen([records[i] for i in train], x[train], x[test])
            every += list(test)
            plain += list(a)
            checked += list(b)
            print(f"  {name}/{left_out} (n={len(test)}): outside support {outside.mean():.0%}; quality vs frontier / "
                  f"savings {with_and_without([records[i] for i in test], a, b)}", flush=True)
        print(f"{name}, every task unseen (n={len(every)}): "
              f"{with_and_without([records[i] for i in every], plain, checked, 1)}", flush=True)
    for name in sorted(set(source)):
        train, test = np.where(dev & (source != name))[0], np.where(~dev & (source == name))[0]
        part = [records[i] for i in test]
        for by_lineup in (False, True):
            a, b, outside = route_unseen([records[i] for i in train], x[train], x[test], by_lineup=by_lineup)
            how = "leave-one-lineup-out" if by_lineup else "5-fold"
            print(f"{name} held out, lineup unseen, {how} calibration: outside support {outside.mean():.0%}; "
                  f"{with_and_without(part, a, b, 1)}", flush=True)


def main() -> None:
    cli(__doc__, lambda d: generalisation(d.records, d.x, d.source, d.dev))


if __name__ == "__main__":
    main()
