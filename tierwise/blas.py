"""numpy's BLAS on one thread, unless the user chose otherwise; call before numpy loads.

The matrix products here are small (a head over one embedding, logistic regression on a few thousand 384-d rows).
A BLAS thread pool on them loses more to hand-offs than it gains, and it fights the encoder's own workers for the
cores: on two cores `tierwise train` on routerbench took 145 s with OpenBLAS's default threads against 13 s with
one, for the same head to the bit.
"""
from __future__ import annotations

import os

VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_thread() -> None:
    for name in VARIABLES:
        os.environ.setdefault(name, "1")
