"""The MaxMin activation: the layer (both paths, every connectivity) against the reference, the
reference against finite differences, networks that train, certificates that hold, exports that
refuse it."""
import numpy as np
import pytest

import sparsefan as sf
from sparsefan import builders, certify, io
from sparsefan import reference as ref
from sparsefan.network import Network
from sparsefan.train import TrainConfig, train

from helpers import TOL, make_connectivity, numeric_grad, rel_err



CONNS = [("random", 30, 40, 5), ("gaussian", 48, 60, 9), ("identity", 20, 20, 1),
         ("dense", 12, 1, 12), ("ragged", 30, 25, 4)]


@pytest.mark.parametrize("blas", [True, False], ids=["blas", "kernel"])
@pytest.mark.parametrize("shape", [(1, 1, 2), (7, 3, 4), (70, 2, 6)], ids=str)
@pytest.mark.parametrize("conn_case", CONNS, ids=str)
def test_maxmin_layer_matches_reference(conn_case, shape, blas, rng, monkeypatch):
    monkeypatch.setattr(sf.FanIn, "blas_single_unit", blas)
    batch, c_in, c_out = shape
    layer = sf.FanIn(make_connectivity(*conn_case), c_in, c_out, activation="maxmin", seed=1)
    layer.bias = rng.standard_normal(layer.bias_shape).astype(np.float32)
    x = rng.standard_normal((batch, layer.n_in, c_in)).astype(np.float32)
    y = layer.forward(x)
    y_ref = ref.fanin_forward(x, layer.connectivity, layer.weight, layer.bias, "maxmin")
    assert rel_err(y, y_ref) <= TOL
    assert (y[..., 0::2] >= y[..., 1::2]).all()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = layer.backward(x, dy)  # no y needed: the pre-activation is recomputed
    dx, dW, db = ref.fanin_backward(x, layer.connectivity, layer.weight, layer.bias, dy,
                                    "maxmin")
    for a, b in ((g.input, dx), (g.weight, dW), (g.bias, db)):
        assert rel_err(a, b) <= TOL


def test_maxmin_reference_against_finite_differences(rng):
    conn = make_connectivity("random", 8, 5, 3)
    x = rng.standard_normal((4, 8, 2))
    w = rng.standard_normal((conn.nnz, 2, 4))
    b = rng.standard_normal((5, 4))
    dy = rng.standard_normal((4, 5, 4))

    def f():
        return float((ref.fanin_forward(x, conn, w, b, "maxmin") * dy).sum())

    dx, dW, db = ref.fanin_backward(x, conn, w, b, dy, "maxmin")
    for arr, g in ((x, dx), (w, dW), (b, db)):
        np.testing.assert_allclose(numeric_grad(f, arr), g, rtol=1e-6, atol=1e-7)


def test_maxmin_needs_even_channels():
    with pytest.raises(ValueError, match="c_out must be even"):
        sf.FanIn(sf.Connectivity.identity(3), 2, 3, activation="maxmin")


NETS = {
    "direct": lambda: builders.direct((6, 6), 3, n_units=12, fan_in=5, hidden=(4, 2),
                                      activation="maxmin", seed=1),
    "hierarchy": lambda: builders.hierarchy((6, 6), 3, levels=2, n_units=10, fan_in=3,
                                            channels=(2, 4), activation="maxmin", seed=2),
    "dense_mlp": lambda: builders.dense_mlp((6, 6), 3, hidden=(6, 4), activation="maxmin",
                                            seed=3),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_maxmin_networks_forward_and_gradient(name, rng):
    net = NETS[name]()
    for layer in net.layers:
        layer.bias = (0.3 * rng.standard_normal(layer.bias_shape)).astype(np.float32)
    x = rng.random((9, 36)).astype(np.float32)
    y = rng.integers(0, 3, 9)
    Z = net.unit_logits(x)
    assert rel_err(Z, ref.network_unit_logits(x, net.layers)) <= TOL
    r = net.loss_and_grad(x, y)
    for i, layer in enumerate(net.layers):
        w = layer.weight.astype(np.float64)

        class L:  # a float64 stand-in for the reference loss
            def __init__(self, l, w):
                self.connectivity, self.weight, self.bias = l.connectivity, w, l.bias
                self.activation = l.activation

        stand = [L(l, l.weight.astype(np.float64)) for l in net.layers]
        stand[i].weight = w
        num = numeric_grad(lambda: ref.network_loss(x, y, stand, "mean_logits"), w, eps=1e-5)
        np.testing.assert_allclose(r.grads[i][0], num, rtol=2e-3, atol=2e-5)


def test_maxmin_certified_training_and_sound_certificates():
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    x = np.clip(y[:, None] / 2 + 0.2 * rng.standard_normal((n, 12)), 0, 1).astype(np.float32)
    net = builders.direct((3, 4), 3, n_units=10, fan_in=4, hidden=(4,), activation="maxmin",
                          seed=1)
    train(net, x, y, TrainConfig(epochs=12, batch_size=32, lr=3e-2, l2_epsilon=0.5),
          progress=False, log=lambda _: None)
    xt, yt = x[:60], y[:60]
    out = net.predict_certified(xt)
    assert np.array_equal(out.classes, net.predict(xt))
    radius = certify.l2_radius(net, xt, yt)
    ok = np.flatnonzero(radius > 0.05)
    assert ok.size >= 10 and (radius >= 0.5).mean() > 0.3
    for b in ok:
        d = rng.standard_normal((300, 12))
        d *= radius[b] * 0.999 / np.linalg.norm(d, axis=1, keepdims=True)
        assert (net.predict(np.clip(xt[b] + d, 0, 1).astype(np.float32)) == yt[b]).all()
    # the L0 influence certificate with MaxMin pairs, by brute force over 1- and 2-pixel changes
    r0 = certify.l0_radius(net, xt, yt)
    import itertools
    checked = 0
    for b in np.flatnonzero(r0 >= 1)[:10]:
        for size in range(1, min(int(r0[b]), 2) + 1):
            for pix in itertools.combinations(range(12), size):
                for vals in itertools.product((0.0, 0.5, 1.0), repeat=size):
                    v = xt[b].copy()
                    v[list(pix)] = vals
                    assert net.predict(v[None])[0] == yt[b]
                    checked += 1
    assert checked > 50


def test_maxmin_round_trips_and_exports_refuse_it(tmp_path):
    from sparsefan import export

    net = NETS["direct"]()
    io.save_model(net, tmp_path / "m.npz")
    back = io.load_model(tmp_path / "m.npz")
    assert [l.activation for l in back.layers] == [l.activation for l in net.layers]
    x = np.random.default_rng(1).random((3, 36)).astype(np.float32)
    assert np.array_equal(back.unit_logits(x), net.unit_logits(x))
    with pytest.raises(ValueError, match="maxmin"):
        export.export_c(net, tmp_path / "c", "m")
    with pytest.raises(ValueError, match="maxmin"):
        export.quantize_int8(net, x)
