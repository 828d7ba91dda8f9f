"""Certified L0 training: the training bound (sparsefan.certify.L0Bound) against the certificate
and finite differences, its soundness on trained networks, and the trainer's use of it."""
import itertools

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import attacks, builders, certify, lipschitz
from sparsefan.network import Network
from sparsefan.train import TrainConfig, train, train_epsilon

from helpers import check_resume_is_bit_identical, quiet, tiny_task

SHAPE = (3, 4)




NETS = {
    "direct": lambda: builders.direct((6, 6), 4, n_units=12, fan_in=5, hidden=(3, 2), seed=1),
    "direct_maxmin": lambda: builders.direct((6, 6), 4, n_units=12, fan_in=5, hidden=(4,),
                                             activation="maxmin", seed=5),
    "hierarchy2": lambda: builders.hierarchy((6, 6), 4, levels=2, n_units=10, fan_in=3,
                                             channels=(2, 3), seed=2),
    "dense_mlp": lambda: builders.dense_mlp((6, 6), 4, hidden=(5, 3), seed=4),
    "ragged": lambda: Network(
        [sf.FanIn(sf.Connectivity.from_rows(
            36, [np.random.default_rng(j).choice(36, size=j % 6, replace=False)
                 for j in range(7)]), 1, 3, "relu", seed=1),
         sf.FanIn(sf.Connectivity.random(7, 5, 3, seed=2), 3, 4, seed=2)],
        4, "mean_logits", (6, 6)),
}


def exact_l0_bound(net, r):
    """The certificate's own parts (box room): min of the r largest G and the chain term."""
    G = certify.influence_bounds(net)
    T, v, pairs = lipschitz.input_weights(net)
    C = net.n_classes
    K = np.zeros((C, C))
    for p, (a, b) in enumerate(pairs):
        infl = np.sort(G[a, b])[::-1][:r].sum()
        chain = np.sqrt(T[p] * np.sort(v[:, p])[::-1][:r].sum())
        K[a, b] = K[b, a] = min(infl, chain)
    return K


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("r", [1, 4])
def test_training_bound_converges_to_the_certificate(name, r):
    net = NETS[name]()
    K = certify.L0Bound(net, r, iterations=300, dtype=np.float64).value()
    want = exact_l0_bound(net, r)
    off = ~np.eye(len(K), dtype=bool)
    assert np.allclose(K[off], want[off], rtol=1e-4)


def selection(b):
    return (b._saved["sel"].copy(), b.chain._saved["sel"].copy(), b._use_chain.copy())


@pytest.mark.parametrize("name", sorted(NETS))
def test_training_bound_gradient_matches_finite_differences(name):
    """dK/dW against central differences wherever the selected pixels and the smaller of the
    two terms stay put (the bound is piecewise smooth: a top-r sum, a minimum, |W|)."""
    net = NETS[name]()
    rng = np.random.default_rng(0)
    C = net.n_classes
    dK = rng.standard_normal((C, C))
    np.fill_diagonal(dK, 0)
    vectors = None

    def value():
        b = certify.L0Bound(net, 3, iterations=300, dtype=np.float64)
        if vectors is not None:
            for mine, kept in zip(b.chain.vectors, vectors):
                for m, k in zip(mine, kept):
                    m[...] = k
        return float((b.value() * dK).sum()), b

    v0, b = value()
    vectors = [[v.copy() for v in vs] for vs in b.chain.vectors]
    where = selection(b)
    grads = [(np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
             for l in net.layers]
    b.backward(dK, grads)
    checked = 0
    for i, layer in enumerate(net.layers):
        w0 = layer.weight.astype(np.float64)
        for _ in range(6):
            p = tuple(int(rng.integers(0, s)) for s in layer.weight_shape)
            h = 1e-2 * max(abs(w0[p]), 1e-2)
            vals = []
            stable = True
            for d in (h, -h):
                w = w0.copy()
                w[p] += d
                layer.weight = w.astype(np.float32)
                val, bb = value()
                vals.append(val)
                stable &= all(np.array_equal(s, t) for s, t in zip(selection(bb), where))
            layer.weight = w0.astype(np.float32)
            if not stable:
                continue
            fd = (vals[0] - vals[1]) / (2 * h)
            assert abs(fd - grads[i][0][p]) <= 2e-3 * (abs(fd) + abs(v0) * 1e-2), \
                (i, p, fd, grads[i][0][p])
            checked += 1
    assert checked >= 3 * len(net.layers)


def trained(l0_radius, epochs=12, seed=1, **kw):
    net = builders.direct(SHAPE, 3, n_units=10, fan_in=4, hidden=(4,), seed=seed)
    x, y = tiny_task(600, 0)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=3e-2, l0_radius=l0_radius, **kw)
    r = train(net, x, y, cfg, progress=False, log=quiet)
    return net, r


