import asyncio
import sys

from tierwise.telemetry import configure_logging

from .config import parse
from .server import serve

configure_logging()
sys.exit(asyncio.run(serve(parse())))
