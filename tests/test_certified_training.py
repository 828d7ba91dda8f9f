"""Certified L2 training and the L2 bound: the bound's gradient, its soundness (sampled
gradients, PGD and random perturbations inside the certified ball), that certified training
shrinks it, exact resume, and constants that follow the weights."""
import copy
import pickle

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import attacks, builders, certify, lipschitz
from sparsefan.network import Network
from sparsefan.train import TrainConfig, train

from helpers import check_resume_is_bit_identical, quiet, tiny_task

SHAPE = (3, 4)




def ragged_net():
    r = np.random.default_rng(7)
    rows = [r.choice(36, size=r.integers(0, 6), replace=False) for _ in range(7)]
    return Network([sf.FanIn(sf.Connectivity.from_rows(36, rows), 1, 3, "relu", seed=1),
                    sf.FanIn(sf.Connectivity.random(7, 5, 3, seed=2), 3, 4, seed=2)],
                   4, "mean_logits", (6, 6))


NETS = {
    "direct": lambda: builders.direct((6, 6), 4, n_units=12, fan_in=5, hidden=(3, 2), seed=1),
    "hierarchy2": lambda: builders.hierarchy((6, 6), 4, levels=2, n_units=10, fan_in=3,
                                             channels=(2, 3), seed=2),
    "hierarchy3_head_hidden": lambda: builders.hierarchy((6, 6), 4, levels=3, n_units=10,
                                                         fan_in=3, channels=(2, 2, 3),
                                                         head_hidden=(3,), seed=3),
    "dense_mlp": lambda: builders.dense_mlp((6, 6), 4, hidden=(5, 3), seed=4),
    "ragged_mixing_head": ragged_net,
    "hierarchy2_maxmin": lambda: builders.hierarchy((6, 6), 4, levels=2, n_units=10, fan_in=3,
                                                    channels=(2, 4), activation="maxmin",
                                                    seed=6),
}


def check_weight_gradients(net, value, grads, rng, n, tol):
    """grads[i][0] against central differences of value() at n random weights of every layer
    (relative tolerance tol, absolute 0.01 * tol)."""
    for i, layer in enumerate(net.layers):
        w0 = layer.weight.astype(np.float64)
        for _ in range(n):
            p = tuple(int(rng.integers(0, s)) for s in layer.weight_shape)
            vals = []
            for h in (1e-3, -1e-3):
                w = w0.copy()
                w[p] += h
                layer.weight = w.astype(np.float32)
                vals.append(value())
            layer.weight = w0.astype(np.float32)
            fd = (vals[0] - vals[1]) / 2e-3
            assert abs(fd - grads[i][0][p]) <= tol * (abs(fd) + 1e-2), (i, p, fd, grads[i][0][p])


def bound_value(net, dK, iterations=300):
    mb = lipschitz.MarginBound(net, iterations=iterations, temperature=1e-9, dtype=np.float64)
    return float((mb.value() * dK).sum()), mb


@pytest.mark.parametrize("name", sorted(NETS))
def test_bound_gradient_matches_finite_differences(name):
    """dK/dW of the training bound against central differences (converged power iteration,
    an exact max), for every layer of every kind of network."""
    net = NETS[name]()
    rng = np.random.default_rng(0)
    dK = rng.standard_normal((4, 4))
    np.fill_diagonal(dK, 0)
    _, mb = bound_value(net, dK)
    grads = [(np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
             for l in net.layers]
    mb.backward(dK, grads)
    check_weight_gradients(net, lambda: bound_value(net, dK)[0], grads, rng, 5, 1e-3)


@pytest.mark.parametrize("name", sorted(NETS))
def test_certified_bound_dominates_every_sampled_gradient(name):
    """K[y, c] >= ||grad (S_y - S_c)|| at random points and at points PGD drove to a high
    gradient; the training estimate converges to the certificate's chain bound."""
    net = NETS[name]()
    rng = np.random.default_rng(1)
    for layer in net.layers:
        layer.bias = (0.3 * rng.standard_normal(layer.bias_shape)).astype(np.float32)
    K = certify.lipschitz_margin_bounds(net)
    mb = lipschitz.MarginBound(net, iterations=300, dtype=np.float64)
    assert (K <= mb.value() * lipschitz.SAFETY * (1 + 1e-6)).all()
    pts = rng.random((400, 36)).astype(np.float32)
    M = net.n_units
    for y, c in [(0, 1), (2, 3), (3, 0)]:
        def margin(Z, y=y, c=c):
            d = np.zeros(Z.shape)
            d[:, y], d[:, c] = 1 / M, -1 / M
            S = Z.astype(np.float64).mean(axis=0)
            return S[y] - S[c], d
        _, g = net.input_gradient(pts, margin)
        assert np.linalg.norm(g, axis=1).max() <= K[y, c]


def trained(l2_epsilon, epochs=12, seed=1, **kw):
    net = builders.direct(SHAPE, 3, n_units=10, fan_in=4, hidden=(4,), seed=seed)
    x, y = tiny_task(600, 0)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=3e-2, l2_epsilon=l2_epsilon, **kw)
    r = train(net, x, y, cfg, progress=False, log=quiet)
    return net, r


