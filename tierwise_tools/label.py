"""`tierwise label`: the seed's cold-start recipe as a tool.

Every query goes through every tier (the configured providers, live), a judge model scores the tier 1
and tier 2 answers against the tier 3 answer (the reference, scored 1), and each finished query is
appended at once as a record in the shared routing format. Re-running skips the ids already written,
so an interrupted run resumes where it stopped and loses nothing but the queries in flight.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tqdm import tqdm

from router_service.chains import open_chains
from router_service.config import RouterConfig
from router_service.labelling import Labeler, Tab, record_id
from router_service.providers import ProviderError
from router_service.telemetry import RouterMetrics
from tierwise.atomic import append_line, appendable, write_atomic


def read_queries(path: Path, source: str) -> list[dict]:
    """JSON lines with "query" (and optionally "id", "task"), or plain text, one query per line. A query given
    twice is labelled (and paid for) once. ValueError naming the file and line for what is neither."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    queries: dict[str, dict] = {}
    lines: dict[str, int] = {}  # where each id was first given
    # Lines end at "\n" only: a query may hold U+2028, which str.splitlines would also split at.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line) if line.lstrip().startswith("{") else {"query": line.strip()}
        except (ValueError, RecursionError):
            raise ValueError(f"{path}:{n}: not a JSON object with a \"query\" (nor a plain line)") from None
        if not isinstance(item.get("query"), str) or not item["query"].strip():
            raise ValueError(f"{path}:{n}: no non-empty \"query\"")
        item.setdefault("id", record_id(source, item["query"]))
        if type(item["id"]) is int:
            item["id"] = str(item["id"])
        if not isinstance(item["id"], str) or not item["id"] or not isinstance(item.get("task", "-"), str) \
                or not item.get("task", "-"):
            raise ValueError(f"{path}:{n}: \"id\" and \"task\" must be non-empty strings")
        earlier = queries.setdefault(item["id"], item)
        first = lines.setdefault(item["id"], n)
        if earlier["query"] != item["query"]:
            raise ValueError(f"{path}:{n}: id {item['id']!r} already names another query, on line {first}")
    return list(queries.values())


def resume(out: Path) -> set[str]:
    """Ids already labelled in `out`. A last line cut short by an interruption (one without its newline: a record
    is appended with its newline in one write) is removed, and its query labelled again; any other line that
    is not a record is an error, never silently dropped. The file is only ever replaced whole (tierwise/atomic.py):
    a kill during the repair leaves the old file or the repaired one."""
    if not out.exists():
        return set()
    try:
        text = out.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{out}: not UTF-8 text; not a file of labelled records") from None
    # Records end at "\n" only: an answer may hold U+2028 or U+0085, which str.splitlines would also split at.
    lines = text.split("\n")
    torn = lines[-1] != ""  # text after the last newline: a record cut short, or whole but for its newline
    if not torn:
        lines.pop()
    ids = set()
    for n, line in enumerate(lines, start=1):
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            if n < len(lines) or not torn:
                raise ValueError(f"{out}:{n}: not a labelled record; fix or remove it before resuming") from None
            write_atomic(out, "".join(f"{kept}\n" for kept in lines[:-1]))
            return ids
    return ids  # a whole last record without its newline gets one from the next append (append_line)


class RateLimiter:
    """At most `rate` starts per second, spaced evenly."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next = time.monotonic()
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            delay = self.next - now
            self.next = max(now, self.next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


async def label(cfg: RouterConfig, queries: list[dict], out: Path, source: str, judge_tier: int, rate: float,
                concurrency: int, spent: Tab | None = None) -> dict:
    """Label `queries` into `out`: a summary. `spent` adds up every call this run pays for, the records written and
    those that failed or were cut short by an interruption, as each call returns."""
    done = resume(out)
    todo = [q for q in queries if q["id"] not in done]
    slots = asyncio.Semaphore(concurrency)
    failures: dict[str, str] = {}
    kept: dict[str, dict] = {}  # each query's answers paid for so far: a retry pays only for the rest
    spent = spent if spent is not None else Tab()
    appendable(out)  # OSError now, before the first paid call, if it cannot be written
    async with open_chains(cfg, RouterMetrics()) as chains:
        labeler = Labeler(cfg, chains, judge_tier, timeout_s=300.0, before_call=RateLimiter(rate).wait)
        with tqdm(total=len(todo), desc="labelling", unit="query") as bar:
            async def one(item: dict) -> None:
                async with slots:
                    tab = Tab()
                    try:
                        rec = await labeler.record(item["query"], record_id=item["id"], source=source,
                                                   task=item.get("task", source),
                                                   known=kept.setdefault(item["id"], {}), tab=tab)
                    except (ProviderError, ValueError) as err:
                        failures[item["id"]] = f"{item['id']}: {type(err).__name__}: {str(err)[:200]}"
                    else:
                        failures.pop(item["id"], None)
                        append_line(out, json.dumps(rec, ensure_ascii=False))
                    finally:
                        spent.add(tab.usd)
                    bar.update()

            await asyncio.gather(*(one(q) for q in todo))
            # Once more for a query that failed after some of its answers were paid for, which a re-run would pay
            # for again: the retry asks only for what is missing.
            again = [q for q in todo if q["id"] in failures and kept[q["id"]]]
            bar.total += len(again)
            await asyncio.gather(*(one(q) for q in again))
    return {"queries": len(queries), "already_done": len(queries) - len(todo),
            "labelled": len(todo) - len(failures), "failed": list(failures.values()), "cost_usd": spent.usd}
