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

# An encoder worker back from onnxruntime needs the GIL to hand its batch over, and under load the event loop
# holds it for up to the switch interval (5 ms by default). 1 ms gave 4-5 % more unique queries/s with 32
# callers and left single-call latency unchanged (decision 0021).
sys.setswitchinterval(0.001)
configure_logging()
sys.exit(asyncio.run(serve(parse())))
