"""The `tierwise` command: offline tools over the same code the services run."""
from __future__ import annotations

from tierwise.blas import one_thread

one_thread()  # before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from importlib import metadata  # noqa: E402

import grpc  # noqa: E402

from tierwise.data import DataError  # noqa: E402

from .commands import COMMANDS  # noqa: E402


def version() -> str:
    try:
        return metadata.version("tierwise")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse's, whose usage errors (exit 2) also print the one object --json promises on stdout."""
    json_wanted = False  # set by main for the command line it parses

    def error(self, message: str):
        if _Parser.json_wanted:
            print(json.dumps({"exit_code": 2, "error": f"{self.prog}: {message}"}))
        super().error(message)


def main(argv: list[str] | None = None) -> int:
    _Parser.json_wanted = "--json" in (sys.argv[1:] if argv is None else argv)
    ap = _Parser(
        prog="tierwise", description="Ask a running router for a decision or an answer (route, complete), and "
        "label, train, check and install the heads it routes with (the rest).",
        epilog="Guides: docs/api.md (route, complete); docs/training.md (label, train, calibrate, eval, promote, "
        "costs, simulate); docs/learning.md (learn). The router and the classifier: make run.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    args = ap.parse_args(argv)
    with _sigterm_exits():
        return _run(args)


@contextmanager
def _sigterm_exits():
    """SIGTERM (a CronJob's deadline, a timer stopped) ends the command as an exception does, exit status 143, so
    its `with` blocks and `finally`s run: temporary files holding queries are removed, a spend is reported."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except DataError as err:
        return _failed(args, str(err), 2)
    except OSError as err:  # a path that cannot be read or written: say which, not a traceback
        return _failed(args, str(err), 1)
    except grpc.RpcError as err:  # its status, not a traceback
        return _failed(args, f"{err.code().name}: {err.details()}", 1)


def _failed(args: argparse.Namespace, error: str, code: int) -> int:
    """`error` on stderr, a `tierwise COMMAND:` line for each of its lines; with --json also the one object
    promised on stdout, for a script or scheduler that reads it."""
    for line in error.splitlines() or [""]:
        print(f"tierwise {args.command}: {line}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"exit_code": code, "error": error}))
    return code


if __name__ == "__main__":
    sys.exit(main())
