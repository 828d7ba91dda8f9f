"""sparsefan.torch: the C kernels as torch modules.

Gradients: ``torch.autograd.gradcheck`` in float64 (the reference path) and the float32 C path
against the float64 reference (relative error <= TOL); a network's torch gradients against
``Network.loss_and_grad``. Conversion both ways with bit-identical predictions for every builder;
a torch training loop (Adam, DataLoader, scheduler) reaching the accuracy of sparsefan.train;
state_dict round trips; threads, the GIL and the absence of copies; bad input."""
import copy
import io
import threading
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import sparsefan as sf  # noqa: E402
import sparsefan.torch as sft  # noqa: E402
from sparsefan import _engine, builders, datasets, reference  # noqa: E402
from sparsefan.train import TrainConfig, as_float_inputs, train  # noqa: E402

from helpers import TOL, make_connectivity, quiet, rel_err, tiny_task  # noqa: E402

ACTIVATIONS = (None, "relu", "maxmin")


def torch_layer(conn, c_in, c_out, activation, seed=0):
    """A module with default weights and a random (nonzero) bias."""
    layer = sft.FanIn(conn, c_in, c_out, activation, seed=seed)
    rng = np.random.default_rng(seed + 1)
    with torch.no_grad():
        layer.bias.copy_(torch.from_numpy(rng.standard_normal(layer.bias_shape)))
    return layer


def tiny_net(aggregate="mean_logits", activation="relu", seed=0):
    """A two-layer fan-in network over the 12 inputs of helpers.tiny_task."""
    return builders.direct((12,), 3, n_units=6, fan_in=4, wiring="random", hidden=(4,),
                           aggregate=aggregate, activation=activation, seed=seed)


# -- gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("scheme", ["random", "ragged"])
@pytest.mark.parametrize("feature_major", [False, True])
def test_gradcheck_layer_float64(activation, scheme, feature_major):
    conn = make_connectivity(scheme, 12, 6, 3, seed=1)
    layer = torch_layer(conn, 2, 4, activation).double()
    rng = np.random.default_rng(2)
    shape = (12, 2, 3) if feature_major else (3, 12, 2)
    x = torch.from_numpy(rng.standard_normal(shape)).requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    module = FeatureMajor(layer) if feature_major else layer
    prefix = "layer." if feature_major else ""

    def f(x, w, b):
        params = {prefix + "weight": w, prefix + "bias": b}
        return torch.func.functional_call(module, params, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))


