"""Decision 0037: `tierwise simulate` on traffic that does not change kind, from heads that never saw it.

The dev files are sorted by task, so replaying them in file order is a string of task shifts (decisions 0022,
0024). Traffic of one kind (a chat product's) is closer to a file in random order. Each dev file is replayed in
`--shuffles` orders (record i of shuffle s sorted by sha256("shuffle<s>:<id>")), with the shadow's draws seeded
by s, starting from heads trained without that file (decision 0019's `heads_without`: a pooled default and the
other lineups' heads). Reports the last window, as the issue's check on the hidden chat set reads it, and how many
windows fall below the target.

    OMP_NUM_THREADS=1 .venv/bin/python -m research.d0037_stationary_replays [--shuffles 6] [--rates 0.5] [--out DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tierwise.data import load, shared_files
from tierwise_tools.paths import ROOT

from .common import embed
from .d0019_few_label_transfer import heads_without

TARGET = 0.95


def shuffled(path: Path, shuffle: int, out: Path) -> Path:
    """The file's lines in the order of one shuffle, written once."""
    target = out / "shuffled" / f"{path.name.split('.')[0]}.s{shuffle}.jsonl"
    if not target.exists():
        lines = [line for line in path.read_text().split("\n") if line.strip()]
        lines.sort(key=lambda line: hashlib.sha256(f"shuffle{shuffle}:{json.loads(line)['id']}".encode()).hexdigest())
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines) + "\n")
    return target


def replay(data: Path, heads: Path, rate: float, seed: int) -> dict:
    result = subprocess.run([sys.executable, "-m", "tierwise_tools.cli", "simulate", "--data", str(data),
                             "--shadow-rate", str(rate), "--seed", str(seed), "--heads-dir", str(heads), "--json"],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout)


def row(name: str, rate: float, runs: list[dict]) -> str:
    last = [r["windows"][-1] for r in runs]
    windows = [w for r in runs for w in r["windows"]]
    q = [w["quality_vs_frontier"] for w in last]
    s = [w["cost_savings"] for w in last]
    total = [r["total"] for r in runs]
    both = sum(w["quality_vs_frontier"] >= TARGET and w["cost_savings"] >= 0.30 for w in last)
    return (f"| {name} | {rate} | {statistics.median(s):.1%} ({min(s):.1%}-{max(s):.1%}) | "
            f"{statistics.median(q):.3f} (min {min(q):.3f}) | {sum(x >= TARGET for x in q)}/{len(q)} | {both}/{len(q)} | "
            f"{sum(w['quality_vs_frontier'] < TARGET for w in windows)}/{len(windows)} | "
            f"{statistics.median(t['cost_savings'] for t in total):.1%} / "
            f"{statistics.median(t['quality_vs_frontier'] for t in total):.3f} | "
            f"{statistics.median(t['net_savings'] for t in total):.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shuffles", type=int, default=6)
    ap.add_argument("--rates", default="0.5")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "research" / "d0037")
    args = ap.parse_args()
    if not shared_files():
        raise SystemExit("no records: this probe needs ../shared/data/routing")
    files = {p.name.split(".")[0]: (records, embed(records)) for p in shared_files() for records in [load([p])]}
    paths = {p.name.split(".")[0]: p for p in shared_files()}
    lines = ["| file | rate | last window savings, median (range) | last window quality (min) | last >= 0.95 | "
             "last >= 0.95 and >= 30 % | windows < 0.95 | whole replay: savings / quality | net |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in files:
        heads = heads_without(files, name, args.out)
        for rate in (float(r) for r in args.rates.split(",")):
            jobs = [(shuffled(paths[name], s, args.out), s) for s in range(args.shuffles)]
            with ThreadPoolExecutor(2) as pool:  # two cores: one replay each
                runs = list(pool.map(lambda job: replay(job[0], heads, rate, job[1]), jobs))
            for s, run in enumerate(runs):
                (args.out / f"{name}-{rate}-s{s}.json").write_text(json.dumps(run) + "\n")
            lines.append(row(name, rate, runs))
            print(lines[-1], flush=True)
    (args.out / "TABLE.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
