"""Networks: forward equals the reference composition; gradients equal finite differences of the
reference loss, for every builder and every differentiable aggregate."""
import numpy as np
import pytest

import sparsefan as sf
from sparsefan import aggregate as agg
from sparsefan import builders, reference
from sparsefan.network import Network

from helpers import numeric_grad

SHAPE = (6, 6)


def small(builder, **kw):
    """Every builder at a size where finite differences over all parameters are cheap."""
    if builder == "direct":
        return builders.direct(SHAPE, 3, n_units=8, fan_in=5, hidden=(3,), seed=1, **kw)
    if builder == "direct_partitions":
        return builders.direct(SHAPE, 3, n_units=6, fan_in=4, wiring="partitions", hidden=(2, 3),
                               seed=2, **kw)
    if builder == "hierarchy":
        return builders.hierarchy(SHAPE, 3, levels=2, n_units=7, fan_in=3, channels=(2, 3),
                                  seed=3, **kw)
    if builder == "hierarchy3_partitions":
        return builders.hierarchy(SHAPE, 3, levels=3, n_units=6, fan_in=2, channels=(2, 2, 2),
                                  wiring="partitions", seed=4, **kw)
    if builder == "partition_ensemble":
        return builders.partition_ensemble(SHAPE, 3, part_size=9, hidden=(3,), seed=5, **kw)
    if builder == "dense_mlp":
        return builders.dense_mlp(SHAPE, 3, hidden=(4, 3), seed=6)
    raise ValueError(builder)


BUILDERS = ["direct", "direct_partitions", "hierarchy", "hierarchy3_partitions",
            "partition_ensemble", "dense_mlp"]


def randomize_biases(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        layer.bias = (0.1 * rng.standard_normal(layer.bias_shape)).astype(np.float32)


@pytest.mark.parametrize("builder", BUILDERS)
def test_forward_matches_reference_composition(builder, rng):
    net = small(builder)
    randomize_biases(net)
    x = rng.random((9, 36), dtype=np.float32)
    Z = net.unit_logits(x)
    Z_ref = reference.network_unit_logits(x, net.layers)
    np.testing.assert_allclose(Z, Z_ref, rtol=1e-5, atol=1e-6)
    for a in agg.AGGREGATES:
        np.testing.assert_allclose(agg.probabilities(Z, a), agg.probabilities(Z_ref, a),
                                   rtol=1e-4, atol=1e-6)
    assert net.predict(x).shape == (9,)
    assert net.predict_proba(x).sum(axis=1) == pytest.approx(np.ones(9))


def _fd_grads(net, x, y, aggregate, aw, uw, eps=1e-5):
    """Central differences of the float64 reference loss over every weight and bias."""
    params = [[layer.weight.astype(np.float64), layer.bias.astype(np.float64)]
              for layer in net.layers]

    class P:  # a layer-like view on float64 parameters
        def __init__(self, layer, wb):
            self.connectivity, self.activation = layer.connectivity, layer.activation
            self.weight, self.bias = wb

    def loss():
        views = [P(l, wb) for l, wb in zip(net.layers, params)]
        return reference.network_loss(x, y, views, aggregate, aw, uw)

    out = [[numeric_grad(loss, arr, eps) for arr in wb] for wb in params]
    return out, loss()


GRAD_CASES = [
    pytest.param(b, a, aw, uw, id=f"{b}-{a}-{name}")
    for b in BUILDERS for a in ("mean_logits", "mean_prob")
    for name, aw, uw in (("aggregate", 1.0, 0.0), ("unit", 0.0, 1.0), ("both", 1.0, 0.5))
    if not (b == "dense_mlp" and uw)  # one output unit: the unit loss is the aggregate loss
]


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
@pytest.mark.parametrize("builder,aggregate,aw,uw", GRAD_CASES)
def test_gradients_match_finite_differences(builder, aggregate, aw, uw, soft):
    net = small(builder)
    net.aggregate = aggregate
    randomize_biases(net)
    rng = np.random.default_rng(11)
    x = rng.random((5, 36), dtype=np.float32)
    y = rng.integers(0, 3, 5)
    if soft:  # soft targets: cross-entropy against a distribution (one with a zero entry)
        y = rng.dirichlet(np.ones(3), 5)
        y[0] = [0.7, 0.3, 0.0]
    r = net.loss_and_grad(x, y, aw, uw)
    fd, ref_loss = _fd_grads(net, x, y, aggregate, aw, uw)
    assert r.loss == pytest.approx(ref_loss, rel=1e-5)
    for (gw, gb), (fw, fb) in zip(r.grads, fd):
        for got, want in ((gw, fw), (gb, fb)):
            err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-8)
            assert err < 1e-3


@pytest.mark.parametrize("aggregate,aw,uw", [("mean_logits", 1.0, 0.0), ("mean_prob", 1.0, 0.0),
                                              ("mean_logits", 0.0, 1.0)])
