import os

# The heads' matrix products are tiny; keep numpy's BLAS from starting a thread pool of its own beside
# the encoder workers, which already use every core. Must be set before numpy loads.
for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")

import asyncio  # noqa: E402
import sys  # noqa: E402

from tierwise.telemetry import configure_logging  # noqa: E402

from .config import parse  # noqa: E402
from .server import serve  # noqa: E402

configure_logging()
sys.exit(asyncio.run(serve(parse())))
