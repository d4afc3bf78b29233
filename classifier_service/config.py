"""Classifier service settings: command-line flags, each defaulting from a TIERWISE_CLASSIFIER_* variable."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from tierwise.serving import GRPC_MAX_MESSAGE
from tierwise.telemetry import split_listen
from tierwise.tls import ServerTLS

ROOT = Path(__file__).resolve().parent.parent
MAX_KEEP_WARM_MS = 60_000.0  # past a minute it keeps nothing warm; far past, the workers' timed waits overflow


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    encoder_dir: Path = ROOT / "build" / "encoder"
    heads_dir: Path = ROOT / "models" / "heads"
    default_head: str = "default"
    precision: str = "int8"
    workers: int = 2
    ort_threads: int = 1
    micro_batch: int = 8
    run_tokens: int = 128
    inline_max_tokens: int = 0
    keep_warm_ms: float = 0.0
    max_batch: int = 256
    max_text_bytes: int = 32 * 1024
    max_inflight: int = 256
    max_batch_inflight: int = 512
    cache_size: int = 20_000
    warmup_rounds: int = 8
    heads_reload_seconds: float = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    health_listen: str = ""
    metrics_listen: str = ""

    @property
    def tls(self) -> ServerTLS | None:
        """The TLS files, None for plaintext; ValueError naming the flag when the set is incomplete."""
        return ServerTLS.from_settings(self.tls_cert, self.tls_key, self.tls_client_ca)

    @property
    def run_cap(self) -> int | None:
        """The most padded tokens one encoder run holds, None for no cap (`--run-tokens 0`)."""
        return self.run_tokens or None

    @property
    def max_message_bytes(self) -> int:
        # Room for a full batch of maximal texts plus framing, so oversize texts get our own clear error.
        return self.max_batch * (self.max_text_bytes + 64) + 65_536


HELP = {
    "listen": "host:port to serve on (port 0 picks a free port), or unix:PATH for a socket on this machine",
    "encoder_dir": "directory with the exported ONNX encoder (manifest.json)",
    "heads_dir": "directory of <name>/head.json tier heads; all are loaded",
    "default_head": "head used when a request names none",
    "precision": "encoder weights: int8 (per-channel, default) or fp32",
    "workers": "encoder runs in parallel",
    "ort_threads": "onnxruntime intra-op threads per run",
    "micro_batch": "most texts a worker takes from the queue at once; smaller takes spread a burst over the "
                   "workers (decision 0028)",
    "run_tokens": "most padded tokens one encoder run holds: what queued runs as several smaller runs past it, and "
                  "a longer text runs alone; larger runs of long texts are slower per text (0: no cap; decision 0027)",
    "inline_max_tokens": "an idle service embeds a lone text of at most this many tokens on its event loop, sparing "
                         "the hand-off to a worker thread: -0.2 to -0.3 ms for a lone caller, but up to 30 %% less "
                         "throughput under many callers (0: always a worker; decision 0021)",
    "keep_warm_ms": "when no text has come for this long, one worker runs a one-word text (about 1 ms) and again "
                    "every as long while idle, so the model's weights stay in the caches for the next call: "
                    "1-2 ms less for calls that arrive after a pause, at up to 1 ms of CPU per period "
                    "(0: off; decision 0032)",
    "max_batch": "most texts in one ClassifyBatch call",
    "max_text_bytes": "largest text accepted, in UTF-8 bytes",
    "max_inflight": "texts of Classify calls queued or running before such calls get RESOURCE_EXHAUSTED",
    "max_batch_inflight": "texts of ClassifyBatch calls queued or running before such calls get RESOURCE_EXHAUSTED; "
                          "a budget apart from --max-inflight, and their texts wait behind Classify calls' texts (but "
                          "for one worker take in nine while both wait), so bulk scoring does not hold up or refuse "
                          "a router's calls, and steady calls slow it without stopping it",
    "cache_size": "decision cache entries (0 disables)",
    "warmup_rounds": "encoder runs at start-up before reporting SERVING",
    "heads_reload_seconds": "how often the heads directory is checked for changed heads, swapped in without a "
                            "restart (SIGHUP checks at once; 0 = only on SIGHUP)",
    "tls_cert": "PEM certificate to serve TLS with (unset: plaintext); re-read when the file changes",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: clients must present a certificate it signed (mTLS)",
    "health_listen": "host:port of a plaintext port serving only grpc.health.v1, for probes that cannot speak TLS "
                     "(unset: none)",
    "metrics_listen": "host:port to serve Prometheus metrics on, at /metrics (unset: none; OTLP export needs only "
                      "OTEL_EXPORTER_OTLP_ENDPOINT)",
}


def parse(argv: list[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(prog="python -m classifier_service", description="Tierwise classifier service")
    for f in fields(Config):
        env = f"TIERWISE_CLASSIFIER_{f.name.upper()}"
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "Path": Path, "str": str,
                                                         "Path | None": Path}[f.type]
        default = f.default
        if os.environ.get(env) or (env in os.environ and f.default is not None):  # unset a file by ""
            default = os.environ[env]  # argparse converts a string default like the flag: a bad one is its error
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default,
                        help=f"{HELP[f.name]} (env {env}; default {f.default})")
    args = ap.parse_args(argv)
    cfg = Config(**vars(args))
    problems = []  # every one, so one run shows them all
    if cfg.precision not in ("int8", "fp32"):
        problems.append("--precision must be int8 or fp32")
    for name in ("workers", "ort_threads", "micro_batch", "max_batch", "max_text_bytes", "max_inflight",
                 "max_batch_inflight"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.max_batch_inflight < cfg.max_batch:
        problems.append(f"--max-batch-inflight ({cfg.max_batch_inflight}) must be at least --max-batch "
                        f"({cfg.max_batch}): a full batch could never be admitted")
    if cfg.max_message_bytes > GRPC_MAX_MESSAGE:
        problems.append(f"--max-batch x --max-text-bytes must stay under 2 GiB, the most gRPC receives in one "
                        f"message (now {cfg.max_message_bytes} bytes)")
    for name in ("heads_dir", "encoder_dir"):
        if not getattr(cfg, name).is_dir():
            problems.append(f"--{name.replace('_', '-')}: {getattr(cfg, name)} is not a directory")
    if cfg.encoder_dir.is_dir() and not (cfg.encoder_dir / "manifest.json").is_file():
        problems.append(f"--encoder-dir: {cfg.encoder_dir} holds no exported encoder (manifest.json); `make setup` "
                        "exports it")
    for name in ("cache_size", "warmup_rounds"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be 0 or more")
    if cfg.run_tokens < 0:
        problems.append("--run-tokens must be 0 (no cap) or more")
    if cfg.inline_max_tokens < 0:
        problems.append("--inline-max-tokens must be 0 (always a worker) or more")
    if not 0 <= cfg.keep_warm_ms <= MAX_KEEP_WARM_MS:  # also refuses nan
        problems.append(f"--keep-warm-ms must be 0 (off) to {MAX_KEEP_WARM_MS:.0f} (a minute)")
    if not cfg.heads_reload_seconds >= 0:  # also refuses nan
        problems.append("--heads-reload-seconds must be 0 (only on SIGHUP) or more")
    try:
        ServerTLS.from_settings(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    except ValueError as err:
        problems.append(str(err))
    if cfg.metrics_listen:
        try:
            split_listen(cfg.metrics_listen)
        except ValueError as err:
            problems.append(f"--metrics-listen: {err}")
    if problems:
        ap.error("\n".join(problems))
    return cfg