def test_one_hot_soft_targets_equal_int_labels(aggregate, aw, uw):
    net = small("direct")
    net.aggregate = aggregate
    rng = np.random.default_rng(3)
    x = rng.random((6, 36), dtype=np.float32)
    y = rng.integers(0, 3, 6)
    hard = net.loss_and_grad(x, y, aw, uw)
    soft = net.loss_and_grad(x, np.eye(3)[y], aw, uw)
    assert soft.loss == pytest.approx(hard.loss, rel=1e-12) and soft.correct == hard.correct
    for (a, b), (c, d) in zip(hard.grads, soft.grads):
        np.testing.assert_allclose(c, a, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(d, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("y,match", [
    (np.full((4, 3), 0.5), "rows must sum to 1"),
    (np.array([[1.5, -0.5, 0.0]] * 4), "finite and >= 0"),
    (np.full((4, 2), 0.5), r"shape \(4, 3\)"),
    (np.full((4, 3), np.nan), "finite"),
    (np.zeros(4), "int labels"),
])
def test_bad_soft_targets(y, match):
    net = small("direct")
    with pytest.raises(ValueError, match=match):
        net.loss_and_grad(np.zeros((4, 36), np.float32), y)


def test_vote_aggregate_is_plurality_with_low_class_ties():
    Z = np.zeros((4, 3, 2), np.float32)
    Z[0, 1, 0] = Z[1, 1, 0] = Z[2, 2, 0] = Z[3, 0, 0] = 1  # votes: 1, 1, 2, 0 -> class 1
    Z[0, 2, 1] = Z[1, 2, 1] = Z[2, 0, 1] = Z[3, 0, 1] = 1  # tie between 0 and 2 -> class 0
    p = agg.probabilities(Z, "vote")
    np.testing.assert_allclose(p[0], [0.25, 0.5, 0.25])
    assert list(agg.scores(Z, "vote").argmax(axis=1)) == [1, 0]
    with pytest.raises(ValueError, match="not differentiable"):
        agg.aggregate_loss(Z, np.array([0, 1]), "vote")


def test_summary_reports_layers_fields_and_degrees():
    net = builders.direct((28, 28), 10, fan_in=28, hidden=(8,), seed=0)
    s = net.summary_dict()
    assert s["n_units"] == 1568 and s["n_in"] == 784
    assert s["layers"][0]["fan_in_min"] == s["layers"][0]["fan_in_max"] == 28
    assert s["params"] == net.n_params == 1568 * 28 * 8 + 1568 * 8 + 1568 * 8 * 10 + 1568 * 10
    assert s["flops"] == 2 * (1568 * 28 * 8 + 1568 * 8 * 10)
    assert s["receptive_field_max"] == 28
    deg = net.layers[0].connectivity.out_degree()
    assert s["out_degree_max"] == deg.max()
    text = net.summary()
    assert "receptive field" in text and "1568" in text


def test_hierarchy_fields_compose():
    net = builders.hierarchy((28, 28), 10, levels=2, seed=0)
    fields = net.receptive_fields()
    a, b = net.layers[0].connectivity, net.layers[1].connectivity
    j = 100
    expect = sorted(set(np.concatenate([a.row(m) for m in b.row(j)]).tolist()))
    assert fields.row(j).tolist() == expect
    assert net.layers[0].connectivity.k == 28 and net.layers[1].connectivity.k == 28


@pytest.mark.parametrize("kw,match", [
    (dict(n_classes=4), "last layer must have c_out = n_classes = 4"),
    (dict(aggregate="max"), "aggregate must be one of"),
    (dict(input_shape=(5, 5)), "does not hold n_in = 36"),
])
def test_bad_networks(kw, match):
    net = small("direct")
    args = dict(layers=net.layers, n_classes=3, aggregate="mean_logits", input_shape=SHAPE)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        Network(**args)


def test_mismatched_layers():
    a = sf.FanIn(sf.Connectivity.random(10, 6, 2, seed=0), 1, 4, activation="relu")
    b = sf.FanIn(sf.Connectivity.identity(6), 3, 2)
    with pytest.raises(ValueError, match=r"layers\[0\] outputs 6 units x 4 channels but "
                                         r"layers\[1\] reads 6 units x 3 channels"):
        Network([a, b], 2)
    with pytest.raises(ValueError, match="must have no activation"):
        Network([sf.FanIn(sf.Connectivity.random(10, 6, 2, seed=0), 1, 2, activation="relu")], 2)


def test_network_input_validation():
    net = small("direct")
    with pytest.raises(TypeError, match="x must have dtype float32"):
        net.predict(np.zeros((2, 36)))
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 36\)"):
        net.predict(np.zeros((2, 35), np.float32))
    assert net.predict(np.zeros((2, 6, 6), np.float32)).shape == (2,)
    with pytest.raises(ValueError, match="y must hold labels in"):
        net.loss_and_grad(np.zeros((2, 36), np.float32), np.array([0, 3]))


# -- the fused whole-network forward (one C call for every layer) -------------------------------

def _layer_by_layer(net, x, n_threads):
    return net.forward_fm(sf.to_feature_major(x), n_threads)


@pytest.mark.parametrize("builder", BUILDERS)
def test_fused_forward_is_bit_identical_to_layer_by_layer(builder, rng):
    net = small(builder)
    randomize_biases(net)
    assert (net._fused_plan() is None) == (builder == "dense_mlp")  # GEMM layers: no plan
    x = rng.random((70, 36), dtype=np.float32)
    for batch in (1, 2, 33, 70):
        for n in (1, 2, 3):
            assert np.array_equal(net.unit_logits(x[:batch], n), _layer_by_layer(net, x[:batch], n))
    # chunks of the batch, each one C call
    assert np.array_equal(net.unit_logits(x, batch_size=16), net.unit_logits(x))


def test_fused_forward_large_enough_to_split_work(rng):
    # above the kernels' parallel threshold: the layers and the entry transpose are split
    net = builders.hierarchy((16, 16), 4, levels=2, n_units=300, fan_in=9, channels=(3, 5),
                             seed=0)
    randomize_biases(net)
    x = rng.random((1100, 256), dtype=np.float32)  # 1100 x 256 values: the transpose is split too
    want = reference.network_unit_logits(x, net.layers)
    got = [net.unit_logits(x, n) for n in (1, 2, 3)]
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
    assert np.array_equal(got[0], _layer_by_layer(net, x, 2))


def test_fused_forward_single_layer_and_ragged_rows(rng):
    conn = sf.Connectivity.from_rows(10, [[0, 3, 9], [], [2], [1, 4, 5, 6, 7, 8]])
    net = Network([sf.FanIn(conn, 1, 3, seed=0)], 3)
    randomize_biases(net)
    x = rng.random((5, 10), dtype=np.float32)
    np.testing.assert_allclose(net.unit_logits(x), reference.network_unit_logits(x, net.layers),
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(net.unit_logits(x[:1]), _layer_by_layer(net, x[:1], 1))


def test_fused_plan_follows_parameter_updates(rng):
    net = small("hierarchy")
    x = rng.random((4, 36), dtype=np.float32)
    before = net.unit_logits(x)
    plan = net._fused_plan()
    with net.layers[0].edit() as (w, _):  # in place (what the optimizers do): same plan
        w *= 2.0
    assert net._fused_plan() is plan
    assert np.array_equal(net.unit_logits(x), _layer_by_layer(net, x, 1))
    net.layers[-1].bias = np.ones(net.layers[-1].bias_shape, np.float32)  # replaced
    assert net._fused_plan() is not plan
    after = net.unit_logits(x)
    assert np.array_equal(after, _layer_by_layer(net, x, 1))
    assert not np.array_equal(after, before)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 3, 1), (1568, 10, 1), (40, 10, 33)])
