"""The package's type hints (PEP 561: it ships ``py.typed``), checked with mypy on code that uses
the public API as the README does."""
import re
import sys
import textwrap
from pathlib import Path

import pytest

import sparsefan

# the README's usage: build, train (arrays and batches), predict, certify, attack, save and load
USAGE = """
import os

import numpy as np

import sparsefan as sf
from sparsefan import attacks, builders, certify
from sparsefan.network import Certified
from sparsefan.train import TrainConfig, TrainResult, as_float_inputs, train


def main(path: str | os.PathLike[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 3, 64)
    net: sf.Network = builders.direct((8, 8), n_classes=3, fan_in=9, hidden=(4,))
    result: TrainResult = train(net, x, y.astype(np.int64),
                                TrainConfig(epochs=1, batch_size=16, lr=3e-2), progress=False)
    train(net, [(x[:32], y[:32]), (x[32:], y[32:])],
          config=TrainConfig(epochs=1, schedule="constant"), progress=False)
    xt = as_float_inputs(x)
    accuracy = float((net.predict(xt) == y).mean())
    summary: str = net.summary()
    sf.io.save_model(net, path, metadata={"accuracy": accuracy})
    loaded: sf.Network = sf.load_model(path)
    r0: np.ndarray = certify.l0_radius(loaded, xt[:8], y[:8])
    r2: np.ndarray = certify.l2_radius(loaded, xt[:8], y[:8])
    adv = attacks.greedy_l0(loaded, xt[:4], y[:4])
    robust: float = adv.robust_accuracy(10)
    out: Certified = loaded.predict_certified(xt)

    conn = sf.Connectivity.gaussian((8, 8), n_out=16, k=9, seed=0)
    layer = sf.FanIn(conn, c_in=1, c_out=1, activation="relu", seed=0)
    xs = rng.random((4, 64)).astype(np.float32)
    ys = layer.forward(xs)
    g = layer.backward(xs, dy=np.ones_like(ys), y=ys)
    print(result.history, summary, r0, r2, adv.x_adv, adv.size, robust, out.classes,
          out.l2_radius, out.l0_radius, g.weight.shape, g.bias.shape)
"""

# calls the annotations refuse: every line marked "# error" must be reported, and nothing else
MISUSE = """
import numpy as np

import sparsefan as sf
from sparsefan import builders, certify

net = builders.direct((8, 8), n_classes=3, fan_in="9")  # error
net.predict([[0.0] * 64])  # error
radius: str = certify.l2_radius(net, np.zeros((2, 64), np.float32), [0, 1])  # error
sf.load_model(3)  # error
sf.FanIn(sf.Connectivity.identity(4), c_out=2.5)  # error
"""


def test_py_typed_ships_with_the_package():
    assert (Path(sparsefan.__file__).parent / "py.typed").is_file()


def test_public_api_type_checks(tmp_path, monkeypatch):
    api = pytest.importorskip("mypy.api")
    usage, misuse = tmp_path / "usage.py", tmp_path / "misuse.py"
    usage.write_text(textwrap.dedent(USAGE))
    misuse.write_text(textwrap.dedent(MISUSE))
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    # from an empty directory mypy finds sparsefan where this interpreter's sys.path does (the
    # package imported above), under PEP 561's rules: without py.typed it would be an error
    monkeypatch.chdir(tmp_path)
    stdout, stderr, status = api.run([
        "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
        "--python-executable", sys.executable, "--no-error-summary", "--hide-error-context",
        usage.name, misuse.name])
    assert not stderr, stderr
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if not e.startswith(misuse.name + ":")], stdout
    flagged = {int(re.match(r"misuse\.py:(\d+):", e).group(1)) for e in errors}
    marked = {i for i, line in enumerate(misuse.read_text().splitlines(), 1)
              if line.endswith("# error")}
    assert flagged == marked, stdout
    assert status == 1
