"""Timing helpers shared by the benchmarks (benchmarks/*.py): a median of timed calls, and the fp32 matmul
rate that serves as their compute floor or roofline.

A benchmark reports ratios measured in one run on an idle machine (:mod:`harness.idle`); these two
functions are how every one of them times a call and measures what the CPU's float32 matmul can do,
and :data:`ISA_ENV` / :func:`isa_caps` how a run is capped at an older vector ISA and records it.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
from tqdm import tqdm


ISA_ENV = {  # environment that caps each library's vector ISA (a speed comparison "on AVX2" on an AVX-512 CPU)
    "native": {},
    "avx2": {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
}


def isa_caps() -> dict:
    """The ISA caps (of :data:`ISA_ENV`) this process was started with: XLA's, torch's (ATen, MKL, oneDNN) and
    OpenBLAS's (numpy's floor). Each library honours its own; a native AVX2 machine is the real test."""
    return {k: os.environ[k] for k in ISA_ENV["avx2"] if k in os.environ}


def median_seconds(fn, repeats: int, label: str) -> float:
    """Median wall time of ``fn()`` (which must block until its result is ready) over ``repeats`` calls, after
    one call that compiles and warms up."""
    fn()
    times = []
    for _ in tqdm(range(repeats), desc=label, leave=False):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def numpy_matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    """The best float32 rate (GFLOP/s) of an ``n x n`` numpy matmul over ``repeats`` timed calls (after one
    untimed): the floor / roofline the benchmarks compare with."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9
