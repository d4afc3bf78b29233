"""The tierwise tools run numpy's BLAS on one thread unless the user chose a number (tierwise.blas, which the
classifier's entry point calls too)."""
import json
import os
import subprocess
import sys

from tierwise.blas import VARIABLES


def run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, timeout=120,
                          check=True).stdout


def test_the_tools_run_blas_on_one_thread_by_default():
    """`tierwise` imports numpy, scikit-learn and scipy; every BLAS they loaded runs one thread (on two cores,
    OpenBLAS's default threads made `tierwise train` about 11 times slower)."""
    threads = json.loads(run("import json, tierwise_tools.cli; from threadpoolctl import threadpool_info; "
                             "print(json.dumps([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']))"))
    assert threads and set(threads) == {1}, threads


def test_a_users_own_thread_count_is_kept():
    out = run("import os, tierwise_tools.cli; print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])",
              OPENBLAS_NUM_THREADS="3")
    assert out.split() == ["3", "1"]