def test_no_perturbation_inside_the_certified_ball_flips():
    net, _ = trained(0.5)
    x, y = tiny_task(60, 2)
    radius = certify.l2_radius(net, x, y)
    assert np.array_equal(radius >= 0, net.predict(x) == y)
    ok = np.flatnonzero(radius > 0.05)
    assert ok.size >= 10
    rng = np.random.default_rng(3)
    for b in ok:  # random directions, and the box corners nearest the ball's edge
        d = rng.standard_normal((300, 12))
        d *= radius[b] * 0.999 / np.linalg.norm(d, axis=1, keepdims=True)
        v = np.clip(x[b] + d, 0, 1).astype(np.float32)
        assert (net.predict(v) == y[b]).all()
    # PGD just below the radius never succeeds; the minimal-norm attack never beats it
    for b in ok[:15]:
        r = attacks.pgd(net, x[b:b + 1], y[b:b + 1], eps=float(radius[b]) * 0.999, steps=60)
        assert not r.success.any()
    found = attacks.ddn(net, x[ok], y[ok], steps=150).size
    assert (found >= radius[ok] * (1 - 1e-4)).all()


def test_certified_training_shrinks_the_bound_and_certifies_more():
    plain, _ = trained(0.0)
    cert, r = trained(0.5)
    x, y = tiny_task(300, 4)
    Kp = certify.lipschitz_margin_bounds(plain)
    Kc = certify.lipschitz_margin_bounds(cert)
    off = ~np.eye(3, dtype=bool)
    assert Kc[off].max() < Kp[off].min()
    rp, rc = certify.l2_radius(plain, x, y), certify.l2_radius(cert, x, y)
    assert (rc >= 0.5).mean() > (rp >= 0.5).mean() + 0.2
    assert "train_certified" in r.history[-1] and r.history[-1]["epsilon"] == 0.5


def test_epsilon_ramp():
    from sparsefan.train import train_epsilon
    cfg = TrainConfig(epochs=4, l2_epsilon=2.0, epsilon_ramp=0.5)
    eps = [train_epsilon(cfg, s, 10) for s in range(40)]
    assert eps[0] == pytest.approx(0.1) and eps[19] == 2.0 and eps[-1] == 2.0
    assert all(a <= b for a, b in zip(eps, eps[1:]))
    assert train_epsilon(TrainConfig(l2_epsilon=1.0, epsilon_ramp=0.0), 0, 5) == 1.0


def test_certified_training_resumes_bit_identically(tmp_path):
    x, y = tiny_task(300, 0)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-2, l2_epsilon=0.4)
    check_resume_is_bit_identical(
        lambda: builders.direct(SHAPE, 3, n_units=10, fan_in=4, hidden=(4,), seed=1), x, y, cfg,
        tmp_path / "cert.ckpt")


