"""`make run`'s launcher: both real services come up on 127.0.0.1, and one SIGTERM stops both cleanly."""
from __future__ import annotations

import signal

from .provider_double import unused_port
from .servers import start


def test_launcher_serves_both_and_stops_both_on_sigterm():
    run = start("tierwise.run", "--classifier-listen", f"127.0.0.1:{unused_port()}",
                "--router-listen", f"127.0.0.1:{unused_port()}")
    try:
        run.wait_for("Ctrl-C stops both", timeout=120)
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(60) == 0
    finally:
        run.stop()
    out = "".join(run.output)
    assert "tierwise-router stopped" in out and "tierwise-classifier stopped" in out, out
