"""The C kernels against the float64 reference, on every variant; and the reference against
central finite differences."""
import numpy as np
import pytest

import sparsefan as sf
from sparsefan import _engine
from sparsefan import reference as ref

from helpers import TOL, layer_with_bias, make_connectivity, numeric_grad, rel_err

# (scheme, n_in, n_out, k): k = 1, k = n_in, n_out = 1, ragged rows, every scheme
CONNECTIVITIES = [
    ("random", 30, 40, 5),
    ("random", 30, 20, 1),
    ("random", 17, 9, 17),  # k = n_in
    ("random", 25, 1, 6),  # n_out = 1
    ("partitions", 36, 50, 7),  # 7 does not divide 36: straddling groups
    ("partitions", 36, 24, 6),
    ("gaussian", 48, 60, 9),
    ("identity", 20, 20, 1),
    ("dense", 12, 5, 12),
    ("ragged", 30, 25, 4),  # includes empty rows
]
SHAPES = [  # (batch, c_in, c_out): batch 1, batch below / at / across the 64-wide tile
    (1, 1, 1),
    (7, 1, 1),
    (64, 1, 1),
    (131, 1, 1),
    (5, 3, 2),
    (70, 2, 4),
]


def _ids(case):
    return "-".join(str(v) for v in case)


def _layer(conn_case, c_in, c_out, activation, seed=0):
    return layer_with_bias(make_connectivity(*conn_case, seed=seed), c_in, c_out, activation,
                           seed)