def test_mean_logits_matches_a_float64_mean(shape, rng):
    Z = rng.standard_normal(shape).astype(np.float32)
    want = Z.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(agg.mean_logits(Z), want, rtol=1e-14, atol=1e-15)
    # views and other dtypes take the NumPy path, with the same result
    np.testing.assert_allclose(agg.mean_logits(Z[::-1]), want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(agg.mean_logits(Z.astype(np.float64)), want, rtol=1e-14,
                               atol=1e-15)


@pytest.mark.parametrize("builder", BUILDERS)
def test_scores_in_chunks_equal_one_chunk(builder, rng):
    # predict / scores / predict_proba aggregate batch_size examples at a time; a last chunk of
    # one example is merged into the one before (the single-example path sums in another order)
    net = small(builder)
    x = rng.random((41, 36), dtype=np.float32)
    Z = net.unit_logits(x)
    whole_s, whole_p = agg.scores(Z, net.aggregate), agg.probabilities(Z, net.aggregate)
    for bs in (2, 5, 8, 40, 41, 1000):
        assert np.array_equal(net.scores(x, batch_size=bs), whole_s), bs
        assert np.array_equal(net.predict_proba(x, batch_size=bs), whole_p), bs
        assert np.array_equal(net.predict(x, batch_size=bs), whole_s.argmax(axis=1)), bs
    assert net.scores(x[:0]).shape == (0, net.n_classes)
    with pytest.raises(ValueError, match="batch_size"):
        net.predict(x, batch_size=0)


def test_chunks_never_end_in_a_single_example():
    from sparsefan.network import _chunks

    assert _chunks(0, 4) == []
    assert _chunks(1, 4) == [(0, 1)]
    assert _chunks(9, 4) == [(0, 4), (4, 9)]
    assert _chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for n in range(2, 60):
        for size in range(1, 12):
            r = _chunks(n, size)
            assert r[0][0] == 0 and r[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(r, r[1:]))
            assert all(e - s >= min(2, size) for s, e in r)
