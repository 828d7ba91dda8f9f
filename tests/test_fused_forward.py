"""The fused whole-network forward: pickling, cache invalidation, chain checks, every buffer parity."""
import copy
import pickle

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import _engine
from sparsefan import reference
from sparsefan.layers import FanIn
from sparsefan.network import Network


def _chain(widths, chans, n_in=36, seed=0):
    layers, c_in = [], 1
    for i, (n_out, c_out) in enumerate(zip(widths, chans)):
        conn = sf.Connectivity.random(n_in, n_out, min(3, n_in), seed=seed + i)
        f = FanIn(conn, c_in, c_out, activation="relu" if i + 1 < len(widths) else None, seed=i)
        f.bias = (0.1 * np.random.default_rng(i).standard_normal(f.bias_shape)).astype(np.float32)
        layers.append(f)
        n_in, c_in = n_out, c_out
    return Network(layers, chans[-1])


def _layer_by_layer(net, x):
    return net.forward_fm(sf.to_feature_major(x), 1)


def test_network_pickles_and_deepcopies_after_predict(rng):
    net = _chain((20, 5), (4, 3))
    x = rng.random((3, 36), dtype=np.float32)
    net.predict(x)  # builds and caches the NetworkPlan
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert np.array_equal(clone.unit_logits(x), net.unit_logits(x))


def test_fused_plan_follows_activation_change(rng):
    net = _chain((20, 5), (4, 3))
    x = rng.random((3, 36), dtype=np.float32)
    net.unit_logits(x)
    net.layers[0].activation = None
    assert np.array_equal(net.unit_logits(x), _layer_by_layer(net, x))


def test_fused_forward_rejects_a_mismatched_layer_list(rng):
    # net.layers is a public list; layer by layer raises, the fused C call must not read past
    # the 20-unit activation buffer (with n_in = 200_000 it segfaults)
    net = _chain((20, 5), (4, 3))
    x = rng.random((2, 36), dtype=np.float32)
    net.unit_logits(x)
    net.layers[1] = FanIn(sf.Connectivity.from_rows(24, [[0, 23]] * 5), 4, 3, seed=1)
    with pytest.raises(ValueError):
        _layer_by_layer(net, x)
    with pytest.raises(ValueError):
        net.unit_logits(x)


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 2, 33])
def test_fused_forward_without_kept_buffer(monkeypatch, n_layers, batch, rng):
    # the path of large batches (fresh buffers, Z left in the last layer's own parity buffer)
    # at every layer-count parity; the suite only runs it for a 3-layer network
    monkeypatch.setattr(_engine, "SPARE_SCRATCH_BYTES", 0)
    net = _chain((30, 7, 40, 9)[:n_layers], (2, 3, 1, 4)[:n_layers - 1] + (3,))
    x = rng.random((batch, 36), dtype=np.float32)
    z = net.unit_logits(x)
    assert np.array_equal(z, _layer_by_layer(net, x))
    np.testing.assert_allclose(z, reference.network_unit_logits(x, net.layers), rtol=1e-5,
                               atol=1e-5)


def test_single_example_split_across_threads(rng):
    # batch 1 above the kernels' parallel threshold (PARALLEL_MIN_WORK multiply-adds a layer): the
    # region really runs on several threads, and the result must not depend on their number
    net = _chain((3000, 3000), (8, 3), n_in=400)
    assert 3000 * 3 * 1 * 8 >= _engine.PARALLEL_MIN_WORK
    x = rng.random((1, 400), dtype=np.float32)
    got = [net.unit_logits(x, n) for n in (1, 2, 3)]
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
    np.testing.assert_allclose(got[0], reference.network_unit_logits(x, net.layers), rtol=1e-5,
                               atol=1e-5)


def test_plan_rejects_wrong_sizes(rng):
    net = _chain((20, 5), (4, 3))
    plan = net._fused_plan()
    x = rng.random((2, 36), dtype=np.float32)
    with pytest.raises(ValueError, match="x must hold"):
        plan.forward(x.reshape(-1), 3, 1)
    with pytest.raises(ValueError, match="out must hold"):
        plan.forward(x.reshape(-1), 2, 1, np.empty(7, np.float32))


@pytest.mark.parametrize("n_out,c_out", [(50, 2), (1000, 10), (333, 3), (7, 16), (1100, 4)])
def test_batch_major_exit_blocks(n_out, c_out, rng):
    # the exit's unit blocks are moved to whole cache lines (16 / gcd(16, c_out) units) and the
    # blocks emptied by that dropped; results stay those of the layer-by-layer path
    net = _chain((40, n_out), (2, c_out))
    x = rng.random((64, 36), dtype=np.float32)
    want = _layer_by_layer(net, x)
    for n in (1, 2, 3):
        assert np.array_equal(net.unit_logits(x, n), want)


@pytest.mark.parametrize("n_out", [50, 1568])
def test_public_forward_exit_blocks(n_out, rng):
    # a single channel: blocks of 16 units, the FanIn.forward path
    f = FanIn(sf.Connectivity.random(36, n_out, 5, seed=3), activation="relu", seed=0)
    x = rng.random((64, 36), dtype=np.float32)
    want = sf.from_feature_major(f.forward_fm(sf.to_feature_major(x))).reshape(64, n_out)
    for n in (1, 2, 3):
        assert np.array_equal(f.forward(x, n), want)
