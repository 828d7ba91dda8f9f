"""The kernels' threads (csrc/pool.c) and the whole-network forward as one list of work items.

A layer's items wait only for the earlier items they need: the previous layer's row ranges they
read (all of them, or only their own units' for a per-unit layer), the readers of the rows they
overwrite, and everything two and three stages back. These tests run chains where each rule
matters -- per-unit layers after general ones, layers that grow and shrink (so a write lands
inside or beyond the previous layer's input), odd and even layer counts, the result in a buffer,
in ``out`` or in NumPy's layout, one and two batch slabs -- and require the fused call to equal
the layers run one by one, bit for bit, for every thread count. Debug builds (-DSF_DEBUG) pause a
random moment before every item, so that a missing dependency fails here.
"""
import os
import signal

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import _engine, _kernels, reference
from sparsefan.layers import FanIn
from sparsefan.network import Network

from helpers import TOL, make_connectivity, rel_err


def _layer(conn, c_in, c_out, relu, seed):
    layer = FanIn(conn, c_in, c_out, activation="relu" if relu else None, seed=seed)
    layer.bias = (0.1 * np.random.default_rng(seed).standard_normal(layer.bias_shape)).astype(
        np.float32)
    return layer


# (units, channels, kind) per layer after an input of 60 units: "g" a general layer (random
# rows, fan-in 5), "r" ragged rows, "i" a per-unit layer (identity connectivity)
CHAINS = {
    "general-identity": [(600, 3, "g"), (600, 4, "i")],
    "identity-identity": [(600, 3, "g"), (600, 5, "i"), (600, 2, "i")],
    "grow-shrink": [(900, 2, "g"), (200, 6, "r"), (1200, 3, "g"), (1200, 4, "i")],
    "shrink-identity": [(300, 8, "g"), (300, 8, "i"), (800, 1, "g"), (800, 3, "i"),
                        (800, 2, "i")],
}


def _chain(name, seed=0):
    layers, n_in, c_in = [], 60, 1
    spec = CHAINS[name]
    for i, (n_out, c_out, kind) in enumerate(spec):
        if kind == "i":
            conn = sf.Connectivity.identity(n_in)
        else:
            conn = make_connectivity("random" if kind == "g" else "ragged", n_in, n_out, 5,
                                     seed=seed + i)
        layers.append(_layer(conn, c_in, c_out, i + 1 < len(spec), seed + i))
        n_in, c_in = n_out, c_out
    return Network(layers, c_in)


def _by_layer(net, x):
    h = sf.to_feature_major(x)
    for layer in net.layers:
        h = layer.forward_fm(h, n_threads=1)
    return h


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("batch", [2, 33, 1030])
@pytest.mark.parametrize("where", ["out", "buffer", "numpy"])
def test_fused_forward_equals_layer_by_layer_for_every_thread_count(monkeypatch, name, batch,
                                                                    where, rng):
    if where == "buffer":  # no kept scratch: the last layer writes into its own buffer
        monkeypatch.setattr(_engine, "SPARE_SCRATCH_BYTES", 0)
    net = _chain(name)
    plan = net._fused_plan()
    x = rng.random((batch, 60), dtype=np.float32)
    want = _by_layer(net, x)  # (M, C, batch)
    if where == "numpy":
        want = np.ascontiguousarray(want.transpose(2, 0, 1))
    assert min(l.connectivity.nnz * l.c_in * l.c_out for l in net.layers) * 33 >= \
        _engine.PARALLEL_MIN_WORK  # the layers really split at batch >= 33
    for n in (1, 2, 3, 7):
        for _ in range(3):
            if where == "out":
                got = plan.forward(x.reshape(-1), batch, n, np.empty(want.size, np.float32))
            else:
                got = plan.forward(x.reshape(-1), batch, n, batch_major=where == "numpy")
            assert np.array_equal(got.reshape(want.shape), want), (n, where)


@pytest.mark.parametrize("batch", [1, 2, 31, 64, 1030])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (3, 5), (2, 9)])
def test_public_layout_forward_is_the_kernel_layout_transposed(batch, c_in, c_out, rng):
    # FanIn.forward runs the layout changes inside its C call (entry and exit stages); it must
    # be exactly forward_fm between two transposes, for every thread count
    conn = make_connectivity("random", 90, 700, 7, seed=c_in)
    layer = _layer(conn, c_in, c_out, True, seed=c_out)
    x = rng.standard_normal((batch, 90, c_in)).astype(np.float32)
    yt = layer.forward_fm(sf.to_feature_major(x), n_threads=1)
    want = sf.from_feature_major(yt)
    for n in (1, 2, 3):
        assert np.array_equal(layer.forward(x, n_threads=n), want)
    if batch <= 64:
        ref = reference.fanin_forward(x, conn, layer.weight, layer.bias, "relu")
        assert rel_err(want, ref) <= TOL


def test_a_forked_child_gets_threads_of_its_own():
    # the workers of the parent do not exist in a child: its first parallel call starts new
    # ones instead of waiting forever for the parent's
    if not hasattr(os, "fork") or _kernels.thread_backend() != "pthreads":
        pytest.skip("the pthreads backend only (GNU OpenMP hangs in a forked child)")
    layer = _layer(make_connectivity("random", 300, 2000, 9, seed=0), 1, 4, True, 0)
    x = np.random.default_rng(0).random((64, 300), dtype=np.float32)
    want = layer.forward(x, n_threads=2)  # the pool is running
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when its result is right
        signal.alarm(120)  # a hang ends the child (SIGALRM's default action), not the suite
        try:
            os._exit(0 if np.array_equal(layer.forward(x, n_threads=2), want) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed, or hung and was ended"


def test_spin_time_is_settable_and_does_not_change_results(rng):
    layer = _layer(make_connectivity("random", 200, 1500, 9, seed=1), 2, 3, True, 1)
    x = rng.random((40, 200, 2), dtype=np.float32)
    want = layer.forward(x, n_threads=1)
    old = _kernels.spin_microseconds(), _kernels.spin_microseconds(idle=True)
    try:
        for us in (0, 1, 1000):
            for idle in (False, True):
                assert _kernels.spin_microseconds(us, idle=idle) >= 0
                assert _kernels.spin_microseconds(idle=idle) == us
            assert np.array_equal(layer.forward(x, n_threads=2), want)
    finally:
        _kernels.spin_microseconds(old[0])
        _kernels.spin_microseconds(old[1], idle=True)
    for bad in (-1, 10**7):
        with pytest.raises(ValueError, match="spin time"):
            _kernels.spin_microseconds(bad)


def test_thread_backend_matches_the_build():
    backend = _kernels.thread_backend()
    assert backend in ("pthreads", "openmp", "none")
    assert (backend == "none") == (not sf.openmp_enabled())
