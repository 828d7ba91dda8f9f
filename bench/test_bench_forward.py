"""Forward pass of one fixed fan-in layer: sparsefan against numpy dense and scipy.sparse CSR.

The layer: 784 -> 1568 units, k = 28 (random connectivity), batch 256, float32, one channel.
All three compute the same y = x @ W_denseᵀ + b (numpy and scipy on (batch, units) arrays,
sparsefan in its feature-major layout, as inside a network). Run with

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/ --benchmark-only

(unsetting the OpenBLAS overrides this machine may carry, so numpy runs its own tuned kernels).
Each benchmark records GFLOP/s of useful work (2 * nnz * batch per pass) in extra_info.
"""
import numpy as np
import pytest
import scipy.sparse as sp

import sparsefan as sf

N_IN, N_OUT, K, BATCH = 784, 1568, 28, 256
USEFUL_FLOPS = 2 * N_OUT * K * BATCH


@pytest.fixture(scope="module")
def problem():
    conn = sf.Connectivity.random(N_IN, N_OUT, K, seed=0)
    layer = sf.FanIn(conn, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    csr = conn.to_scipy(layer.weight.reshape(-1))
    dense_t = np.ascontiguousarray(csr.toarray().T)  # (n_in, n_out)
    bias = layer.bias.reshape(-1)
    expect = x @ dense_t + bias
    return layer, x, csr, dense_t, bias, expect


def _median(benchmark):
    """Median seconds, or None under --benchmark-disable (the code then runs once, untimed)."""
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else stats.stats.median


def _record(benchmark, flops=USEFUL_FLOPS, key="gflops_median"):
    if _median(benchmark) is not None:
        benchmark.extra_info[key] = flops / _median(benchmark) / 1e9


@pytest.mark.benchmark(group="forward 784->1568 k=28 batch=256")
def test_sparsefan_forward(benchmark, problem):
    layer, x, _, _, _, expect = problem
    xt = sf.to_feature_major(x)
    out = np.empty((N_OUT, 1, BATCH), np.float32)
    benchmark(layer.forward_fm, xt, out=out, check_finite=False)
    np.testing.assert_allclose(out[:, 0, :].T, expect, rtol=1e-4, atol=1e-4)
    _record(benchmark)


@pytest.mark.benchmark(group="forward 784->1568 k=28 batch=256")
def test_sparsefan_forward_with_layout_change(benchmark, problem):
    layer, x, _, _, _, expect = problem
    y = benchmark(layer.forward, x, check_finite=False)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4)
    _record(benchmark)


@pytest.mark.benchmark(group="forward 784->1568 k=28 batch=256")
def test_numpy_dense_forward(benchmark, problem):
    _, x, _, dense_t, bias, expect = problem
    out = np.empty((BATCH, N_OUT), np.float32)

    def run():
        np.matmul(x, dense_t, out=out)
        np.add(out, bias, out=out)

    benchmark(run)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-4)
    _record(benchmark)
    # what the machine's sgemm achieves on the dense problem: the practical peak
    _record(benchmark, 2 * BATCH * N_IN * N_OUT, "sgemm_gflops_median")


@pytest.mark.benchmark(group="forward 784->1568 k=28 batch=256")
def test_scipy_csr_forward(benchmark, problem):
    _, x, csr, _, bias, expect = problem
    xt = np.ascontiguousarray(x.T)  # scipy computes W @ xᵀ: give it the (n_in, batch) layout

    def run():
        return (csr @ xt).T + bias

    y = benchmark(run)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4)
    _record(benchmark)
