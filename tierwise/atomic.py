"""Writes that a kill, a crash or a full disk cannot tear: the one way the product writes a file it keeps.

A file that is rewritten (a head, a model card, a report, an embedding cache, a labels file being repaired)
goes to a temporary file in the same directory, is flushed and fsynced, and replaces the old one with
os.replace; the directory is fsynced so the rename itself survives a crash. A reader sees the old file or
the new one, whole, never a mix and never nothing.

A file that grows (labelled records, kept verdicts, the shadow log) is appended to, a whole line at a time:
each line goes out in one write() on an O_APPEND descriptor, with no buffer in this process left to lose.
Earlier lines are never touched; the worst a kill can leave is a last line cut short, which readers skip
or drop (`tierwise label` drops it and labels that query again).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("tierwise.atomic")


def write_atomic(path: Path | str, data: bytes | str, mode: int | None = None, durable: bool = True) -> None:
    """Replace `path` with `data` (str is written as UTF-8): afterwards `path` holds all of `data`, and until
    then it holds what it held before. The directory must exist. An existing file keeps its permissions, unless
    `mode` is given: then the file has that mode, from its first byte. `durable=False` skips the fsyncs: readers
    still never see a torn file, but a machine that crashes may lose the write (for a file that is only a cache)."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            elif path.exists():
                os.fchmod(fd, path.stat().st_mode & 0o7777)
            _write_all(fd, payload)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _named(err, path)
        raise
    if durable:
        fsync_dir(path.parent)


def appendable(path: Path | str) -> None:
    """Make `path` ready for append_line (its directory, and the file if missing), so that a path it could not
    append to fails now with OSError, not at the first paid-for line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666))


def append_line(path: Path | str, line: str) -> None:
    """Append `line` and a newline to `path` (created if missing) in one write: the line is in the file, whole,
    once this returns, and a process killed any time before leaves at most that line cut short. A line never
    joins one cut short earlier: after a torn last line it starts on a line of its own."""
    if "\n" in line:
        raise ValueError("append_line: a line must not contain a newline")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        _write_all(fd, ("\n" if torn else "").encode() + (line + "\n").encode("utf-8"))
    except OSError as err:
        _named(err, path)
        raise
    finally:
        os.close(fd)


def fsync_dir(directory: Path | str) -> None:
    """Make a rename or a new file in `directory` survive a crash; a filesystem that cannot is left as it is."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _named(err: BaseException, path: Path | str) -> None:
    """A write's error names no file (a full disk, a file too large): it names `path`, for whoever reports it."""
    if isinstance(err, OSError) and err.filename is None and err.strerror is not None:
        err.filename = str(path)


def _write_all(fd: int, payload: bytes) -> None:
    # A regular file takes the whole payload in one write(); the loop only covers a short write.
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def changing(directory: Path | str) -> Iterator[None]:
    """Hold `directory` for a change that reads it, then writes it (a promotion checks the head it replaces): a
    second such change, from another process on any host sharing a volume with locks, waits for this one to end."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # the directory itself: nothing is left in it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # NFS takes no lock on a directory (it needs a file open for writing): go on
            log.warning("cannot lock %s (%s); make sure no other promotion runs at the same time", directory, err)
        yield
    finally:
        os.close(fd)  # and the lock with it

