"""The classifier service as a child process: started on a free port, stopped with SIGINT (killed if it hangs)."""
from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

READY = re.compile(r"tierwise-classifier ready on (\S+:\d+)")


class ClassifierServer:
    def __init__(self, root: Path, log_path: Path, args: list[str] | None = None, start_timeout: float = 120.0,
                 env: dict[str, str] | None = None):
        self.root = root
        self.env = env  # None: this process's
        self.log_path = log_path
        self.args = args or []
        self.start_timeout = start_timeout
        self.target = ""
        self.ready_line = ""
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> "ClassifierServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "classifier_service", "--listen", "127.0.0.1:0", *self.args],
                cwd=self.root, env=self.env, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        # A reader thread keeps the stdout pipe drained and lets the ready wait time out.
        threading.Thread(target=self._read_stdout, daemon=True).start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"classifier exited before it was ready; see {self.log_path}")
            if match := READY.search(line):
                self.target, self.ready_line = match.group(1), line
                return
        raise TimeoutError(f"classifier not ready within {self.start_timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
