"""`make run`: start the classifier, then the router pointed at it (gRPC, and the OpenAI-compatible HTTP API beside
it), all on 127.0.0.1; Ctrl-C stops both."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Child(subprocess.Popen):
    """A service process whose output a thread prints as it comes."""
    pump: threading.Thread


def start(args: list[str], name: str, ready: threading.Event, lines: list[str]) -> Child:
    proc = Child([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # Ctrl-C reaches us once; we stop the children in order

    def pump() -> None:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if " ready on " in line:
                lines.append(line)
                ready.set()
        ready.set()

    proc.pump = threading.Thread(target=pump, daemon=True, name=name)
    proc.pump.start()
    return proc


def stop(proc: Child) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.pump.join(5)  # its last lines ("... stopped") are printed before we exit, not lost with the thread


class StopOnSignal:
    """Records SIGINT/SIGTERM, and SIGHUP: a closed terminal must stop the services too, which run in their own
    sessions and would otherwise keep their ports. The handler only sets a bool: a handler that takes a lock (Event.set) deadlocks
    when Python runs it on the main thread while that thread holds the same lock, e.g. inside Event.wait,
    which is where it runs when the signal lands on another thread."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if sig is signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # started under nohup: asked to outlive the terminal
            signal.signal(sig, self._request)

    def _request(self, *_) -> None:
        self.requested = True

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds` in short steps; True once a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))
        return self.requested


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tierwise.run", description=__doc__)
    ap.add_argument("--classifier-listen", default="127.0.0.1:50051")
    ap.add_argument("--router-listen", default="127.0.0.1:50052")
    ap.add_argument("--http-listen", default="127.0.0.1:8080",
                    help="the router's OpenAI-compatible HTTP API (\"\" = off)")
    default_config = ROOT / "tierwise.yaml"
    ap.add_argument("--config", default=str(default_config if default_config.exists() else ROOT / "tierwise.example.yaml"))
    args = ap.parse_args()

    procs: list[Child] = []
    stopping = StopOnSignal()
    try:
        for module, extra in (("classifier_service", ["--listen", args.classifier_listen]),
                              ("router_service", ["--listen", args.router_listen, "--config", args.config,
                                                  "--classifier", args.classifier_listen,
                                                  *(["--http-listen", args.http_listen] if args.http_listen else [])])):
            ready, lines = threading.Event(), []
            procs.append(start([module, *extra], module, ready, lines))
            while not ready.wait(0.2):
                if stopping.requested:
                    return 130
            if not lines:
                print(f"tierwise: {module} exited before it was ready (code {procs[-1].wait()})", flush=True)
                return 1
        http = f", OpenAI-compatible HTTP API on http://{args.http_listen}/v1" if args.http_listen else ""
        print(f"tierwise: router on {args.router_listen}{http} (config {args.config}), classifier on "
              f"{args.classifier_listen}. Ctrl-C stops both.", flush=True)
        while not stopping.wait(0.5):
            for proc in procs:
                if proc.poll() is not None:
                    print(f"tierwise: {proc.args[2]} exited with code {proc.returncode}", flush=True)
                    return 1
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc)


if __name__ == "__main__":
    sys.exit(main())
