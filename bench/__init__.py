"""Benchmark: the Tierwise classifier over gRPC against the seed's in-process sentence-transformers path.

Run `python -m bench --seed-python PATH [--quick]` from the repository root. Keep this package's
import-time dependencies to the standard library: `bench.seed_baseline` runs under the export venv.
"""
