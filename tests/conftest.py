import numpy as np
import pytest

import sparsefan as sf


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def thread_counts():
    """Thread counts to test: 1 and 2 always (2 runs single-threaded without OpenMP), plus 3."""
    return [1, 2, 3]


def make_connectivity(scheme, n_in, n_out, k, seed=0):
    """Every connectivity scheme, by name, for parametrized tests."""
    if scheme == "random":
        return sf.Connectivity.random(n_in, n_out, k, seed=seed)
    if scheme == "partitions":
        return sf.Connectivity.partitions(n_in, n_out, k, seed=seed)
    if scheme == "gaussian":
        # n_in must factor as H * W here; callers pick n_in = 6 * m
        return sf.Connectivity.gaussian((6, n_in // 6), n_out, k, seed=seed)
    if scheme == "identity":
        return sf.Connectivity.identity(n_in)
    if scheme == "dense":
        return sf.Connectivity.dense(n_in, n_out)
    if scheme == "ragged":
        r = np.random.default_rng(seed)
        rows = [r.choice(n_in, size=r.integers(0, min(n_in, 2 * k) + 1), replace=False)
                for _ in range(n_out)]
        return sf.Connectivity.from_rows(n_in, rows)
    raise ValueError(scheme)


def numeric_grad(f, arr, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of arr (in place)."""
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        up = f()
        arr[idx] = old - eps
        down = f()
        arr[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g
