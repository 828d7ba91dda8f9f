"""int8 inference in the engine: the kernels (every CPU variant, both packed layouts, every
tile remainder) against the readable NumPy twin in sparsefan.reference, bit for bit; the same
for any thread count; bad arguments."""
import copy
import itertools
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import _engine, _kernels, reference
from sparsefan.layers import FanIn
from sparsefan.network import Network
from sparsefan.quantized import QuantizedLayer, QuantizedNetwork

VARIANTS = _kernels.supported_cpu_variants()
LAYOUTS = [("wide", "wide"), ("wide", "dot"), ("dot", "wide"), ("dot", "dot")]


@pytest.fixture(params=VARIANTS)
def variant(request):
    previous = _kernels.set_cpu_variant(request.param)
    yield request.param
    _kernels.set_cpu_variant(previous)


def two_layer(n_in, n_units, k1, c1, k2, act, seed=0, n_classes=3, ragged=False):
    """FanIn(n_in -> n_units, fan-in k1, 1 -> c1, act) -> FanIn(n_units -> n_units, fan-in k2,
    c1 -> n_classes); random nonzero biases."""
    r = np.random.default_rng(seed)
    if ragged:
        rows = [r.choice(n_in, size=r.integers(0, k1 + 1), replace=False) for _ in range(n_units)]
        conn1 = sf.Connectivity.from_rows(n_in, rows)
    else:
        conn1 = sf.Connectivity.random(n_in, n_units, k1, seed=seed)
    conn2 = sf.Connectivity.random(n_units, n_units, k2, seed=seed + 1)
    layers = [FanIn(conn1, 1, c1, act, seed=seed), FanIn(conn2, c1, n_classes, seed=seed + 1)]
    for layer in layers:
        layer.bias = (0.3 * r.standard_normal(layer.bias_shape)).astype(np.float32)
    return Network(layers, n_classes)


def check_all_layouts(q, x):
    """Every forced layout gives the reference's logits, bit for bit (and so does the default
    plan, through the public call)."""
    want = reference.int8_network_unit_logits(x, q)
    got = q.unit_logits(x, n_threads=1)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)
    for layouts in itertools.product(("wide", "dot"), repeat=len(q.layers)):
        plan = _engine.int8_plan(q, layouts=layouts)
        z = _engine.int8_forward(plan, x, 1).reshape(want.shape)
        assert np.array_equal(z, want), layouts


# output channels around every block (8) and tile (4 blocks = 32) width; fan-in x channels
# around the 4-term groups and the 32-term rows
C_OUTS = [1, 2, 3, 4, 7, 8, 9, 12, 16, 17, 31, 32, 33, 40, 65]
FAN_INS = [1, 2, 3, 4, 5, 9, 31, 32, 33]


@pytest.mark.parametrize("c1", C_OUTS)
@pytest.mark.parametrize("k", FAN_INS)
def test_kernels_match_the_reference_at_every_remainder(variant, k, c1, rng):
    # layer 1 has k * 1 terms per unit and c1 channels; layer 2 has 2 * c1 terms and 3
    net = two_layer(40, 11, k, c1, 2, "relu", seed=k * 100 + c1)
    calib = rng.random((30, 40), dtype=np.float32)
    q = sf.quantize(net, calib)
    for batch in (1, 3, 8, 9, 17):
        check_all_layouts(q, rng.random((batch, 40), dtype=np.float32))


@pytest.mark.parametrize("c1", [1, 5, 8, 13, 32, 35])
def test_signed_activations(variant, c1, rng):
    # negative inputs and a linear hidden layer: the signed products |a| * sign(a) w
    net = two_layer(30, 9, 7, c1, 3, None, seed=c1)
    q = sf.quantize(net, rng.uniform(-1, 1, (40, 30)).astype(np.float32))
    for batch in (1, 2, 9):
        x = rng.uniform(-1, 1, (batch, 30)).astype(np.float32)
        check_all_layouts(q, x)
        # inputs beyond the calibrated range clamp to +-127
        check_all_layouts(q, 3 * x)


