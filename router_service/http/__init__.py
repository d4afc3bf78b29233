"""The router's OpenAI-compatible HTTP API (docs/http-api.md): same core, keys, limits and spans as gRPC."""
from .app import build_app
from .serve import HttpServer

__all__ = ["HttpServer", "build_app"]