@pytest.mark.parametrize("kw,match", [
    (dict(l2_epsilon=-1.0), "l2_epsilon must be >= 0"),
    (dict(l2_epsilon=float("nan")), "l2_epsilon must be >= 0"),
    (dict(epsilon_ramp=1.5), "epsilon_ramp must be a fraction"),
    (dict(power_iterations=0), "power_iterations must be >= 1"),
])
def test_bad_certified_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_certified_training_needs_mean_logits_and_the_aggregate_loss():
    x, y = tiny_task(50, 0)
    vote = builders.partition_ensemble(SHAPE, 3, part_size=2, hidden=(4,), seed=4)
    with pytest.raises(ValueError, match="mean_logits"):
        train(vote, x, y, TrainConfig(epochs=1, l2_epsilon=0.5), progress=False, log=quiet)
    net = builders.direct(SHAPE, 3, n_units=10, fan_in=4, hidden=(4,), seed=1)
    with pytest.raises(ValueError, match="unit_loss=0"):
        train(net, x, y, TrainConfig(epochs=1, l2_epsilon=0.5, unit_loss=1.0), progress=False,
              log=quiet)


# -- derived constants follow the weights ----------------------------------------------------

def test_certify_train_certify_uses_the_new_weights():
    """The sequence that used to certify with stale bounds: certify, train further, certify."""
    net, _ = trained(0.0, epochs=3)
    x, y = tiny_task(100, 5)
    before = (certify.lipschitz_margin_bounds(net).copy(), certify.influence_bounds(net).copy(),
              certify.l0_radius(net, x, y), certify.l2_radius(net, x, y))
    train(net, *tiny_task(600, 0), TrainConfig(epochs=4, batch_size=32, lr=3e-2, seed=9),
          progress=False, log=quiet)
    fresh = pickle.loads(pickle.dumps(net))  # no cache travels with a pickle
    assert "_derived" not in fresh.__dict__
    for cached, recomputed in [
            (certify.lipschitz_margin_bounds(net), certify.lipschitz_margin_bounds(fresh)),
            (certify.influence_bounds(net), certify.influence_bounds(fresh)),
            (certify.l0_radius(net, x, y), certify.l0_radius(fresh, x, y)),
            (certify.l2_radius(net, x, y), certify.l2_radius(fresh, x, y))]:
        assert np.array_equal(cached, recomputed)
    assert not np.array_equal(before[0], certify.lipschitz_margin_bounds(net))
    assert not np.array_equal(before[1], certify.influence_bounds(net))


def test_every_way_of_writing_the_weights_invalidates_derived_constants():
    net, _ = trained(0.0, epochs=2)
    K0 = certify.lipschitz_margin_bounds(net).copy()
    assert certify.lipschitz_margin_bounds(net) is certify.lipschitz_margin_bounds(net)
    layer = net.layers[0]
    with pytest.raises(ValueError, match="read-only"):
        layer.weight[0, 0, 0] = 5.0  # in-place writes must go through edit()
    with layer.edit() as (w, _):
        w *= 2.0
    K1 = certify.lipschitz_margin_bounds(net)
    assert np.allclose(K1[~np.eye(3, dtype=bool)], 2 * K0[~np.eye(3, dtype=bool)])
    layer.weight = layer.weight / 2  # assignment
    assert np.allclose(certify.lipschitz_margin_bounds(net), K0)
    net.layers[1] = copy.deepcopy(net.layers[1])  # a replaced layer: a fresh version
    with net.layers[1].edit() as (w, _):
        w *= 3.0
    assert not np.allclose(certify.lipschitz_margin_bounds(net), K0)


def test_parameters_are_owned_copies():
    w = np.zeros((10 * 4, 1, 4), np.float32)
    layer = sf.FanIn(sf.Connectivity.random(12, 10, 4, seed=0), 1, 4, weight=w)
    w[0, 0, 0] = 1.0  # the caller's array stays theirs
    assert layer.weight[0, 0, 0] == 0.0 and not layer.weight.flags.writeable
    v = layer.version
    with pytest.raises(RuntimeError):
        with layer.edit():
            raise RuntimeError  # leaving by an exception still advances the version
    assert layer.version != v and not layer.weight.flags.writeable


# -- a certificate with every prediction ---------------------------------------------------------

