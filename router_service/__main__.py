import argparse
import asyncio
import os
import sys

from tierwise.telemetry import configure_logging

from .config import ConfigError, load
from .server import serve

ap = argparse.ArgumentParser(prog="python -m router_service", description="Tierwise router service")
ap.add_argument("--listen", default=os.environ.get("TIERWISE_ROUTER_LISTEN", "127.0.0.1:50052"),
                help="host:port to serve on (env TIERWISE_ROUTER_LISTEN)")
ap.add_argument("--classifier", default=os.environ.get("TIERWISE_CLASSIFIER_ADDRESS"),
                help="classifier host:port (env TIERWISE_CLASSIFIER_ADDRESS; default: the config's classifier.address)")
ap.add_argument("--config", default=os.environ.get("TIERWISE_CONFIG", "tierwise.example.yaml"),
                help="router YAML config (env TIERWISE_CONFIG)")
ap.add_argument("--metrics-port", type=int, default=os.environ.get("TIERWISE_ROUTER_METRICS_PORT"),
                help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (env TIERWISE_ROUTER_METRICS_PORT)")
args = ap.parse_args()
configure_logging()
try:
    cfg = load(args.config)
except ConfigError as err:
    print(f"tierwise-router: invalid config: {err}", file=sys.stderr, flush=True)
    sys.exit(2)
sys.exit(asyncio.run(serve(cfg, args.listen, args.classifier or cfg.classifier.address, args.metrics_port)))
