"""Every CPU variant of the kernels against the float64 reference, at every tile-size remainder.

The kernels tile the batch in vectors of VL floats (generic 4, AVX2 8, AVX-512 16) and register
tiles of T1 = 8 vectors when c_out == 1 (32 / 64 / 128 floats) or TC vectors x OC = 4 output
channels otherwise (TC = 2 / 2 / 4); weight gradients take R1 = 8 rows (connection, channel) at a
time when c_out == 1, else RC = 2 / 2 / 4 rows x 4 output channels. The batch sizes and channel
counts below sit on, just below and just above each of those widths, for every variant this CPU
can run (forced with sparsefan._kernels.set_cpu_variant).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import _engine
from sparsefan import _kernels
from sparsefan import reference as ref

from helpers import layer_with_bias as _layer
from helpers import TOL, make_connectivity, rel_err

VARIANTS = _kernels.supported_cpu_variants()

# every multiple of a vector / tile width used by some variant, -1 / 0 / +1
BATCHES = sorted({1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129,
                  143, 255, 256, 257})
CHANNELS = [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 1), (3, 1), (2, 4), (3, 5), (2, 8),
            (4, 9), (5, 3)]


@pytest.fixture(params=VARIANTS)
def variant(request):
    previous = _kernels.set_cpu_variant(request.param)
    yield request.param
    _kernels.set_cpu_variant(previous)


def _check_layer(layer, batch, activation, rng, n_threads=None):
    x = rng.standard_normal((batch, layer.n_in, layer.c_in)).astype(np.float32)
    y = layer.forward(x, n_threads=n_threads)
    y_ref = ref.fanin_forward(x, layer.connectivity, layer.weight, layer.bias, activation)
    assert rel_err(y, y_ref) <= TOL
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = layer.backward(x, dy, y, n_threads=n_threads)
    dx, dW, db = ref.fanin_backward(x, layer.connectivity, layer.weight, layer.bias, dy,
                                    activation)
    assert rel_err(g.input, dx) <= TOL
    assert rel_err(g.weight, dW) <= TOL
    assert rel_err(g.bias, db) <= TOL


@pytest.mark.parametrize("batch", BATCHES)
def test_batch_tile_remainders(variant, batch, rng):
    # k = 9: one weight-gradient block of 8 rows and a remainder of 1
    conn = sf.Connectivity.random(23, 19, 9, seed=batch)
    for c_in, c_out, act in ((1, 1, "relu"), (2, 5, None)):
        _check_layer(_layer(conn, c_in, c_out, act), batch, act, rng)


@pytest.mark.parametrize("c_in,c_out", CHANNELS, ids=lambda v: str(v))
def test_channel_blocks(variant, c_in, c_out, rng):
    conn = sf.Connectivity.random(17, 11, 3, seed=c_in * 10 + c_out)
    for batch in (5, 37):
        _check_layer(_layer(conn, c_in, c_out, "relu"), batch, "relu", rng)


# batch 1 with channels: blocks of up to 4 vectors of output channels (1..4 vectors, and a
# block after the first 4 * VL channels), accumulators dealt over the channels (c_in a multiple
# of 4) or over the connections (any other c_in; fan-in below, at and above 4)
B1_CHANNELS = [(1, 2), (1, 8), (1, 17), (4, 9), (8, 16), (16, 10), (3, 33), (5, 40), (2, 64),
               (12, 67), (1, 130), (7, 1)]


@pytest.mark.parametrize("c_in,c_out", B1_CHANNELS, ids=lambda v: str(v))
@pytest.mark.parametrize("k", [1, 3, 4, 9])
def test_single_example_channel_blocks(variant, k, c_in, c_out, rng):
    conn = sf.Connectivity.random(15, 6, k, seed=k + c_in)
    for act in ("relu", None):
        _check_layer(_layer(conn, c_in, c_out, act), 1, act, rng)
    ragged = make_connectivity("ragged", 15, 9, k, seed=k)
    _check_layer(_layer(ragged, c_in, c_out, "relu"), 1, "relu", rng)


@pytest.mark.parametrize("k", [1, 2, 7, 8, 9, 16, 17])
def test_weight_gradient_row_blocks(variant, k, rng):
    conn = make_connectivity("random", 20, 13, k, seed=k)
    for c_in, c_out in ((1, 1), (3, 1), (1, 4), (3, 2)):
        _check_layer(_layer(conn, c_in, c_out, None), 21, None, rng)


# weight gradients with many output channels take outer products over transposed chunks of 64
# batch columns, in blocks of two vectors of channels and tiles of 4 (2 vectors) or 8 (1 vector)
# rows: channel counts around every vector width, batches around the chunk, rows (k * c_in)
# around the tiles; up to half a vector of channels past the last full one (10, 12 on AVX2;
# 17, 20 on AVX-512) goes to dot products instead
@pytest.mark.parametrize("c_out", [8, 9, 10, 12, 13, 16, 17, 20, 32, 33, 47])
@pytest.mark.parametrize("batch", [16, 65, 130])
def test_weight_gradient_outer_products(variant, c_out, batch, rng):
    for k, c_in in ((1, 1), (9, 1), (3, 3), (2, 5)):
        conn = make_connectivity("random", 14, 5, k, seed=k + c_in)
        _check_layer(_layer(conn, c_in, c_out, "relu"), batch, "relu", rng)
    _check_layer(_layer(make_connectivity("ragged", 14, 6, 4, seed=2), 2, c_out, None), batch,
                 None, rng)


def test_ragged_and_empty_rows(variant, rng):
    conn = make_connectivity("ragged", 30, 25, 6, seed=3)
    for c_in, c_out in ((1, 1), (2, 3)):
        _check_layer(_layer(conn, c_in, c_out, "relu"), 70, "relu", rng)


def test_large_input_prefetch_path(variant, rng):
    # gathered rows larger than the kernels' L2 budget switch on software prefetching
    conn = sf.Connectivity.random(2600, 40, 5, seed=0)
    _check_layer(_layer(conn, 1, 1, "relu"), 112, "relu", rng)


def test_large_batch_slabs(variant, rng):
    # batches over 1024 columns are cut into slabs
    conn = sf.Connectivity.random(9, 6, 3, seed=0)
    _check_layer(_layer(conn, 1, 2, "relu"), 1100, "relu", rng)


@pytest.mark.parametrize("conn_case", [("random", 120, 300, 9), ("ragged", 120, 200, 12),
                                       ("partitions", 120, 300, 7)], ids=str)
def test_bit_identical_for_any_thread_count(variant, conn_case, rng):
    conn = make_connectivity(*conn_case, seed=1)
    for c_in, c_out, batch in ((1, 1, 77), (2, 3, 40)):
        layer = _layer(conn, c_in, c_out, "relu")
        # above the kernels' parallel threshold, so 2 and 3 threads really split the rows
        assert conn.nnz * c_in * c_out * batch >= _engine.PARALLEL_MIN_WORK
        x = rng.standard_normal((batch, conn.n_in, c_in)).astype(np.float32)
        results = []
        for n in (1, 2, 3):
            y = layer.forward(x, n_threads=n)
            g = layer.backward(x, np.cos(y), y, n_threads=n)
            results.append((y, g.input, g.weight, g.bias))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert np.array_equal(a, b)


def test_misaligned_feature_major_arrays(variant, rng):
    conn = sf.Connectivity.random(30, 20, 6, seed=0)
    layer = _layer(conn, 1, 2, None)
    batch = 48
    x = rng.standard_normal((batch, 30, 1)).astype(np.float32)
    buf = np.empty(30 * batch + 1, np.float32)
    xt = buf[1:].reshape(30, 1, batch)  # 4 bytes past the allocation: not 64-byte aligned
    xt[...] = np.transpose(x, (1, 2, 0))
    y = layer.forward_fm(xt)
    y_ref = ref.fanin_forward(x, conn, layer.weight, layer.bias)
    assert rel_err(np.transpose(y, (2, 0, 1)), y_ref) <= TOL


def test_transpose_every_block_remainder(variant, rng):
    for rows, cols in ((1, 1), (7, 9), (8, 8), (33, 65), (64, 31), (100, 257)):
        a = rng.standard_normal((rows, cols)).astype(np.float32)
        xt = sf.to_feature_major(a)
        assert np.array_equal(xt[:, 0, :], a.T)
        assert np.array_equal(sf.from_feature_major(xt, squeeze_channels=True), a)


def test_relu_backward_transpose_every_block_remainder(variant, rng):
    # the public backward of a ReLU layer masks and transposes dy in one pass, y > 0 ? dy : 0:
    # bit for bit the feature-major path's mask (NaN in y gives 0, dy's NaN and -0.0 pass)
    for rows, cols in ((1, 1), (7, 9), (8, 8), (33, 65), (64, 31), (100, 257), (600, 500)):
        dy = rng.standard_normal((rows, cols)).astype(np.float32)
        y = rng.standard_normal((rows, cols)).astype(np.float32)
        y.flat[::7], y.flat[::11], dy.flat[::13], dy.flat[::17] = 0.0, np.nan, np.nan, -0.0
        want = np.empty((cols, rows), np.float32)
        _kernels.relu_backward(want.reshape(-1), np.ascontiguousarray(dy.T).reshape(-1),
                               np.ascontiguousarray(y.T).reshape(-1), 1)
        assert np.array_equal(want.view(np.uint32), np.where(y > 0, dy, np.float32(0)).T.view(
            np.uint32))
        for n in (1, 2, 3):  # 600 x 500 is split across the threads
            got = np.full((cols, rows), 7.0, np.float32)
            _kernels.relu_backward_transpose(got.reshape(-1), dy.reshape(-1), y.reshape(-1),
                                             rows, cols, n)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_variant_names_and_setter():
    assert _kernels.CPU_VARIANTS == ("generic", "avx2", "avx512")
    assert _kernels.cpu_variant() in VARIANTS
    assert VARIANTS[0] == "generic"
    with pytest.raises(ValueError):
        _kernels.set_cpu_variant("sse9")


@pytest.mark.parametrize("value,expect", [("generic", "generic"), ("bogus", None)])
def test_env_var_caps_the_variant(value, expect, tmp_path):
    code = "import sparsefan._kernels as k; print(k.cpu_variant())"
    env = dict(os.environ, SPARSEFAN_CPU=value)
    # run outside the source tree, so the installed package is imported
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    if expect is None:
        assert "SPARSEFAN_CPU" in out.stderr
        assert out.stdout.strip() == VARIANTS[-1]
    else:
        assert out.stdout.strip() == expect


@pytest.mark.parametrize("batch", [1, 5, 37, 130])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (3, 2), (2, 17)], ids=str)
def test_input_gradient_overwrite_and_accumulate(variant, batch, c_in, c_out, rng):
    # accumulate=False must not read dx (NaN there would show), accumulate=True adds to it
    from sparsefan import _kernels
    conn = make_connectivity("ragged", 20, 15, 4, seed=batch)
    layer = _layer(conn, c_in, c_out, None)
    dy = rng.standard_normal((conn.n_out, c_out, batch)).astype(np.float32)
    t = conn.transpose()
    want = ref.fanin_backward(np.zeros((batch, conn.n_in, c_in)), conn, layer.weight,
                              layer.bias, np.transpose(dy, (2, 0, 1)))[0]
    want = np.transpose(want, (1, 2, 0))
    for accumulate, start in ((False, np.nan), (True, 1.0)):
        dx = np.full((conn.n_in, c_in, batch), start, np.float32)
        _kernels.fanin_backward_input(dx.reshape(-1), dy.reshape(-1), layer.weight.reshape(-1),
                                      t.indptr, t.rows, t.slots, c_in, c_out, batch, 1,
                                      accumulate=accumulate)
        expect = want + (1.0 if accumulate else 0.0)
        assert rel_err(dx, expect) <= TOL


# the input gradient carried through the ReLU that produced the layer's input, masked in the
# kernel's registers (sf_fanin_backward_input_relu): every tile remainder, bit for bit the
# kernel followed by the ReLU's own backward pass, and the reference within TOL
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (1, 3), (3, 1), (2, 4), (5, 3), (4, 9)],
                         ids=lambda v: str(v))
def test_input_gradient_through_relu(variant, batch, c_in, c_out, rng):
    conn = make_connectivity("ragged", 13, 11, 4, seed=batch + c_in)
    layer = _layer(conn, c_in, c_out, None)
    x = np.maximum(rng.standard_normal((conn.n_in, c_in, batch)), 0).astype(np.float32)
    x.reshape(-1)[::7] = np.nan  # a NaN input is not > 0: its gradient is 0, as in the ReLU's
    dy = rng.standard_normal((conn.n_out, c_out, batch)).astype(np.float32)
    t = conn.transpose()
    args = (dy.reshape(-1), layer.weight.reshape(-1), t.indptr, t.rows, t.slots, c_in, c_out,
            batch, 2)
    fused = np.full(x.shape, 7.0, np.float32)  # overwritten, never accumulated into
    _kernels.fanin_backward_input(fused.reshape(-1), *args, relu_x=x.reshape(-1))
    two = np.empty_like(x)
    _kernels.fanin_backward_input(two.reshape(-1), *args, accumulate=False)
    _kernels.relu_backward(two.reshape(-1), two.reshape(-1), x.reshape(-1), 2)
    np.testing.assert_array_equal(fused, two)
    dx = ref.fanin_backward(np.nan_to_num(x).transpose(2, 0, 1), conn, layer.weight,
                            layer.bias, dy.transpose(2, 0, 1), None)[0].transpose(1, 2, 0)
    assert rel_err(fused, np.where(x > 0, dx, 0.0)) <= TOL
    assert (fused[~(x > 0)] == 0).all()
