"""Threads and kills: results bit-identical for 1, 2, 7 and 16 threads on layers large enough
to split; concurrent predicts (also while another network trains) equal sequential ones; a
training run killed with SIGKILL resumes bit-identically; a killed save never leaves a partial
model file."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import builders, io
from sparsefan.train import TrainConfig, train

THREADS = (1, 2, 7, 16)


def big_net(seed=0):
    return builders.direct((28, 28), 10, n_units=784, fan_in=25, hidden=(8,), seed=seed)


def test_large_layer_bit_identical_for_every_thread_count():
    rng = np.random.default_rng(0)
    layer = sf.FanIn(sf.Connectivity.gaussian((28, 28), 1568, 49, seed=0), 1, 4, "relu", seed=0)
    x = rng.random((256, 784), dtype=np.float32)[:, :, None].copy()
    out = []
    for n in THREADS:
        y = layer.forward(x, n_threads=n)
        g = layer.backward(x, np.cos(y), y, n_threads=n)
        out.append((y, g.input, g.weight, g.bias))
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert np.array_equal(a, b)


def test_network_predict_and_training_step_bit_identical_for_every_thread_count():
    rng = np.random.default_rng(1)
    x = rng.random((300, 784), dtype=np.float32)
    y = rng.integers(0, 10, 300)
    results = []
    for n in THREADS:
        net = big_net()
        z = net.unit_logits(x, n_threads=n)
        r = net.loss_and_grad(x, y, n_threads=n)
        results.append([z, np.float64(r.loss)] + [g for pair in r.grads for g in pair])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_concurrent_predicts_equal_sequential_ones_also_while_another_network_trains():
    rng = np.random.default_rng(2)
    net = big_net()
    xs = [rng.random((int(rng.integers(1, 40)), 784), dtype=np.float32) for _ in range(64)]
    want = [net.predict_proba(x, n_threads=1) for x in xs]
    other = big_net(seed=5)
    xt = rng.random((512, 784), dtype=np.float32)
    yt = rng.integers(0, 10, 512)
    with ThreadPoolExecutor(9) as pool:
        trainer = pool.submit(train, other, xt, yt, TrainConfig(epochs=2, batch_size=64),
                              progress=False, log=lambda _: None)
        got = list(pool.map(lambda x: net.predict_proba(x, n_threads=2), xs * 4))
        trainer.result()
    for i, g in enumerate(got):
        assert np.array_equal(g, want[i % len(xs)])


TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from sparsefan import builders
    from sparsefan.train import TrainConfig, train
    rng = np.random.default_rng(0)
    x = rng.random((600, 36), dtype=np.float32)
    y = (x[:, :12].sum(axis=1) > 6).astype(np.int64) + (x[:, 12:24].sum(axis=1) > 6)
    net = builders.direct((6, 6), 3, n_units=12, fan_in=5, hidden=(4,), seed=1)
    cfg = TrainConfig(epochs=int(sys.argv[2]), batch_size=16, lr=1e-2)
    train(net, x, y, cfg, checkpoint=sys.argv[1], resume=True, progress=False,
          log=lambda s: print(s, flush=True))
    from sparsefan import io
    io.save_model(net, sys.argv[3])
""")


def run_script(tmp_path, script, *args, **kw):
    path = tmp_path / "script.py"
    path.write_text(script)
    return subprocess.Popen([sys.executable, str(path), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_training_killed_with_sigkill_resumes_bit_identically(tmp_path):
    full = run_script(tmp_path, TRAIN_SCRIPT, tmp_path / "full.ckpt", 6, tmp_path / "full.npz")
    assert full.wait(120) == 0, full.stderr.read()
    ckpt = tmp_path / "k.ckpt"
    killed = run_script(tmp_path, TRAIN_SCRIPT, ckpt, 6, tmp_path / "k.npz")
    for line in killed.stdout:  # kill it right after an epoch's checkpoint
        if line.startswith("epoch   3"):
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait(60)
    assert killed.returncode == -signal.SIGKILL and ckpt.exists()
    resumed = run_script(tmp_path, TRAIN_SCRIPT, ckpt, 6, tmp_path / "k.npz")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resumed from" in out
    a, b = io.load_model(tmp_path / "full.npz"), io.load_model(tmp_path / "k.npz")
    for la, lb in zip(a.layers, b.layers):
        assert np.array_equal(la.weight, lb.weight) and np.array_equal(la.bias, lb.bias)


SAVE_SCRIPT = textwrap.dedent("""
    import sys
    from sparsefan import builders, io
    net = builders.direct((28, 28), 10, n_units=1568, fan_in=49, hidden=(32,), seed=0)
    print("ready", flush=True)
    while True:
        io.save_model(net, sys.argv[1])
""")


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.45])
def test_a_save_killed_midway_never_leaves_a_partial_file(tmp_path, delay):
    target = tmp_path / "m.npz"
    p = run_script(tmp_path, SAVE_SCRIPT, target)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait(60)
    if target.exists():  # any complete file loads; never a torn one
        assert io.load_model(target).n_units == 1568
    net = builders.direct((4, 4), 3, n_units=4, fan_in=3, hidden=(2,), seed=0)
    io.save_model(net, target)  # the next write removes the killed writer's temporary
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "script.py"]