def test_l0_training_certifies_more_pixels():
    plain, _ = trained(0)
    cert, r = trained(3)
    x, y = tiny_task(300, 4)
    rp = certify.l0_radius(plain, x, y, room="box")
    rc = certify.l0_radius(cert, x, y, room="box")
    assert (rc >= 3).mean() > (rp >= 3).mean() + 0.2
    assert (cert.predict(x) == y).mean() > 0.8
    assert "train_certified" in r.history[-1] and r.history[-1]["epsilon"] == 1.0


def test_no_changed_pixels_within_the_certified_l0_radius_flip():
    """Every subset of up to r pixels of the 12, set to box corners and random values, and the
    greedy and sparse-RS attacks: none flips an example certified at r."""
    net, _ = trained(3)
    x, y = tiny_task(40, 5)
    for room in ("box", "input"):
        r0 = certify.l0_radius(net, x, y, room=room)
        assert np.array_equal(r0 >= 0, net.predict(x) == y)
        ok = np.flatnonzero(r0 >= 1)
        assert ok.size >= 20
        rng = np.random.default_rng(6)
        for b in ok[:12]:
            r = int(r0[b])
            trials = []
            for S in itertools.combinations(range(12), r):
                S = list(S)
                vals = np.concatenate([np.array(list(itertools.product((0.0, 1.0), repeat=r))),
                                       rng.random((8, r))])
                v = np.repeat(x[b:b + 1], len(vals), axis=0)
                v[:, S] = vals
                trials.append(v)
            assert (net.predict(np.concatenate(trials).astype(np.float32)) == y[b]).all()
        found = attacks.greedy_l0(net, x[ok], y[ok], 12).size
        assert (found > r0[ok]).all()


def test_predict_certified_of_an_l0_trained_network():
    net, _ = trained(3)
    x, y = tiny_task(50, 7)
    out = net.predict_certified(x)
    want = certify.l0_radius(net, x, out.classes, room="box")
    assert np.array_equal(out.l0_radius, want)


def test_l0_training_resumes_bit_identically(tmp_path):
    x, y = tiny_task(300, 0)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=3e-2, l0_radius=2)
    check_resume_is_bit_identical(
        lambda: builders.direct(SHAPE, 3, n_units=10, fan_in=4, hidden=(4,), seed=1), x, y, cfg,
        tmp_path / "cert.ckpt")


def test_ramp_of_the_l0_bound():
    cfg = TrainConfig(epochs=4, l0_radius=5, epsilon_ramp=0.5)
    t = [train_epsilon(cfg, s, 10) for s in range(40)]
    assert t[0] == pytest.approx(0.05) and t[19] == 1.0 and t[-1] == 1.0


@pytest.mark.parametrize("kw,match", [
    (dict(l0_radius=-1), "l0_radius must be an integer >= 0"),
    (dict(l0_radius=2.5), "l0_radius must be an integer >= 0"),
    (dict(l0_radius="3"), "l0_radius must be an integer >= 0"),
    (dict(l0_radius=True), "l0_radius must be an integer >= 0"),
    (dict(l0_radius=3, l2_epsilon=1.0), "set one of them"),
])
def test_bad_l0_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_l0_training_needs_mean_logits():
    x, y = tiny_task(50, 0)
    net = builders.partition_ensemble(SHAPE, 3, part_size=2, hidden=(4,), seed=4,
                                      aggregate="mean_prob")
    with pytest.raises(ValueError, match="certified L0 training .* needs a mean_logits"):
        train(net, x, y, TrainConfig(epochs=1, l0_radius=2), progress=False, log=quiet)