class FeatureMajor(torch.nn.Module):
    """A layer called in the kernels' layout (``forward_fm``), for functional_call."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, xt):
        return self.layer.forward_fm(xt)


@pytest.mark.parametrize("aggregate", ["mean_logits", "mean_prob"])
@pytest.mark.parametrize("activation", ["relu", "maxmin"])
def test_gradcheck_network_float64(aggregate, activation):
    model = sft.from_network(tiny_net(aggregate, activation)).double()
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    x = torch.from_numpy(tiny_task(3, seed=0)[0].astype(np.float64)).requires_grad_()

    def f(x, *ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("scheme,n_in,n_out,k,c_in,c_out", [
    ("random", 36, 48, 5, 1, 1),
    ("partitions", 36, 72, 4, 3, 2),
    ("ragged", 36, 20, 6, 2, 4),
    ("identity", 20, 20, 1, 6, 4),
    ("dense", 36, 1, 36, 1, 8),  # one output unit: the BLAS path
])
@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("feature_major", [False, True])
def test_float32_kernels_match_reference(activation, scheme, n_in, n_out, k, c_in, c_out,
                                         batch, feature_major):
    if activation == "maxmin" and c_out % 2:
        c_out += 1
    conn = make_connectivity(scheme, n_in, n_out, k, seed=3)
    layer = torch_layer(conn, c_in, c_out, activation, seed=4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((batch, n_in, c_in)).astype(np.float32)
    dy = rng.standard_normal((batch, n_out, c_out)).astype(np.float32)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    want_y = reference.fanin_forward(x, conn, w, b, activation)
    want = reference.fanin_backward(x, conn, w, b, dy, activation)

    if feature_major:  # (units, channels, batch) in and out
        xt = torch.from_numpy(x.transpose(1, 2, 0).copy()).requires_grad_()
        y = layer.forward_fm(xt)
        y.backward(torch.from_numpy(dy.transpose(1, 2, 0).copy()))
        got_y, got_dx = y.detach().numpy().transpose(2, 0, 1), xt.grad.numpy().transpose(2, 0, 1)
    else:
        xb = torch.from_numpy(x).requires_grad_()
        y = layer(xb)
        y.backward(torch.from_numpy(dy))
        got_y, got_dx = y.detach().numpy(), xb.grad.numpy()
    assert got_y.dtype == np.float32
    assert rel_err(got_y, want_y) <= TOL
    assert rel_err(got_dx, want[0]) <= TOL
    assert rel_err(layer.weight.grad.numpy(), want[1]) <= TOL
    assert rel_err(layer.bias.grad.numpy(), want[2]) <= TOL


def test_two_dimensional_input_and_output():
    conn = sf.Connectivity.random(30, 40, 4, seed=0)
    layer = torch_layer(conn, 1, 1, "relu")
    x = torch.rand(9, 30)
    y = layer(x)
    assert y.shape == (9, 40)
    np.testing.assert_array_equal(y.detach().numpy(), layer.to_layer().forward(x.numpy()))
    assert layer(x[:, :, None]).shape == (9, 40, 1)


@pytest.mark.parametrize("frozen", ["x", "params", "weight"])
def test_gradients_only_where_asked(frozen):
    conn = sf.Connectivity.random(30, 40, 4, seed=0)
    layer = torch_layer(conn, 2, 3, "relu")
    x = torch.rand(5, 30, 2, requires_grad=frozen != "x")
    if frozen in ("params", "weight"):
        layer.weight.requires_grad_(False)
    if frozen == "params":
        layer.bias.requires_grad_(False)
    (layer(x) ** 2).sum().backward()
    assert (x.grad is None) == (frozen == "x")
    assert (layer.weight.grad is None) == (frozen in ("params", "weight"))
    assert (layer.bias.grad is None) == (frozen == "params")
    full = torch_layer(conn, 2, 3, "relu")
    xf = x.detach().clone().requires_grad_()
    (full(xf) ** 2).sum().backward()
    if x.grad is not None:
        torch.testing.assert_close(x.grad, xf.grad, rtol=0, atol=0)
    if layer.bias.grad is not None:
        torch.testing.assert_close(layer.bias.grad, full.bias.grad, rtol=0, atol=0)


def test_non_contiguous_inputs_and_gradients():
    conn = sf.Connectivity.random(30, 40, 4, seed=0)
    layer = torch_layer(conn, 1, 2, "relu")
    base = torch.rand(30, 2, 8)
    x = base[:, 0, :].T.unsqueeze(-1)  # (8, 30, 1), strided
    assert not x.is_contiguous()
    y = layer(x)
    torch.testing.assert_close(y, layer(x.contiguous()), rtol=0, atol=0)
    g = torch.rand(2, 8, 40).permute(1, 2, 0)  # a strided output gradient
    xa = x.detach().clone().requires_grad_()
    layer(xa).backward(g)
    xb = x.detach().clone().requires_grad_()
    layer(xb).backward(g.contiguous())
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)


# -- networks --------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregate", ["mean_logits", "mean_prob", "vote"])
def test_network_gradients_match_loss_and_grad(aggregate):
    x, y = tiny_task(40, seed=1)
    net = tiny_net(aggregate)
    model = sft.from_network(net)
    out = model(torch.from_numpy(x))
    yt = torch.from_numpy(y)
    if aggregate == "mean_logits":
        loss = F.cross_entropy(out, yt)
        r = net.loss_and_grad(x, y)
    elif aggregate == "mean_prob":
        loss = F.nll_loss(out, yt)
        r = net.loss_and_grad(x, y)
    else:
        assert out.grad_fn is None  # votes carry no gradient: the per-unit loss trains them
        loss = sft.unit_cross_entropy(model.unit_logits(torch.from_numpy(x)), yt)
        r = net.loss_and_grad(x, y, aggregate_weight=0.0, unit_weight=1.0)
    loss.backward()
    assert abs(loss.item() - r.loss) <= 1e-5 * abs(r.loss)
    for layer, (gw, gb) in zip(model.layers, r.grads):
        assert rel_err(layer.weight.grad.numpy(), gw) <= TOL
        assert rel_err(layer.bias.grad.numpy(), gb) <= TOL


ARCHITECTURES = {  # every builder, small enough for a test
    "direct": lambda: builders.direct((28, 28), 10, n_units=392, fan_in=28, hidden=(8, 6)),
    "direct_maxmin_mean_prob": lambda: builders.direct(
        (28, 28), 10, n_units=196, fan_in=16, hidden=(8,), activation="maxmin",
        aggregate="mean_prob"),
    "direct_random_wiring": lambda: builders.direct((28, 28), 10, n_units=300, fan_in=20,
                                                    wiring="random", hidden=(4,)),
    "hierarchy": lambda: builders.hierarchy((28, 28), 10, levels=2, n_units=392,
                                            channels=(4, 8), head_hidden=(6,)),
    "hierarchy_partitions": lambda: builders.hierarchy((28, 28), 10, levels=3, n_units=392,
                                                       wiring="partitions"),
    "partition_ensemble": lambda: builders.partition_ensemble((28, 28), 10, hidden=(8,)),
    "dense_mlp": lambda: builders.dense_mlp((28, 28), 10, hidden=(32, 16)),
    "dense_mlp_maxmin": lambda: builders.dense_mlp((28, 28), 10, hidden=(16,),
                                                   activation="maxmin"),
}


@pytest.fixture(scope="module")
def mnist_test():
    return as_float_inputs(datasets.load_embedded()[2][:300])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_from_network_is_bit_identical(name, mnist_test):
    net = ARCHITECTURES[name]()
    model = sft.from_network(net)
    x = torch.from_numpy(mnist_test)
    assert np.array_equal(model.unit_logits(x).detach().numpy(), net.unit_logits(mnist_test))
    assert np.array_equal(model.scores(x).numpy(), net.scores(mnist_test))
    assert np.array_equal(model.predict(x).numpy(), net.predict(mnist_test))
    images = torch.from_numpy(mnist_test.reshape(-1, 28, 28))
    assert np.array_equal(model.predict(images).numpy(), net.predict(mnist_test))
    back = sft.to_network(model)
    assert (back.aggregate, back.n_classes, back.input_shape, back.name) == (
        net.aggregate, net.n_classes, net.input_shape, net.name)
    for a, b in zip(back.layers, net.layers):
        assert a.connectivity is b.connectivity and a.activation == b.activation
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


def test_to_network_after_torch_training_predicts_the_same(mnist_test):
    model = sft.from_network(ARCHITECTURES["hierarchy"]())
    x, y = datasets.load_embedded()[:2]
    x, y = torch.from_numpy(as_float_inputs(x[:256])), torch.from_numpy(y[:256].astype(np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    net = sft.to_network(model)
    xt = torch.from_numpy(mnist_test)
    assert np.array_equal(net.predict(mnist_test), model.predict(xt).numpy())
    assert np.array_equal(net.unit_logits(mnist_test), model.unit_logits(xt).detach().numpy())


def test_training_reaches_the_accuracy_of_sparsefan_train(torch_threads):
    """The same network, data, optimizer (Adam), schedule (cosine over the steps) and batch
    size, trained by a plain torch loop and by sparsefan.train: test accuracies within
    ACCURACY_TOLERANCE on the embedded subset (the minibatch orders differ)."""
    ACCURACY_TOLERANCE = 0.03  # seeds 0 and 1 measured 0.2-0.3 points apart
    xs, ys, xt, yt = datasets.load_embedded()
    x, y = as_float_inputs(xs[:2000]), ys[:2000].astype(np.int64)
    xt, yt = as_float_inputs(xt), yt.astype(np.int64)

    def make():
        return builders.direct((28, 28), 10, n_units=196, fan_in=28, hidden=(8,), seed=0)

    epochs, batch, lr = 10, 64, 1e-2
    net = make()
    # one thread each: on a shared machine two-thread barriers wait for descheduled threads
    train(net, x, y, TrainConfig(epochs=epochs, batch_size=batch, lr=lr, n_threads=1),
          progress=False, log=quiet)
    acc_sf = (net.predict(xt) == yt).mean()

    model = sft.from_network(make(), n_threads=1)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * len(data)
    assert steps >= 300
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    initial = [p.detach().clone() for p in model.parameters()]
    for _ in range(epochs):
        for xb, yb in data:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    acc_torch = (model.predict(torch.from_numpy(xt)).numpy() == yt).mean()
    assert acc_sf > 0.7  # both learned something: chance is 0.1
    assert abs(acc_torch - acc_sf) <= ACCURACY_TOLERANCE, (acc_torch, acc_sf)
    assert all(not torch.equal(a, b) for a, b in zip(initial, model.parameters()))


def test_state_dict_round_trip():
    model = sft.from_network(ARCHITECTURES["direct"]())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(32, 784)
    y = torch.randint(0, 10, (32,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # tensors only: no pickled objects
    assert set(state["model"]) == {f"layers.{i}.{p}" for i in range(3)
                                   for p in ("weight", "bias")}
    other = sft.from_network(ARCHITECTURES["direct"]())  # the same wiring (seeded builder)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_state_dict(state["model"])
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    opt2 = torch.optim.Adam(other.parameters(), lr=1e-2)
    opt2.load_state_dict(state["opt"])
    for m, o in ((model, opt), (other, opt2)):  # one more identical step
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    for a, b in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    wrong = sft.from_network(builders.direct((28, 28), 10, n_units=392, fan_in=20, hidden=(8, 6)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        wrong.load_state_dict(state["model"])


def test_deepcopy_and_pickle():
    model = sft.from_network(tiny_net())
    x = torch.from_numpy(tiny_task(8, seed=0)[0])
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for other in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
        assert other.layers[0].weight.data_ptr() != model.layers[0].weight.data_ptr()


def test_layer_conversion_and_defaults():
    conn = sf.Connectivity.gaussian((6, 6), 20, 5, seed=0)
    ours = sf.FanIn(conn, 1, 4, "relu", seed=7)
    module = sft.FanIn(conn, 1, 4, "relu", seed=7)  # the same initialisation
    assert np.array_equal(module.weight.detach().numpy(), ours.weight)
    back = sft.FanIn.from_layer(ours).to_layer()
    assert np.array_equal(back.weight, ours.weight) and back.activation == "relu"
    given = sft.FanIn(conn, 1, 4, weight=torch.ones(conn.nnz, 1, 4), bias=np.zeros((20, 4),
                                                                                 np.float32))
    assert given.weight.sum().item() == conn.nnz * 4
    # the module owns its parameters: sparsefan's arrays are untouched by training
    with torch.no_grad():
        sft.FanIn.from_layer(ours).weight.add_(1.0)
    assert np.array_equal(module.weight.detach().numpy(), ours.weight)


# -- threads, the GIL, copies ----------------------------------------------------------------

@pytest.fixture
def torch_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def record_engine_calls(monkeypatch):
    calls = []
    fwd, bwd = _engine.forward, _engine.backward

    def forward(layer, xt, n, out=None):
        calls.append(("forward", n, layer, xt))
        return fwd(layer, xt, n, out)

    def backward(layer, xt, dyt, yt, n, *args, **kwargs):
        calls.append(("backward", n, layer, xt))
        return bwd(layer, xt, dyt, yt, n, *args, **kwargs)

    monkeypatch.setattr(_engine, "forward", forward)
    monkeypatch.setattr(_engine, "backward", backward)
    return calls


@pytest.mark.skipif(not sf.openmp_enabled(), reason="single-threaded build: every count is 1")
def test_threads_follow_torch_unless_given(monkeypatch, torch_threads):
    calls = record_engine_calls(monkeypatch)
    conn = sf.Connectivity.random(200, 400, 9, seed=0)
    layer = torch_layer(conn, 1, 2, "relu")
    x = torch.rand(64, 200, requires_grad=True)
    results = []
    for torch_n, own, expect in ((1, None, 1), (2, None, 2), (1, 3, 3), (2, -1, None)):
        torch.set_num_threads(torch_n)
        layer.n_threads = own
        calls.clear()
        y = layer(x)
        y.backward(torch.ones_like(y))
        expect = sf.resolve_n_threads(own) if expect is None else expect
        assert [c[:2] for c in calls] == [("forward", expect), ("backward", expect)]
        results.append((y.detach().clone(), x.grad.clone(), layer.weight.grad.clone()))
        x.grad = layer.weight.grad = layer.bias.grad = None
    for other in results[1:]:  # bit-identical for every thread count
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.skipif(not sf.openmp_enabled(), reason="single-threaded build: every count is 1")
def test_network_threads_reach_its_layers(monkeypatch, torch_threads):
    calls = record_engine_calls(monkeypatch)
    torch.set_num_threads(2)
    model = sft.from_network(tiny_net(), n_threads=1)
    model.layers[1].n_threads = 3  # a layer's own count wins
    x = torch.from_numpy(tiny_task(8, seed=0)[0])
    F.cross_entropy(model(x), torch.zeros(8, dtype=torch.int64)).backward()
    assert [c[:2] for c in calls] == [("forward", 1), ("forward", 3), ("backward", 3),
                                      ("backward", 1)]


def test_feature_major_layout_copies_nothing(monkeypatch):
    calls = record_engine_calls(monkeypatch)
    conn = sf.Connectivity.random(50, 60, 5, seed=0)
    layer = torch_layer(conn, 2, 4, "relu")
    xt = torch.rand(50, 2, 16, requires_grad=True)
    layer.forward_fm(xt).sum().backward()
    for _, _, engine_layer, engine_xt in calls:
        assert np.shares_memory(engine_xt, xt.detach().numpy())
        assert np.shares_memory(engine_layer.weight, layer.weight.detach().numpy())
        assert np.shares_memory(engine_layer.bias, layer.bias.detach().numpy())


def test_kernels_release_the_gil(monkeypatch):
    """A second thread runs Python code while the main thread is inside the engine's forward.
    With a switch interval far longer than the test, the main thread never hands the GIL over
    on its own: the other thread, woken just before each kernel call, can only get it if the
    call releases it. No clock: a held GIL can never pass."""
    conn = sf.Connectivity.random(4096, 8192, 64, seed=0)
    layer = torch_layer(conn, 1, 1, "relu")
    xt = torch.rand(4096, 1, 1024)
    calls = 5
    go = [threading.Event() for _ in range(calls)]
    ran, during = [], []
    real = _engine.forward

    def watched(layer, xt, n, out=None):
        i = len(during)
        go[i].set()  # the other thread may run from now on, if it gets the GIL
        out = real(layer, xt, n, out)
        during.append(i in ran)  # (the GIL is held here: nothing runs in between)
        return out

    def other():
        for i in range(calls):
            go[i].wait()
            ran.append(i)

    monkeypatch.setattr(_engine, "forward", watched)
    old = sys.getswitchinterval()
    worker = threading.Thread(target=other)
    worker.start()
    sys.setswitchinterval(1000.0)
    try:
        with torch.no_grad():
            for _ in range(calls):
                layer.forward_fm(xt, n_threads=1)
    finally:
        sys.setswitchinterval(old)
        for e in go:
            e.set()
        worker.join()
    assert len(during) == calls
    assert any(during), during


# -- bad input ---------------------------------------------------------------------------------

@pytest.fixture
def small():
    return torch_layer(sf.Connectivity.random(10, 8, 3, seed=0), 2, 4, "relu")


@pytest.mark.parametrize("x,exc,match", [
    (np.zeros((3, 10, 2), np.float32), TypeError, "x must be a torch.Tensor"),
    (torch.zeros(3, 10, 2, dtype=torch.float16), TypeError, "x must have dtype"),
    (torch.zeros(3, 10, 2, dtype=torch.int64), TypeError, "x must have dtype"),
    (torch.zeros(3, 10, 2, dtype=torch.float64), TypeError, "x has dtype torch.float64"),
    (torch.zeros(3, 10, 2, device="meta"), ValueError, "x must be on the CPU"),
    (torch.zeros(3, 11, 2), ValueError, r"x must have shape \(\*, 10, 2\)"),
    (torch.zeros(3, 10), ValueError, r"x must have shape \(\*, 10, 2\)"),
    (torch.zeros(3, 10, 2).to_sparse(), TypeError, "x must be a dense"),
])
def test_bad_inputs(small, x, exc, match):
    with pytest.raises(exc, match=match):
        small(x)


def test_bad_feature_major_input(small):
    with pytest.raises(ValueError, match=r"xt must have shape \(10, 2, \*\)"):
        small.forward_fm(torch.zeros(3, 10, 2))
    with pytest.raises(TypeError, match="xt must have dtype"):
        small.forward_fm(torch.zeros(10, 2, 3, dtype=torch.bfloat16))


def test_bad_parameters(small):
    x = torch.zeros(3, 10, 2)
    small.weight = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(ValueError, match=r"weight must have shape \(24, 2, 4\)"):
        small(x)
    small.weight = torch.nn.Parameter(torch.zeros(24, 2, 4))
    small.bias = torch.nn.Parameter(torch.zeros(8, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="bias has dtype torch.float64"):
        small(x)
    with pytest.raises(TypeError, match="bias is torch.float64"):
        small.to_layer()


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(connectivity="wires"), TypeError, "connectivity must be a sparsefan.Connectivity"),
    (dict(activation="tanh"), ValueError, "activation must be one of"),
    (dict(activation="maxmin", c_out=3), ValueError, "c_out must be even"),
    (dict(c_in=0), ValueError, "c_in must be >= 1"),
    (dict(n_threads=0), ValueError, "n_threads=0"),
    (dict(n_threads=1.5), TypeError, "n_threads must be an int"),
    (dict(weight=torch.zeros(3)), ValueError, "weight must have shape"),
    (dict(weight=torch.zeros(24, 1, 1, dtype=torch.float64)), TypeError, "weight must have dtype"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(connectivity=sf.Connectivity.random(10, 8, 3, seed=0), c_in=1, c_out=1)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sft.FanIn(**args)


def test_bad_network_arguments():
    layers = sft.from_network(tiny_net()).layers
    with pytest.raises(TypeError, match="net must be a sparsefan.Network"):
        sft.from_network(layers[0])
    with pytest.raises(TypeError, match="module must be a sparsefan.torch.Network"):
        sft.to_network(layers[0])
    with pytest.raises(TypeError, match=r"layers\[1\] must be a sparsefan.torch.FanIn"):
        sft.Network([layers[0], torch.nn.ReLU()], 3)
    with pytest.raises(ValueError, match=r"layers\[0\] outputs"):
        sft.Network([layers[0], layers[0]], 3)
    with pytest.raises(ValueError, match="aggregate must be one of"):
        sft.Network(list(layers), 3, aggregate="median")
    with pytest.raises(ValueError, match="input_shape"):
        sft.Network(list(layers), 3, input_shape=(5, 5))
    model = sft.Network(list(layers), 3)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 12\)"):
        model(torch.zeros(2, 13))
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        model(torch.zeros(2, 12, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight is torch.float64: sparsefan layers are float32"):
        sft.to_network(copy.deepcopy(model).double())
    with pytest.raises(ValueError, match="aggregate must be one of"):
        sft.aggregate_scores(torch.zeros(4, 3, 2), "median")