@pytest.mark.parametrize("n_in", [65536, 65537])
def test_index_widths(variant, n_in, rng):
    # up to 65,536 inputs the AVX2 kernels read a uint16 copy of the index table, above it the
    # int32 table; both reach the last input
    net = two_layer(n_in, 7, 5, 9, 2, "relu", seed=n_in)
    conn = net.layers[0].connectivity
    rows = [[0, n_in - 1, n_in // 2]] + [list(conn.indices[conn.indptr[j]:conn.indptr[j + 1]])
                                         for j in range(1, conn.n_out)]
    net.layers[0] = FanIn(sf.Connectivity.from_rows(n_in, rows), 1, 9, "relu", seed=1)
    q = sf.quantize(net, rng.random((3, n_in), dtype=np.float32))
    check_all_layouts(q, rng.random((2, n_in), dtype=np.float32))


@pytest.mark.parametrize("n_units", [65536, 65537])
def test_index_widths_of_a_channel_layer(variant, n_units, rng):
    # a second layer of 4 channels per connection, through either index width
    net = two_layer(20, n_units, 3, 4, 2, "relu", seed=n_units)
    q = sf.quantize(net, rng.random((3, 20), dtype=np.float32))
    x = rng.random((2, 20), dtype=np.float32)
    assert np.array_equal(q.unit_logits(x, n_threads=1), reference.int8_network_unit_logits(x, q))


def test_ragged_and_empty_rows(variant, rng):
    net = two_layer(25, 14, 6, 10, 2, "relu", seed=4, ragged=True)
    assert (net.layers[0].connectivity.fan_in() == 0).any()
    q = sf.quantize(net, rng.random((20, 25), dtype=np.float32))
    check_all_layouts(q, rng.random((10, 25), dtype=np.float32))


def test_percentile_calibration_clips(variant, rng):
    net = two_layer(36, 12, 9, 8, 3, "relu", seed=7)
    q = sf.quantize(net, rng.random((50, 36), dtype=np.float32), percentile=90.0)
    check_all_layouts(q, rng.random((12, 36), dtype=np.float32))


def test_every_builder(variant, rng):
    for net in (sf.builders.direct((8, 8), 3, n_units=20, fan_in=9, hidden=(6, 4), seed=1),
                sf.builders.hierarchy((8, 8), 3, levels=3, n_units=20, channels=(3, 5, 4),
                                      head_hidden=(5,), seed=2),
                sf.builders.partition_ensemble((8, 8), 3, part_size=5, hidden=(6,)),
                sf.builders.dense_mlp((8, 8), 3, hidden=(40, 9))):
        q = sf.quantize(net, rng.random((30, 64), dtype=np.float32))
        x = rng.random((9, 64), dtype=np.float32)
        assert np.array_equal(q.unit_logits(x), reference.int8_network_unit_logits(x, q))


def handmade(qweights, conns, acts, in_scales, bias_scale=0.5, seed=0):
    """A QuantizedNetwork from given int8 weights (no calibration)."""
    r = np.random.default_rng(seed)
    layers = []
    for i, (qw, conn, act) in enumerate(zip(qweights, conns, acts)):
        c_out = qw.shape[2]
        ws = r.uniform(0.5, 2.0, (conn.n_out, c_out)).astype(np.float32) / 127
        b = (bias_scale * r.standard_normal((conn.n_out, c_out))).astype(np.float32)
        out = in_scales[i + 1] if i + 1 < len(qweights) else None
        layers.append(QuantizedLayer(conn, qw.shape[1], c_out, act, qw, ws, b, in_scales[i],
                                     out))
    return QuantizedNetwork(layers, qweights[-1].shape[2])


def test_extreme_int8_values_do_not_saturate(variant, rng):
    # every weight and activation at +-127: pairs of products reach 2 * 127 * 127 = 32258, the
    # largest sum the AVX2 int16 step ever sees
    conn1 = sf.Connectivity.random(64, 10, 40, seed=0)
    conn2 = sf.Connectivity.random(10, 10, 8, seed=1)
    w1 = (127 * rng.choice([-1, 1], (conn1.nnz, 1, 9))).astype(np.int8)
    w2 = (127 * rng.choice([-1, 1], (conn2.nnz, 9, 3))).astype(np.int8)
    for act in (None, "relu"):
        # in_scale 1/127: inputs of +-1 quantize to +-127; a tiny hidden scale clamps every
        # hidden activation to +-127 as well
        q = handmade([w1, w2], [conn1, conn2], [act, None], [1 / 127, 1e-6])
        for x in (rng.choice([-1.0, 1.0], (9, 64)).astype(np.float32),
                  np.ones((9, 64), np.float32)):
            check_all_layouts(q, x)
        z = q.unit_logits(np.ones((1, 64), np.float32))
        assert np.isfinite(z).all()


def test_sums_at_the_int32_limit_stay_exact(variant):
    # 133,000 terms of 127 * 127: a sum of 2,145,157,000, just below 2**31 - 1
    n = 133_000
    conn1 = sf.Connectivity.from_rows(1, [[0]])
    ident = sf.Connectivity.identity(1)
    w1 = np.full((1, 1, n), 127, np.int8)
    w2 = np.full((1, n, 2), 127, np.int8)
    w2[0, ::2, 1] = -127
    q = handmade([w1, w2], [conn1, ident], ["relu", None], [1 / 127, 1e-9])
    x = np.ones((1, 1), np.float32)
    want = reference.int8_network_unit_logits(x, q)
    assert np.array_equal(q.unit_logits(x), want)
    for layouts in LAYOUTS:
        plan = _engine.int8_plan(q, layouts=layouts)
        assert np.array_equal(_engine.int8_forward(plan, x, 1).reshape(want.shape), want)
    with pytest.raises(ValueError, match="overflow int32"):
        QuantizedLayer(ident, n + 200, 2, None, np.full((1, n + 200, 2), 127, np.int8),
                       np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32), 1.0, None)


