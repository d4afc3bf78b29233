"""The images a user message carries: what the router takes, checked once for gRPC and HTTP (each naming its own
field). The tier is decided from the text; only providers with `vision` are sent the images."""
from __future__ import annotations

from tierwise.serving import invalid

URL_PREFIXES = ("https://", "http://", "data:image/")
DETAILS = ("", "auto", "low", "high")


def check_image(url: str, detail: str, field: str, url_field: str = "url") -> None:
    """INVALID_ARGUMENT naming `field` for a URL no provider could fetch or a detail OpenAI does not know."""
    if not url.startswith(URL_PREFIXES):
        raise invalid(f"{field}.{url_field}: must be an https://, http:// or data:image/ URL")
    if detail not in DETAILS:
        raise invalid(f"{field}.detail: must be auto, low or high")
