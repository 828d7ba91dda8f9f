"""Wall-clock medians for the CLI's speed report and the benchmark scripts."""
import time

import numpy as np


def median_seconds(fn, repeats, warmup=True):
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