def test_weights_of_minus_128_are_refused():
    conn = sf.Connectivity.identity(2)
    qw = np.zeros((2, 1, 2), np.int8)
    qw[0, 0, 0] = -128
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        QuantizedLayer(conn, 1, 2, None, qw, np.ones((2, 2), np.float32),
                       np.zeros((2, 2), np.float32), 1.0, None)


def big_net(seed=0):
    """Above the kernels' parallel threshold: 2 and 3 threads really split the units."""
    net = two_layer(784, 300, 40, 16, 3, "relu", seed=seed)
    return net


@pytest.mark.parametrize("batch", [1, 5, 19])
def test_bit_identical_for_any_thread_count(variant, batch, rng):
    net = big_net()
    q = sf.quantize(net, rng.random((40, 784), dtype=np.float32))
    x = rng.random((batch, 784), dtype=np.float32)
    results = [q.unit_logits(x, n_threads=n) for n in (1, 2, 3)]
    for other in results[1:]:
        assert np.array_equal(results[0], other)
    if batch == 5:
        assert np.array_equal(results[0], reference.int8_network_unit_logits(x, q))
    assert np.array_equal(q.predict(x, n_threads=2), q.predict(x, n_threads=1))


def test_int8_variant_follows_the_float_variant(variant):
    assert _kernels.int8_variant() == ("generic" if variant == "generic" else "avx2")
    assert _engine.int8_variant() == _kernels.int8_variant()


def test_sparsefan_cpu_generic_selects_the_generic_int8_kernels(tmp_path):
    code = "import sparsefan._kernels as k; print(k.int8_variant())"
    env = dict(os.environ, SPARSEFAN_CPU="generic")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "generic"


def test_predict_scores_and_probabilities(rng):
    net = two_layer(36, 12, 9, 8, 3, "relu", seed=3)
    q = sf.quantize(net, rng.random((50, 36), dtype=np.float32))
    x = rng.random((2500, 36), dtype=np.float32)
    Z = reference.int8_network_unit_logits(x, q)
    S = sf.aggregate.scores(Z, "mean_logits")
    # chunked (batch_size) and whole give the same numbers
    np.testing.assert_array_equal(q.scores(x), S)
    np.testing.assert_array_equal(q.scores(x, batch_size=7), S)
    np.testing.assert_array_equal(q.predict(x), S.argmax(axis=1))
    P = q.predict_proba(x)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(P.argmax(axis=1), q.predict(x))
    assert q.predict(x[:0]).shape == (0,)
    assert q.unit_logits(x[:0]).shape == (q.n_units, 3, 0)


