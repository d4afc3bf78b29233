"""Container health check for both Tierwise services: exit 0 only if grpc.health.v1 answers SERVING.

    python /app/deploy/healthcheck.py [ADDRESS] [--service NAME] [--timeout SECONDS]

ADDRESS is what the service listens on (default: $TIERWISE_CLASSIFIER_LISTEN or $TIERWISE_ROUTER_LISTEN, whichever
is set); a wildcard host (0.0.0.0, [::], empty) is checked on the loopback. The services report NOT_SERVING while
they load and while they drain on SIGTERM, so this is false during both, as it should be. Writes nothing to disk.
Used by the images' HEALTHCHECK and by deploy/compose.yaml; Kubernetes uses its native grpc probes instead.
"""
from __future__ import annotations

import argparse
import os
import sys

WILDCARDS = {"", "0.0.0.0", "[::]", "::", "*"}


def target(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"healthcheck: {listen!r} is not HOST:PORT")
    return f"127.0.0.1:{port}" if host in WILDCARDS else listen


def main(argv: list[str] | None = None) -> int:
    default = os.environ.get("TIERWISE_CLASSIFIER_LISTEN") or os.environ.get("TIERWISE_ROUTER_LISTEN") or ""
    ap = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.split("\n")[0])
    ap.add_argument("address", nargs="?", default=default, help="HOST:PORT the service listens on")
    ap.add_argument("--service", default="", help='health service name ("" = the whole server)')
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up")
    args = ap.parse_args(argv)
    if not args.address:
        ap.error("no address given and neither TIERWISE_CLASSIFIER_LISTEN nor TIERWISE_ROUTER_LISTEN is set")

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    addr = target(args.address)
    try:
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as err:
        print(f"unhealthy: {addr}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{addr}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
