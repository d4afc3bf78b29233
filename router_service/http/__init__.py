"""The router's OpenAI-compatible HTTP API (docs/http-api.md): same core, keys, limits and spans as gRPC."""
from .app import Health, build_app
from .serve import HttpServer

__all__ = ["Health", "HttpServer", "build_app"]