def test_every_aggregate(rng):
    for aggregate in ("mean_logits", "mean_prob", "vote"):
        net = sf.builders.direct((6, 6), 3, n_units=15, fan_in=6, hidden=(4,),
                                 aggregate=aggregate, seed=2)
        q = sf.quantize(net, rng.random((30, 36), dtype=np.float32))
        x = rng.random((20, 36), dtype=np.float32)
        Z = reference.int8_network_unit_logits(x, q)
        with np.errstate(divide="ignore"):
            np.testing.assert_array_equal(q.scores(x), sf.aggregate.scores(Z, aggregate))
        np.testing.assert_array_equal(q.predict_proba(x),
                                      sf.aggregate.probabilities(Z, aggregate))
        # (batch, *input_shape) inputs too
        np.testing.assert_array_equal(q.predict(x.reshape(20, 6, 6)), q.predict(x))


def test_overflowing_outputs_raise(rng):
    conn = sf.Connectivity.random(8, 4, 3, seed=0)
    qw = np.full((conn.nnz, 1, 2), 127, np.int8)
    q = handmade([qw], [conn], [None], [3e37])  # multiplier = 3e37 * ~0.01: float32 inf
    with pytest.raises(FloatingPointError, match="overflowed"):
        q.predict(np.full((2, 8), 1e38, np.float32))


def test_pickle_and_deepcopy(rng):
    net = two_layer(36, 12, 9, 8, 3, "relu", seed=5)
    q = sf.quantize(net, rng.random((20, 36), dtype=np.float32))
    x = rng.random((4, 36), dtype=np.float32)
    z = q.unit_logits(x)  # builds the plan
    for clone in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
        assert np.array_equal(clone.unit_logits(x), z)
        assert not clone.layers[0].qweight.flags.writeable


def test_layers_are_read_only(rng):
    q = sf.quantize(two_layer(20, 6, 4, 3, 2, "relu"), rng.random((5, 20), dtype=np.float32))
    layer = q.layers[0]
    with pytest.raises(ValueError):
        layer.qweight[0, 0, 0] = 1
    with pytest.raises(ValueError):
        layer.bias[0, 0] = 1.0
    with pytest.raises(AttributeError, match="read-only"):
        layer.in_scale = 2.0
    assert isinstance(q.layers, tuple)


def test_quantize_is_the_export_quantization(rng):
    from sparsefan.export import quantize_int8

    net = two_layer(20, 6, 4, 3, 2, "relu")
    x = rng.random((15, 20), dtype=np.float32)
    a, b = sf.quantize(net, x), quantize_int8(net, x)
    assert type(a) is type(b)
    for la, lb in zip(a.layers, b.layers):
        assert np.array_equal(la.qweight, lb.qweight) and la.in_scale == lb.in_scale
        assert np.array_equal(la.multiplier, lb.multiplier)


# -- bad arguments ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def q():
    net = two_layer(20, 6, 4, 3, 2, "relu")
    return sf.quantize(net, np.random.default_rng(0).random((10, 20), dtype=np.float32))


@pytest.mark.parametrize("x,exc,match", [
    (np.zeros((2, 20)), TypeError, "x must have dtype float32"),
    (np.zeros((2, 19), np.float32), ValueError, "x must have shape"),
    (np.zeros(20, np.float32), ValueError, "x must have shape"),
    ([[0.0] * 20], TypeError, "x must be a numpy.ndarray"),
    (np.full((2, 20), np.nan, np.float32), ValueError, "x contains NaN"),
    (np.zeros((20, 2), np.float32).T, ValueError, "x must be C-contiguous"),
    (np.zeros((2, 40), np.float32)[:, ::2], ValueError, "x must be C-contiguous"),
])
def test_bad_inputs_name_the_argument(q, x, exc, match):
    for method in (q.predict, q.predict_proba, q.scores, q.unit_logits):
        with pytest.raises(exc, match=match):
            method(x)


