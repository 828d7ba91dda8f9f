"""Property tests of the public constructors and calls: arbitrary arguments either work or
raise ValueError / TypeError (never another exception, never a crash)."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsefan as sf  # noqa: E402

# small sizes, and sizes too large to address (which must be refused before any work)
SIZES = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**40, 2**63, 2**70, -2**70]),
                  st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=3))
FAST = settings(max_examples=200, deadline=None)


def _call(f, *a, **k):
    try:
        return f(*a, **k)
    except (ValueError, TypeError):
        return None


@FAST
@given(n_in=SIZES, n_out=SIZES, k=SIZES, seed=st.integers(0, 3))
def test_generators(n_in, n_out, k, seed):
    for make in (sf.Connectivity.random, sf.Connectivity.partitions):
        c = _call(make, n_in, n_out, k, seed=seed)
        if c is not None:
            assert c.n_out == n_out and c.nnz == n_out * k and c.indices.max() < n_in
    c = _call(sf.Connectivity.dense, n_in, n_out)
    if c is not None:
        assert c.nnz == n_in * n_out


@FAST
@given(n_in=SIZES, indptr=st.lists(st.integers(-5, 12), max_size=6),
       indices=st.lists(st.integers(-3, 12), max_size=12))
def test_from_arrays(n_in, indptr, indices):
    c = _call(sf.Connectivity.from_arrays, n_in, np.array(indptr, dtype=np.int64),
              np.array(indices, dtype=np.int64))
    if c is not None:  # what is accepted is a valid table
        assert c.indptr[0] == 0 and c.indptr[-1] == c.nnz
        assert np.all(np.diff(c.indptr) >= 0) and (c.nnz == 0 or c.indices.max() < n_in)
        for j in range(c.n_out):
            assert len(set(c.row(j).tolist())) == len(c.row(j))


@FAST
@given(c_in=SIZES, c_out=SIZES, act=st.sampled_from([None, "relu", "maxmin", "tanh", 3]),
       batch=st.integers(0, 3), threads=st.sampled_from([None, -1, 1, 2, -10**6, 10**12, 0]))
def test_layers(c_in, c_out, act, batch, threads):
    import warnings

    conn = sf.Connectivity.random(6, 4, 2, seed=0)
    layer = _call(sf.FanIn, conn, c_in, c_out, act, seed=0)
    if layer is None:
        return
    x = np.ones((batch, 6, layer.c_in), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a capped thread count
        y = _call(layer.forward, x, n_threads=threads)
    if y is not None:
        assert y.shape == (batch, 4, layer.c_out) and np.isfinite(y).all()
