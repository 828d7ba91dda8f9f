import numpy as np
import pytest

from sparsefan import Workspace, builders, datasets
from sparsefan.train import TrainConfig, TrainingError, as_float_inputs, evaluate, train


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = datasets.load_embedded()
    return (x_train[:3000], y_train[:3000].astype(np.int64), x_test[:1000],
            y_test[:1000].astype(np.int64))


def quiet(_):
    pass


def small_net(seed=0):
    return builders.direct((28, 28), 10, n_units=392, fan_in=16, hidden=(8,), seed=seed)


def test_training_learns_mnist_subset(digits):
    x, y, xt, yt = digits
    net = small_net()
    conns = [(l.connectivity.indptr.copy(), l.connectivity.indices.copy()) for l in net.layers]
    before, _ = evaluate(net, as_float_inputs(xt), yt)
    result = train(net, x, y, TrainConfig(epochs=5, batch_size=64, lr=3e-2), progress=False,
                   log=quiet)
    after, _ = evaluate(net, as_float_inputs(xt), yt)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] < 2.5
    assert before < 0.3
    assert after >= 0.84  # 5 epochs on 3000 images; measured 0.869-0.875 over seeds 0-2
    # training never rewires the network
    for layer, (indptr, indices) in zip(net.layers, conns):
        assert np.array_equal(layer.connectivity.indptr, indptr)
        assert np.array_equal(layer.connectivity.indices, indices)


@pytest.mark.parametrize("optimizer,schedule", [("adam", "constant"), ("sgd", "step")])
def test_optimizers_and_schedules_reduce_the_loss(digits, optimizer, schedule):
    x, y, _, _ = digits
    net = builders.dense_mlp((28, 28), 10, hidden=(32,), seed=0)
    lr = 1e-3 if optimizer == "adam" else 0.1
    r = train(net, x[:1000], y[:1000], TrainConfig(epochs=3, batch_size=50, lr=lr,
                                                   optimizer=optimizer, schedule=schedule,
                                                   weight_decay=1e-4),
              progress=False, log=quiet)
    assert r.history[-1]["loss"] < 0.7 * r.history[0]["loss"]


def test_partition_ensemble_trains_with_unit_loss(digits):
    x, y, xt, yt = digits
    net = builders.partition_ensemble((28, 28), 10, part_size=28, hidden=(16,), seed=0)
    train(net, x, y, TrainConfig(epochs=2, lr=1e-2), progress=False, log=quiet)
    acc, _ = evaluate(net, as_float_inputs(xt), yt)
    assert acc > 0.5


def test_same_seed_same_result_and_resume_is_exact(digits, tmp_path):
    x, y, _, _ = digits
    x, y = x[:600], y[:600]
    cfg = TrainConfig(epochs=3, batch_size=50, lr=1e-2, validation=0.2)
    full = small_net()
    r_full = train(full, x, y, cfg, progress=False, log=quiet)

    ckpt = tmp_path / "run.ckpt"

    class Interrupt(Exception):
        pass

    def stop_after_two(line):
        if line.startswith("epoch   2"):
            raise Interrupt

    first = small_net()
    with pytest.raises(Interrupt):
        train(first, x, y, cfg, checkpoint=ckpt, progress=False, log=stop_after_two)
    resumed = small_net()
    lines = []
    r = train(resumed, x, y, cfg, checkpoint=ckpt, resume=True, progress=False, log=lines.append)
    assert lines[0].startswith("resumed from")
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    for a, b in zip(full.layers, resumed.layers):
        assert np.array_equal(a.weight, b.weight)
        assert np.array_equal(a.bias, b.bias)
    assert r.history[-1]["val_accuracy"] == r_full.history[-1]["val_accuracy"]


def test_resume_refuses_another_configuration(digits, tmp_path):
    x, y, _, _ = digits
    ckpt = tmp_path / "c.ckpt"
    train(small_net(), x[:200], y[:200], TrainConfig(epochs=1, lr=1e-2), checkpoint=ckpt,
          progress=False, log=quiet)
    with pytest.raises(ValueError, match="another training configuration"):
        train(small_net(), x[:200], y[:200], TrainConfig(epochs=1, lr=2e-2), checkpoint=ckpt,
              resume=True, progress=False, log=quiet)
    with pytest.raises(ValueError, match="different architecture"):
        train(small_net(seed=9), x[:200], y[:200], TrainConfig(epochs=1, lr=1e-2),
              checkpoint=ckpt, resume=True, progress=False, log=quiet)


def test_early_stopping_restores_best(digits):
    x, y, _, _ = digits
    net = small_net()
    r = train(net, x[:500], y[:500], TrainConfig(epochs=6, lr=0.3, validation=0.3, patience=1),
              progress=False, log=quiet)
    assert r.best_epoch is not None
    best = max(h["val_accuracy"] for h in r.history)
    assert r.history[r.best_epoch - 1]["val_accuracy"] == best


def test_nan_loss_names_the_step(digits):
    x, y, _, _ = digits
    net = small_net()
    with net.layers[-1].edit() as (w, _):  # corrupt in place, past validation
        w[0, 0, 0] = np.inf
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step 1 \(epoch 1\)"):
        train(net, x[:100], y[:100], TrainConfig(epochs=1), progress=False, log=quiet)


@pytest.mark.parametrize("kw,match", [
    (dict(optimizer="rmsprop"), "optimizer must be one of"),
    (dict(schedule="linear"), "schedule must be one of"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(validation=1.0), "validation must be a fraction"),
    (dict(lr=-1.0), "lr must be positive"),
    (dict(patience=0), "patience must be >= 1"),
])
def test_bad_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_bad_training_data(digits):
    x, y, _, _ = digits
    net = small_net()
    with pytest.raises(ValueError, match="y must hold labels in"):
        train(net, x[:10], np.full(10, 10), progress=False, log=quiet)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 784\), got \(10, 783\)"):
        train(net, np.zeros((10, 783), np.float32), y[:10], progress=False, log=quiet)
    bad = np.zeros((10, 784), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        train(net, bad, y[:10], progress=False, log=quiet)
    with pytest.raises(ValueError, match="vote aggregate is not differentiable"):
        train(builders.partition_ensemble(), x[:10], y[:10], TrainConfig(aggregate_loss=1.0),
              progress=False, log=quiet)


def test_workspace_gives_the_same_step(rng):
    # the buffers of one step reused by the next: bit-identical results, for a ReLU chain and a
    # GEMM (dense) layer, through a change of batch size and back
    for net in (builders.hierarchy((8, 8), 3, levels=2, channels=(2, 3), fan_in=4, seed=0),
                builders.dense_mlp((8, 8), 3, hidden=(6,), seed=0)):
        ws = Workspace()
        for batch in (5, 5, 3, 5):
            x = rng.random((batch, 64), dtype=np.float32)
            y = rng.integers(0, 3, batch)
            for unit_weight in (0.0, 0.5):  # the shared mean-logits gradient, a per-unit one
                plain = net.loss_and_grad(x, y, unit_weight=unit_weight, n_threads=2)
                kept = net.loss_and_grad(x, y, unit_weight=unit_weight, n_threads=2,
                                         workspace=ws)
                assert kept.loss == plain.loss and kept.correct == plain.correct
                for (gw, gb), (hw, hb) in zip(plain.grads, kept.grads):
                    np.testing.assert_array_equal(gw, hw)
                    np.testing.assert_array_equal(gb, hb)
        assert ws.nbytes > 0
    with pytest.raises(TypeError, match="workspace"):
        net.loss_and_grad(x, y, workspace={})
