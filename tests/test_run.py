"""`make run`'s launcher: both real services come up on 127.0.0.1, the router with its HTTP API and the config it
was given, and one SIGTERM (or a closed terminal's SIGHUP) stops both cleanly."""
from __future__ import annotations

import http.client
import json
import signal

import pytest
import yaml

from .provider_double import unused_port
from .servers import ROOT, start


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_launcher_serves_both_and_stops_both_on_sigterm(tmp_path, stop):
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "tierwise.example.yaml").read_text()),
                                      "strategy": "heuristic"}))
    http_listen = f"127.0.0.1:{unused_port()}"
    run = start("tierwise.run", "--classifier-listen", f"127.0.0.1:{unused_port()}",
                "--router-listen", f"127.0.0.1:{unused_port()}", "--http-listen", http_listen, "--config", str(config))
    try:
        run.wait_for("Ctrl-C stops both", timeout=120)
        conn = http.client.HTTPConnection(http_listen, timeout=10)
        conn.request("GET", "/v1/models")
        response = conn.getresponse()
        models = [m["id"] for m in json.loads(response.read())["data"]]
        conn.close()
        run.proc.send_signal(stop)
        assert run.proc.wait(60) == 0
    finally:
        run.stop()
    out = "".join(run.output)
    assert response.status == 200 and "tierwise" in models, out
    assert f"http={http_listen}" in out and "strategy=heuristic" in out and f"(config {config})" in out, out
    assert "tierwise-router stopped" in out and "tierwise-classifier stopped" in out, out


def test_a_launcher_started_under_nohup_keeps_serving_through_a_hangup(tmp_path):
    """nohup asks the launcher to outlive its terminal: SIGHUP, ignored when it starts, stays ignored."""
    import subprocess
    import sys

    code = ("import os, signal, time\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "from tierwise.run import StopOnSignal\n"
            "stop = StopOnSignal()\n"
            "os.kill(os.getpid(), signal.SIGHUP)\n"
            "time.sleep(0.2)\n"
            "print('stopped' if stop.requested else 'serving')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "serving", done.stderr
