"""The int8 C export: the compiled code computes the engine's int8 logits bit for bit (and the
NumPy reference's), and stays close to the float32 engine (tolerances stated below)."""
import numpy as np
import pytest

from _export_helpers import build_harness, compiler, inputs, run_harness, trained_mnist, zoo
from sparsefan.export import export_c, quantize_int8
from sparsefan.export.quantize import round_half_away

ZOO = zoo()

needs_cc = pytest.mark.skipif(compiler("cc") is None, reason="no C compiler (cc)")


@needs_cc
@pytest.mark.parametrize("key", list(ZOO))
def test_int8_c_matches_the_engine_and_stays_near_float(tmp_path, key):
    net = ZOO[key]
    x = inputs(net, 300 if net.n_in < 500 else 100)
    q = quantize_int8(net, inputs(net, 200, seed=1))
    e = export_c(q, tmp_path, "net")
    scores, logits, classes = run_harness(build_harness(e), net, x)
    # the C runtime computes exactly what the engine's int8 kernels and the reference compute
    engine = q.unit_logits(x, n_threads=2)
    assert np.array_equal(logits, engine)
    assert np.array_equal(engine, q.reference_unit_logits(x))
    np.testing.assert_array_equal(classes, q.predict(x))
    ref = q.scores(x)
    if net.aggregate == "mean_prob":
        np.testing.assert_allclose(np.exp(scores), np.exp(ref), rtol=0, atol=1e-5)
    else:
        assert np.abs(scores - ref).max() <= 1e-4
    # and stays near the float32 network: these random, untrained networks on uniform noise
    # are a hard case (no structure, small margins); stated tolerance: logits within 15% of
    # their range, and at least 90% of the predictions agree
    z = net.unit_logits(x)
    assert np.abs(logits - z).max() <= 0.15 * np.abs(z).max()
    assert (classes == net.predict(x)).mean() >= 0.90


@needs_cc
def test_trained_mnist_int8_accuracy(tmp_path):
    """A model trained on MNIST loses at most 0.5 points of test accuracy in int8."""
    net, xtr, _, xte, yte = trained_mnist()
    q = quantize_int8(net, xtr[:500])
    acc_f = (net.predict(xte) == yte).mean()
    acc_q = (q.predict(xte) == yte).mean()
    assert acc_f > 0.8  # it did learn
    assert acc_f - acc_q <= 0.005, (acc_f, acc_q)
    # logits: within 2% of their range on real images
    z, zq = net.unit_logits(xte[:300]), q.unit_logits(xte[:300])
    assert np.abs(z - zq).max() <= 0.02 * np.abs(z).max()
    # the compiled int8 code agrees with the engine on real images too, bit for bit, at -O1 and
    # -O2 (ISO C: no contraction into fused multiply-adds)
    e = export_c(q, tmp_path, "mnist_int8")
    for opt in ("-O1", "-O2"):
        scores, logits, classes = run_harness(build_harness(e, opt=opt), net, xte[:300])
        assert np.array_equal(logits, zq)
        np.testing.assert_array_equal(classes, q.predict(xte[:300]))


def test_weight_quantization_is_per_unit_and_channel():
    net = ZOO["hierarchy"]
    q = quantize_int8(net, inputs(net, 20))
    for layer, ql in zip(net.layers, q.layers):
        row = layer.connectivity.row_of_connection()
        back = ql.qweight.astype(np.float64) * ql.weight_scale[row][:, None, :]
        step = ql.weight_scale[row][:, None, :]
        assert np.all(np.abs(back - layer.weight) <= 0.5 * step + 1e-12)
        # every (unit, channel) with a nonzero weight uses the full int8 range
        peak = np.zeros(ql.weight_scale.shape)
        np.maximum.at(peak, row, np.abs(ql.qweight).max(axis=1))
        assert set(np.unique(peak)) <= {0, 127}


def test_round_half_away():
    v = np.array([0.5, 1.5, -0.5, -1.5, 2.49, -2.51, 200, -200, np.nan, 126.6], np.float32)
    np.testing.assert_array_equal(round_half_away(v), [1, 2, -1, -2, 2, -3, 127, -127, 0, 127])


def test_calibration_checks():
    net = ZOO["direct"]
    with pytest.raises(TypeError, match="uint8"):
        quantize_int8(net, np.zeros((5, 144), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        quantize_int8(net, np.zeros((5, 10), np.float32))
    with pytest.raises(ValueError, match="at least one"):
        quantize_int8(net, np.zeros((0, 144), np.float32))
    with pytest.raises(ValueError, match="percentile"):
        quantize_int8(net, inputs(net, 5), percentile=0)
    with pytest.raises(TypeError, match="Network"):
        quantize_int8("net", inputs(net, 5))


def test_percentile_calibration_clips_less_than_max():
    net = ZOO["direct"]
    x = inputs(net, 200)
    a, b = quantize_int8(net, x), quantize_int8(net, x, percentile=99.0)
    assert all(lb.in_scale <= la.in_scale for la, lb in zip(a.layers, b.layers))
