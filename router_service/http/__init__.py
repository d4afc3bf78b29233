"""The router's OpenAI-compatible HTTP API (docs/http-api.md): same core, keys, limits and spans as gRPC."""
from .app import build_app
from .health import Health
from .serve import HttpServer

__all__ = ["Health", "HttpServer", "build_app"]