@pytest.mark.parametrize("name", ["direct", "hierarchy2", "dense_mlp", "ragged_mixing_head"])
def test_predict_certified_equals_the_certify_functions(name):
    net = NETS[name]()
    rng = np.random.default_rng(5)
    for layer in net.layers:
        layer.bias = (0.5 * rng.standard_normal(layer.bias_shape)).astype(np.float32)
    x = rng.random((64, 36)).astype(np.float32)
    x[:8] = np.round(x[:8])  # pixels at 0 or 1: room = 1, the two L0 certificates agree
    out = net.predict_certified(x)
    assert np.array_equal(out.classes, net.predict(x))
    np.testing.assert_allclose(out.l2_radius, certify.l2_radius(net, x, out.classes),
                               rtol=1e-12)
    box = certify.l0_radius(net, x, out.classes, room="box")
    assert np.array_equal(out.l0_radius, box)
    assert np.array_equal(out.l0_radius[:8], certify.l0_radius(net, x[:8], out.classes[:8]))
    assert (out.l0_radius <= certify.l0_radius(net, x, out.classes)).all()  # box is looser
    small = net.predict_certified(x, max_l0=3)
    assert np.array_equal(small.l0_radius, np.minimum(out.l0_radius, 3))
    one = net.predict_certified(x[:1])  # another batch size: the same up to float32 rounding
    assert one.classes[0] == out.classes[0]
    np.testing.assert_allclose(one.l2_radius[0], out.l2_radius[0], rtol=1e-4)


