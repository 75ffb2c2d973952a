"""Benchmark drivers of bnstats: beside the package they measure, not part of it (not installed).

- ``bench_cpu.py``: CPU throughput against a per-seed ``DataLoader`` loop, the cost of moments, local
  workers, and one code version against another (``--ref``): ``python benchmarks/bench_cpu.py``,
  ``nox -s bench``.
- ``bench_gpu.py``: the engine's CUDA checks and the GPU cases: ``bash benchmarks/gpu_check.sh``.

Run them as files or as ``python -m benchmarks.bench_cpu`` from the repository root; the tests import
them as ``benchmarks.bench_cpu`` / ``benchmarks.bench_gpu``. Numbers and commands: ``README.md`` here.
"""
