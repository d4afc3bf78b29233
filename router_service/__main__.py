import argparse
import asyncio
import os
import sys

from tierwise.telemetry import configure_logging
from tierwise.tls import ClientTLS, ServerTLS

from .config import ConfigError, load, with_settings
from .server import serve

# Settings that also live in the config file: flag, its environment variable, the config key it overrides.
FILE_SETTINGS = [
    ("--tls-cert", "TIERWISE_ROUTER_TLS_CERT", "tls.cert", "PEM certificate to serve TLS with (unset: plaintext)"),
    ("--tls-key", "TIERWISE_ROUTER_TLS_KEY", "tls.key", "PEM private key of --tls-cert"),
    ("--tls-client-ca", "TIERWISE_ROUTER_TLS_CLIENT_CA", "tls.client_ca",
     "PEM CA bundle: clients must present a certificate it signed (mTLS)"),
    ("--classifier-tls-ca", "TIERWISE_ROUTER_CLASSIFIER_TLS_CA", "classifier.tls_ca",
     "PEM CA bundle of the classifier's certificate: reach it over TLS"),
    ("--classifier-tls-cert", "TIERWISE_ROUTER_CLASSIFIER_TLS_CERT", "classifier.tls_cert",
     "PEM client certificate for a classifier that requires one (mTLS)"),
    ("--classifier-tls-key", "TIERWISE_ROUTER_CLASSIFIER_TLS_KEY", "classifier.tls_key",
     "PEM private key of --classifier-tls-cert"),
    ("--api-keys-file", "TIERWISE_ROUTER_API_KEYS_FILE", "auth.api_keys_file",
     "accepted API keys, one a line (unset: every call is accepted)"),
    ("--http-listen", "TIERWISE_ROUTER_HTTP_LISTEN", "http.listen",
     "host:port of the OpenAI-compatible HTTP API, served beside gRPC (unset: off)"),
]

ap = argparse.ArgumentParser(prog="python -m router_service", description="Tierwise router service")
ap.add_argument("--listen", default=os.environ.get("TIERWISE_ROUTER_LISTEN", "127.0.0.1:50052"),
                help="host:port to serve on (env TIERWISE_ROUTER_LISTEN)")
ap.add_argument("--classifier", default=os.environ.get("TIERWISE_CLASSIFIER_ADDRESS"),
                help="classifier host:port or unix:PATH (env TIERWISE_CLASSIFIER_ADDRESS; default: the config's "
                     "classifier.address)")
ap.add_argument("--config", default=os.environ.get("TIERWISE_CONFIG", "tierwise.example.yaml"),
                help="router YAML config (env TIERWISE_CONFIG)")
ap.add_argument("--metrics-listen", default=os.environ.get("TIERWISE_ROUTER_METRICS_LISTEN", ""),
                help="host:port to serve Prometheus metrics on, at /metrics (env TIERWISE_ROUTER_METRICS_LISTEN; "
                     "default: none)")
ap.add_argument("--metrics-port", type=int, default=os.environ.get("TIERWISE_ROUTER_METRICS_PORT"),
                help="same as --metrics-listen 127.0.0.1:PORT (env TIERWISE_ROUTER_METRICS_PORT)")
ap.add_argument("--health-listen", default=os.environ.get("TIERWISE_ROUTER_HEALTH_LISTEN", ""),
                help="host:port of a plaintext port serving only grpc.health.v1, for probes that cannot speak TLS "
                     "(env TIERWISE_ROUTER_HEALTH_LISTEN)")
for flag, env, key, what in FILE_SETTINGS:
    ap.add_argument(flag, dest=key, default=os.environ.get(env) or None,
                    help=f"{what} (env {env}; default: the config's {key})")
args = ap.parse_args()
if args.metrics_port is not None:
    if args.metrics_listen:
        ap.error("give --metrics-listen or --metrics-port, not both")
    args.metrics_listen = f"127.0.0.1:{args.metrics_port}"
configure_logging()
try:
    cfg = with_settings(load(args.config), {key: getattr(args, key) for _, _, key, _ in FILE_SETTINGS})
    tls = ServerTLS.from_settings(cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca)
    classifier_tls = ClientTLS.from_settings(cfg.classifier.tls_ca, cfg.classifier.tls_cert, cfg.classifier.tls_key,
                                             flag="--classifier-tls-")
except (ConfigError, ValueError) as err:
    for problem in str(err).splitlines():  # a config file's problems, one a line
        print(f"tierwise-router: invalid config: {problem}", file=sys.stderr, flush=True)
    sys.exit(2)
sys.exit(asyncio.run(serve(cfg, args.listen, args.classifier or cfg.classifier.address, args.metrics_listen,
                           tls=tls, classifier_tls=classifier_tls, health_listen=args.health_listen)))