def test_predict_certified_kernel_against_its_twin():
    """The C kernel against radius_from_margins / _radius_from_costs on random tables, ties
    included."""
    from sparsefan import _kernels

    rng = np.random.default_rng(6)
    C, B, R = 5, 300, 17
    S = rng.integers(-3, 4, (C, B)).astype(np.float64) / 2  # many ties
    K = rng.random((C, C)) + 0.1
    K[rng.random((C, C)) < 0.1] = 0.0
    np.fill_diagonal(K, 0)
    G = rng.random((C, C, R)) * rng.integers(0, 2, (C, C, 1))
    cum = np.zeros((C, C, R + 1))
    np.cumsum(-np.sort(-G, axis=2), axis=2, out=cum[:, :, 1:])
    pred, l0 = np.empty(B, np.int64), np.empty(B, np.int64)
    l2 = np.empty(B)
    _kernels.certify_mean_logits(pred, l2, l0, S, K, cum)
    assert np.array_equal(pred, S.argmax(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        want2 = certify.radius_from_margins(S, pred, K)
    assert np.array_equal(l2, want2)
    margins = S[pred, np.arange(B)][None, :] - S
    costs = G[pred].transpose(2, 1, 0)  # (R, C, B): R "inputs" whose costs are G's
    want0 = certify._radius_from_costs(margins, costs, pred, C, R)
    assert np.array_equal(l0, want0)


def test_predict_certified_follows_the_weights_and_refuses_other_aggregates():
    net, _ = trained(0.3, epochs=2)
    x, _ = tiny_task(20, 7)
    a = net.predict_certified(x)
    with net.layers[-1].edit() as (w, bias):
        w *= 0.5  # halves every margin and every bound: L2 radii stay, tables are rebuilt
        bias *= 0.5
    b = net.predict_certified(x)
    np.testing.assert_allclose(b.l2_radius, a.l2_radius, rtol=1e-6)
    np.testing.assert_allclose(b.l2_radius, certify.l2_radius(net, x, b.classes), rtol=1e-12)
    vote = builders.partition_ensemble(SHAPE, 3, part_size=2, hidden=(4,), seed=4)
    with pytest.raises(ValueError, match="mean_logits"):
        vote.predict_certified(x)
    with pytest.raises(ValueError, match="x must have shape"):
        net.predict_certified(x[:, :5])


@pytest.mark.parametrize("name", ["direct", "hierarchy2", "dense_mlp"])
def test_float32_training_bound_agrees_with_float64(name):
    """Training runs the bound in float32 (the weights uncopied); it tracks the float64 one."""
    net = NETS[name]()
    dK = np.random.default_rng(2).random((4, 4))
    out = []
    for dtype in (np.float32, np.float64):
        mb = lipschitz.MarginBound(net, iterations=100, dtype=dtype)
        K = mb.value()
        grads = [(np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
                 for l in net.layers]
        mb.backward(dK, grads)
        out.append((K, grads))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
    for (g32, _), (g64, _) in zip(out[0][1], out[1][1]):
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4 * np.abs(g64).max())


def test_margin_loss_gradients_against_finite_differences():
    from sparsefan import aggregate as agg

    rng = np.random.default_rng(8)
    M, C, B = 3, 4, 6
    Z = rng.standard_normal((M, C, B))
    y = rng.integers(0, C, B)
    off = rng.random((C, C))
    np.fill_diagonal(off, 0)
    for scale in (1.0, 2.5):
        loss, g, d_off, d_scale, _ = agg.margin_loss(Z, y, off, scale)
        h = 1e-6
        for arr, grad in ((Z, np.broadcast_to(g, Z.shape)), (off, d_off)):
            for idx in [tuple(int(rng.integers(0, s)) for s in arr.shape) for _ in range(8)]:
                if arr is off and idx[0] == idx[1]:
                    continue
                old = arr[idx]
                arr[idx] = old + h
                up = agg.margin_loss(Z, y, off, scale)[0]
                arr[idx] = old - h
                down = agg.margin_loss(Z, y, off, scale)[0]
                arr[idx] = old
                assert abs((up - down) / (2 * h) - grad[idx]) < 1e-6
        num = (agg.margin_loss(Z, y, off, scale + h)[0]
               - agg.margin_loss(Z, y, off, scale - h)[0]) / (2 * h)
        assert abs(num - d_scale) < 1e-6


def test_logit_temperature_trains_and_certifies():
    net, r = trained(0.5, logit_temperature=4.0)
    x, y = tiny_task(300, 4)
    radius = certify.l2_radius(net, x, y)
    assert (radius >= 0.5).mean() > 0.5
    with pytest.raises(ValueError, match="logit_temperature"):
        TrainConfig(logit_temperature=-1.0)


@pytest.mark.parametrize("temperature", [0.0, 3.0])
def test_certified_step_gradient_against_finite_differences(temperature):
    """The whole certified-training objective (logits and bound, through the temperature's
    mean bound) against central differences of its loss in every layer."""
    from sparsefan.train import certified_step

    net = builders.direct(SHAPE, 3, n_units=6, fan_in=4, hidden=(4,), seed=3)
    x, y = tiny_task(16, 9)
    cfg = TrainConfig(l2_epsilon=0.7, logit_temperature=temperature)
    rng = np.random.default_rng(10)

    def step(grads=None):
        mb = lipschitz.MarginBound(net, iterations=300, temperature=1e-9, dtype=np.float64)
        grads = grads if grads is not None else [
            (np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
            for l in net.layers]
        return certified_step(net, mb, x, y, 0.7, cfg, grads), grads

    _, grads = step()
    check_weight_gradients(net, lambda: step()[0].loss, grads, rng, 4, 2e-3)


def test_attacks_never_beat_certificates_of_a_certified_mnist_model():
    """A certified-trained MaxMin fan-in network on MNIST images: every L2 attack at the
    certified radius fails, and no L0 attack beats the L0 certificate."""
    from sparsefan import datasets
    from sparsefan.train import as_float_inputs

    x, y, xt, yt = datasets.load_embedded()
    net = builders.direct((28, 28), 10, n_units=392, fan_in=28, hidden=(8,),
                          activation="maxmin", seed=0)
    train(net, x[:3000], y[:3000].astype(np.int64),
          TrainConfig(epochs=3, lr=3e-3, l2_epsilon=1.0), progress=False, log=quiet)
    xt, yt = as_float_inputs(xt[:200]), yt[:200].astype(np.int64)
    out = net.predict_certified(xt)
    r2 = certify.l2_radius(net, xt, yt)
    ok = np.flatnonzero(r2 > 0.2)
    assert ok.size >= 20
    assert np.allclose(out.l2_radius[ok], r2[ok])
    found = attacks.ddn(net, xt[ok], yt[ok], steps=100).size
    assert (found >= r2[ok] * (1 - 1e-4)).all()
    for b in ok[:10]:
        r = attacks.pgd(net, xt[b:b + 1], yt[b:b + 1], eps=float(r2[b]) * 0.999, steps=40)
        assert not r.success.any()
    r0 = certify.l0_radius(net, xt, yt)
    assert (r0 >= 1).sum() >= 10
    g = attacks.greedy_l0(net, xt, yt, 40).size
    assert not ((g <= r0) & (r0 >= 0)).any()