def test_bad_thread_counts_and_batch_sizes(q):
    x = np.zeros((2, 20), np.float32)
    with pytest.raises(ValueError, match="n_threads"):
        q.predict(x, n_threads=0)
    with pytest.raises(TypeError, match="n_threads"):
        q.unit_logits(x, n_threads=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        q.predict(x, batch_size=0)


def test_bad_quantize_arguments(rng):
    net = two_layer(20, 6, 4, 3, 2, "relu")
    with pytest.raises(TypeError, match="Network"):
        sf.quantize("net", rng.random((5, 20), dtype=np.float32))
    with pytest.raises(ValueError, match="calibration must have shape"):
        sf.quantize(net, np.zeros((5, 21), np.float32))
    with pytest.raises(TypeError, match="calibration must have dtype"):
        sf.quantize(net, np.zeros((5, 20)))
    with pytest.raises(TypeError, match="uint8"):
        sf.quantize(net, np.zeros((5, 20), np.uint8))
    with pytest.raises(ValueError, match="calibration contains NaN"):
        sf.quantize(net, np.full((5, 20), np.nan, np.float32))
    with pytest.raises(ValueError, match="at least one"):
        sf.quantize(net, np.zeros((0, 20), np.float32))
    with pytest.raises(ValueError, match="percentile"):
        sf.quantize(net, rng.random((5, 20), dtype=np.float32), percentile=101)
    with pytest.raises(ValueError, match="batch_size"):
        sf.quantize(net, rng.random((5, 20), dtype=np.float32), batch_size=0)
    maxmin = sf.builders.direct((4, 5), 2, n_units=4, fan_in=3, hidden=(2,),
                                activation="maxmin")
    with pytest.raises(ValueError, match="maxmin"):
        sf.quantize(maxmin, rng.random((5, 20), dtype=np.float32))


def test_bad_layers_and_networks(q):
    l0, l1 = q.layers
    conn = l0.connectivity
    good = dict(connectivity=conn, c_in=1, c_out=3, activation="relu", qweight=l0.qweight,
                weight_scale=l0.weight_scale, bias=l0.bias, in_scale=l0.in_scale,
                out_scale=l0.out_scale)
    for change, exc, match in [
        (dict(qweight=l0.qweight.astype(np.int16)), TypeError, "qweight must have dtype int8"),
        (dict(qweight=l0.qweight[:, :, :2].copy()), ValueError, "qweight must have shape"),
        (dict(weight_scale=np.zeros_like(l0.weight_scale)), ValueError, "positive"),
        (dict(weight_scale=np.full_like(l0.weight_scale, np.inf)), ValueError, "weight_scale"),
        (dict(bias=np.full_like(l0.bias, 1e30)), ValueError, "bias"),
        (dict(in_scale=float("nan")), ValueError, "in_scale"),
        (dict(in_scale=-1.0), ValueError, "in_scale"),
        (dict(out_scale="x"), TypeError, "out_scale"),
        (dict(activation="maxmin"), ValueError, "activation"),
        (dict(connectivity="conn"), TypeError, "connectivity"),
    ]:
        with pytest.raises(exc, match=match):
            QuantizedLayer(**{**good, **change})
    with pytest.raises(ValueError, match="out_scale"):
        QuantizedNetwork([QuantizedLayer(**{**good, "out_scale": 2 * l0.out_scale}), l1], 3)
    with pytest.raises(ValueError, match="last layer"):
        QuantizedNetwork([l0], 3)
    with pytest.raises(ValueError, match="n_classes"):
        QuantizedNetwork([l0, l1], 4)
    with pytest.raises(TypeError, match="QuantizedLayer"):
        QuantizedNetwork([l0, "l1"], 3)
    with pytest.raises(ValueError, match="input_shape"):
        QuantizedNetwork([l0, l1], 3, input_shape=(3, 3))
    with pytest.raises(ValueError, match="aggregate"):
        QuantizedNetwork([l0, l1], 3, aggregate="max")
    with pytest.raises(ValueError, match="c_in=1"):
        QuantizedNetwork([l1, l1], 3)
    with pytest.raises(ValueError, match="reads"):
        QuantizedNetwork([l0, l0, l1], 3)