@pytest.mark.parametrize("activation", [None, "relu"], ids=["linear", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
@pytest.mark.parametrize("conn_case", CONNECTIVITIES, ids=_ids)
def test_forward_and_gradients_match_reference(conn_case, shape, activation, rng):
    batch, c_in, c_out = shape
    layer = _layer(conn_case, c_in, c_out, activation)
    x = rng.standard_normal((batch, layer.n_in, c_in)).astype(np.float32)
    y = layer.forward(x)
    y_ref = ref.fanin_forward(x, layer.connectivity, layer.weight, layer.bias, activation)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= TOL

    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = layer.backward(x, dy, y)
    dx, dW, db = ref.fanin_backward(x, layer.connectivity, layer.weight, layer.bias, dy,
                                    activation)
    assert rel_err(g.input, dx) <= TOL
    assert rel_err(g.weight, dW) <= TOL
    assert rel_err(g.bias, db) <= TOL


@pytest.mark.parametrize("blas", [True, False], ids=["blas", "kernel"])
@pytest.mark.parametrize("conn_case", [("random", 25, 1, 6), ("dense", 12, 1, 12)], ids=_ids)
def test_single_unit_layers_both_paths(conn_case, blas, rng):
    """Layers with one output unit run as one GEMM by default; the C kernel must agree too."""
    layer = _layer(conn_case, 3, 5, "relu")
    layer.blas_single_unit = blas
    assert _engine.uses_blas(layer) == blas
    x = rng.standard_normal((33, layer.n_in, 3)).astype(np.float32)
    y = layer.forward(x)
    assert rel_err(y, ref.fanin_forward(x, layer.connectivity, layer.weight, layer.bias,
                                        "relu")) <= TOL
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = layer.backward(x, dy, y)
    for got, want in zip(g, ref.fanin_backward(x, layer.connectivity, layer.weight, layer.bias,
                                               dy, "relu")):
        assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("conn_case", CONNECTIVITIES, ids=_ids)
def test_bit_identical_for_any_thread_count(conn_case, rng):
    layer = _layer(conn_case, 2, 3, "relu")
    # big enough to cross the kernels' parallel threshold
    x = rng.standard_normal((300, layer.n_in, 2)).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        y = layer.forward(x, n_threads=n)
        dy = np.cos(y)
        g = layer.backward(x, dy, y, n_threads=n)
        results.append((y, g.input, g.weight, g.bias))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_two_dimensional_io_when_single_channel(rng):
    layer = sf.FanIn(sf.Connectivity.random(20, 10, 3, seed=0), seed=0)
    x = rng.standard_normal((4, 20)).astype(np.float32)
    y = layer.forward(x)
    assert y.shape == (4, 10)
    g = layer.backward(x, np.ones_like(y))
    assert g.input.shape == (4, 20)
    y3 = layer.forward(x[:, :, None].copy())
    assert y3.shape == (4, 10, 1)
    assert np.array_equal(y3[:, :, 0], y)


def test_backward_accumulates_into_given_buffers(rng):
    layer = sf.FanIn(sf.Connectivity.random(16, 8, 4, seed=0), 1, 2, seed=0)
    xt = rng.standard_normal((16, 1, 9)).astype(np.float32)
    dyt = rng.standard_normal((8, 2, 9)).astype(np.float32)
    once = layer.backward_fm(xt, dyt)
    gw = np.ones(layer.weight_shape, np.float32)
    gb = np.ones(layer.bias_shape, np.float32)
    gi = np.ones(xt.shape, np.float32)
    twice = layer.backward_fm(xt, dyt, grad_input=gi, grad_weight=gw, grad_bias=gb)
    assert twice.weight is gw and twice.bias is gb and twice.input is gi
    np.testing.assert_allclose(gw, once.weight + 1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gb, once.bias + 1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gi, once.input + 1, rtol=1e-6, atol=1e-6)


def test_need_input_grad_false_skips_input_gradient(rng):
    layer = sf.FanIn(sf.Connectivity.random(16, 8, 4, seed=0), seed=0)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    g = layer.backward(x, np.ones((3, 8), np.float32), need_input_grad=False)
    assert g.input is None and g.weight.shape == (32, 1, 1)


def test_feature_major_round_trip(rng):
    x = rng.standard_normal((37, 50, 3)).astype(np.float32)
    xt = sf.to_feature_major(x)
    assert xt.shape == (50, 3, 37)
    assert np.array_equal(xt, np.transpose(x, (1, 2, 0)))
    assert np.array_equal(sf.from_feature_major(xt), x)
    x2 = rng.standard_normal((5, 11)).astype(np.float32)
    assert np.array_equal(sf.from_feature_major(sf.to_feature_major(x2), squeeze_channels=True),
                          x2)


def test_nan_propagates_when_not_checked():
    conn = sf.Connectivity.from_rows(3, [[0], [1], [2]])
    w = np.ones((3, 1, 1), np.float32)
    layer = sf.FanIn(conn, weight=w, activation="relu")
    x = np.array([[np.nan, -1.0, 2.0]], np.float32)
    y = layer.forward(x, check_finite=False)
    assert np.isnan(y[0, 0]) and y[0, 1] == 0 and y[0, 2] == 2
    assert np.isnan(ref.fanin_forward(x[:, :, None], conn, w, layer.bias, "relu")[0, 0, 0])


# -- the reference against central finite differences ------------------------------------------

@pytest.mark.parametrize("activation", [None, "relu"], ids=["linear", "relu"])
@pytest.mark.parametrize("conn_case", [("random", 9, 6, 3), ("ragged", 8, 5, 2),
                                       ("gaussian", 12, 4, 4), ("dense", 5, 3, 5)], ids=_ids)
def test_reference_gradients_match_finite_differences(conn_case, activation):
    rng = np.random.default_rng(7)
    conn = make_connectivity(*conn_case)
    c_in, c_out, batch = 2, 3, 4
    x = rng.standard_normal((batch, conn.n_in, c_in))
    W = rng.standard_normal((conn.nnz, c_in, c_out))
    b = rng.standard_normal((conn.n_out, c_out))
    dy = rng.standard_normal((batch, conn.n_out, c_out))

    def loss():
        return float(np.sum(dy * ref.fanin_forward(x, conn, W, b, activation)))

    dx, dW, db = ref.fanin_backward(x, conn, W, b, dy, activation)
    # ReLU kinks: a random draw sits far from z = 0 at eps = 1e-6 with overwhelming probability
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dW, numeric_grad(loss, W), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(loss, b), rtol=1e-5, atol=1e-7)


def test_openmp_flag_matches_the_build():
    """CI builds once with and once without OpenMP and says which via SPARSEFAN_EXPECT_OPENMP."""
    import os

    assert isinstance(sf.openmp_enabled(), bool)
    expected = os.environ.get("SPARSEFAN_EXPECT_OPENMP")
    if expected is None:
        pytest.skip("SPARSEFAN_EXPECT_OPENMP not set")
    assert sf.openmp_enabled() == (expected == "1")
    if not sf.openmp_enabled():
        assert sf.resolve_n_threads(4) == 1


def test_relu_backward_in_place_gives_the_same_gradients(rng):
    layer = _layer(("random", 30, 40, 5), 2, 3, "relu")
    xt = rng.standard_normal((30, 2, 9)).astype(np.float32)
    yt = layer.forward_fm(xt)
    dyt = rng.standard_normal(yt.shape).astype(np.float32)
    want = layer.backward_fm(xt, dyt, yt)
    mine = dyt.copy()
    got = layer.backward_fm(xt, mine, yt, overwrite_dyt=True)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    assert np.array_equal(mine, np.where(yt > 0, dyt, 0))  # masked in place
    frozen = dyt.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="dyt must be writable"):
        layer.backward_fm(xt, frozen, yt, overwrite_dyt=True)
