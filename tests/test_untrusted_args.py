"""Bad arguments get the right exception before any C call: thread counts, sizes, overlapping
buffers, batch sizes, float indices, loss weights, overflowing weights, output paths."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import sparsefan as sf
from helpers import run_fresh
from sparsefan import builders, io
from sparsefan._threads import max_threads, resolve_n_threads
from sparsefan.layers import MAX_ABS_PARAMETER
from sparsefan.train import TrainConfig, train


@pytest.fixture
def layer():
    return sf.FanIn(sf.Connectivity.random(20, 7, 3, seed=0), 1, 2, "relu", seed=0)


@pytest.mark.parametrize("n", [10**9, 2**31, 2**64])
def test_huge_thread_counts_are_capped_with_a_warning(layer, n):
    x = np.random.default_rng(0).random((5, 20), dtype=np.float32)
    want = layer.forward(x, n_threads=1)
    with pytest.warns(RuntimeWarning, match="more threads than"):
        got = layer.forward(x, n_threads=n)
    assert np.array_equal(got, want)
    with pytest.warns(RuntimeWarning):
        assert resolve_n_threads(n) <= max_threads()
    net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0)
    with pytest.warns(RuntimeWarning):
        assert np.array_equal(net.predict(x, n_threads=n), net.predict(x, n_threads=1))


def test_a_huge_omp_num_threads_is_capped():
    # the OpenMP runtime reads OMP_NUM_THREADS once, at startup: a fresh interpreter
    code = ("import warnings, numpy as np, sparsefan as sf\n"
            "layer = sf.FanIn(sf.Connectivity.random(20, 7, 3, seed=0), 1, 2, 'relu', seed=0)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    layer.forward(np.ones((2, 20), np.float32))\n"
            "assert any('more threads than' in str(m.message) for m in w), w\n")
    out = run_fresh(["-c", code], env={"OMP_NUM_THREADS": str(10**9),
                                       "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr


def test_sixteen_threads_are_not_capped():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_n_threads(16) in (16, 1)  # 1 without OpenMP


def test_output_buffers_must_not_overlap_inputs():
    xt = np.random.default_rng(0).random((20, 1, 4), dtype=np.float32)
    sq = sf.FanIn(sf.Connectivity.random(20, 20, 3, seed=0), 1, 1, seed=0)
    with pytest.raises(ValueError, match="out must not share memory with xt"):
        sq.forward_fm(xt, out=xt)
    y = sq.forward_fm(xt)
    dy = np.ones_like(y)
    with pytest.raises(ValueError, match="grad_input must not share memory with dyt"):
        sq.backward_fm(xt, dy, grad_input=dy)
    with pytest.raises(ValueError, match="grad_input must not share memory with xt"):
        sq.backward_fm(xt, dy, grad_input=xt)


@pytest.mark.parametrize("bs,exc", [(-1, ValueError), (0, ValueError), (2.5, TypeError)])
def test_unit_logits_batch_size(bs, exc):
    net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0)
    with pytest.raises(exc, match="batch_size"):
        net.unit_logits(np.ones((3, 20), np.float32), batch_size=bs)


@pytest.mark.parametrize("make", [
    lambda: sf.Connectivity.partitions(100, 10**12, 5),
    lambda: sf.Connectivity.random(100, 2**31, 1),
    lambda: sf.Connectivity.identity(2**31),
    lambda: sf.Connectivity.dense(2**20, 2**12),
    lambda: sf.Connectivity.gaussian((28, 28), 10**10, 9),
])
def test_oversized_tables_are_refused_before_any_allocation(make):
    with pytest.raises(ValueError, match="n_in|n_out|connections"):  # not a MemoryError
        make()


def test_rows_must_hold_integers():
    with pytest.raises(TypeError, match=r"rows\[0\] must hold integers"):
        sf.Connectivity.from_rows(10, [[1.7, 2.2]])
    assert sf.Connectivity.from_rows(10, [np.array([1, 2], np.int16), []]).nnz == 2


@pytest.mark.parametrize("kw,match", [
    (dict(aggregate_loss=-1.0), "aggregate_loss"), (dict(unit_loss=float("nan")), "unit_loss"),
    (dict(weight_decay=float("nan")), "weight_decay"), (dict(momentum=1.5), "momentum"),
    (dict(warmup_epochs=-1), "warmup_epochs"),
])
def test_bad_loss_weights_and_rates(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_overflowing_weights_are_refused_at_assignment_and_load(layer, tmp_path):
    with pytest.raises(ValueError, match="beyond"):
        layer.weight = np.full(layer.weight_shape, 3e38, np.float32)
    with pytest.raises(ValueError, match="beyond"):
        layer.bias = np.full(layer.bias_shape, -2 * MAX_ABS_PARAMETER, np.float32)
    with layer.edit() as (w, _):
        w[0, 0, 0] = 3e38
    with pytest.raises(ValueError, match="beyond"):
        layer.check_parameters()


def test_outputs_that_overflow_raise_instead_of_answering_class_zero():
    for aggregate in ("mean_logits", "mean_prob", "vote"):
        net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0,
                              aggregate=aggregate)
        for layer in net.layers:
            layer.weight = np.full(layer.weight_shape, 1e14, np.float32)
        x = np.full((4, 20), 1e12, np.float32)
        x[0] = 0.5
        for call in (net.predict, net.predict_proba, net.scores):
            with pytest.raises(FloatingPointError, match="overflowed"):
                call(x)
        net.predict(x[:1])  # the finite example alone is fine
    with pytest.raises(FloatingPointError):
        net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0)
        for layer in net.layers:
            layer.weight = np.full(layer.weight_shape, 1e14, np.float32)
        net.predict_certified(np.full((2, 20), 1e12, np.float32))


def test_a_checkpoint_path_naming_a_directory_fails_before_training(tmp_path):
    net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0)
    x = np.random.default_rng(0).random((50, 20), dtype=np.float32)
    y = np.arange(50) % 3
    d = tmp_path / "ckpt"
    d.mkdir()
    with pytest.raises(IsADirectoryError, match="checkpoint"):
        train(net, x, y, TrainConfig(epochs=1), checkpoint=d, progress=False, log=print)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(net, x, y, TrainConfig(epochs=1), checkpoint=tmp_path / "no" / "c.ckpt",
              progress=False, log=print)
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(d) == []


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that no longer runs
    stale = tmp_path / f".m.npz.tmp-{p.pid}-deadbeef"
    stale.write_bytes(b"x" * 1000)
    alive = tmp_path / f".m.npz.tmp-{os.getppid()}-cafe0000"  # a running writer's
    alive.write_bytes(b"y")
    other = tmp_path / f".other.npz.tmp-{p.pid}-deadbeef"  # another target's
    other.write_bytes(b"z")
    io.save_model(net, tmp_path / "m.npz")
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, other.name, "m.npz"])


def test_model_files_follow_the_umask(tmp_path):
    net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0)
    old = os.umask(0o022)
    try:
        io.save_model(net, tmp_path / "m.npz")
        os.umask(0o077)
        io.save_model(net, tmp_path / "private.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.npz").stat().st_mode & 0o777 == 0o600


def test_cli_info_into_a_closed_pipe_is_quiet(tmp_path):
    net = builders.direct((4, 5), 3, n_units=6, fan_in=4, hidden=(3,), seed=0)
    path = tmp_path / "m.npz"
    io.save_model(net, path, metadata={"notes": ["line %d" % i for i in range(40000)]})
    r = subprocess.run(f"'{sys.executable}' -m sparsefan info '{path}' | head -c 10",
                       shell=True, capture_output=True, text=True, cwd=tmp_path)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
