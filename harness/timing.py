"""Timing helpers shared by the benchmarks (benchmarks/*.py): a median of timed calls, and the fp32 matmul
rate that serves as their compute floor or roofline.

A benchmark reports ratios measured in one run on an idle machine (:mod:`harness.idle`); these two
functions are how every one of them times a call and measures what the CPU's float32 matmul can do.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from tqdm import tqdm


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
