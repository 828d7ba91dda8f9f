"""Helpers shared by the tests (imported as ``from helpers import ...``; conftest.py keeps
only fixtures)."""
import os
import subprocess
import sys
import tempfile

import numpy as np

import sparsefan as sf

# the directory holding the sparsefan the tests import (site-packages, or the source tree when
# it is on PYTHONPATH): a fresh interpreter given it first imports the same package
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))


def fresh_env(**env):
    """os.environ with PACKAGE_PARENT first on PYTHONPATH and ``env`` set (None unsets)."""
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join(
        p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p)
    for key, value in env.items():
        full.pop(key, None)
        if value is not None:
            full[key] = value
    return full


def run_fresh(args, env=None, **kwargs):
    """subprocess.run of ``python *args`` importing the tests' sparsefan: PACKAGE_PARENT on the
    path, and run from a neutral directory (``python -c`` puts the working directory first on
    sys.path, and the repository root holds an unbuilt source tree)."""
    kwargs.setdefault("cwd", tempfile.gettempdir())
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 180)
    return subprocess.run([sys.executable, *args], env=fresh_env(**(env or {})), **kwargs)

TOL = 1e-5  # ||C - ref|| / ||ref||, float32 kernels against the float64 reference


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (||b|| = 0: the absolute error)."""
    b = np.asarray(b, dtype=np.float64)
    scale = np.linalg.norm(b)
    return np.linalg.norm(np.asarray(a, dtype=np.float64) - b) / (scale if scale > 0 else 1.0)


def layer_with_bias(conn, c_in, c_out, activation, seed=0):
    """A FanIn over ``conn`` with default weights and a random (nonzero) bias."""
    layer = sf.FanIn(conn, c_in, c_out, activation=activation, seed=seed)
    rng = np.random.default_rng(seed + 1)
    layer.bias = rng.standard_normal(layer.bias_shape).astype(np.float32)
    return layer


def make_connectivity(scheme, n_in, n_out, k, seed=0):
    """Every connectivity scheme, by name, for parametrized tests."""
    if scheme == "random":
        return sf.Connectivity.random(n_in, n_out, k, seed=seed)
    if scheme == "partitions":
        return sf.Connectivity.partitions(n_in, n_out, k, seed=seed)
    if scheme == "gaussian":
        # n_in must factor as H * W here; callers pick n_in = 6 * m
        return sf.Connectivity.gaussian((6, n_in // 6), n_out, k, seed=seed)
    if scheme == "identity":
        return sf.Connectivity.identity(n_in)
    if scheme == "dense":
        return sf.Connectivity.dense(n_in, n_out)
    if scheme == "ragged":
        r = np.random.default_rng(seed)
        rows = [r.choice(n_in, size=r.integers(0, min(n_in, 2 * k) + 1), replace=False)
                for _ in range(n_out)]
        return sf.Connectivity.from_rows(n_in, rows)
    raise ValueError(scheme)


def numeric_grad(f, arr, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of arr (in place)."""
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        up = f()
        arr[idx] = old - eps
        down = f()
        arr[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


def quiet(_):
    """A trainer log that prints nothing."""


def tiny_task(n, seed):
    """3 classes over 12 inputs: class c images are grey level c / 2 plus noise, so every unit
    sees evidence and some examples get a certificate worth testing."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.clip(y[:, None] / 2 + 0.2 * rng.standard_normal((n, 12)), 0, 1).astype(np.float32)
    return x, y


def check_resume_is_bit_identical(make_net, x, y, config, checkpoint):
    """Train make_net() uninterrupted, and again interrupted after epoch 1 and resumed from
    ``checkpoint``: the weights must be bit-identical."""
    import pytest

    from sparsefan.train import train

    full = make_net()
    train(full, x, y, config, progress=False, log=quiet)

    class Interrupt(Exception):
        pass

    def stop(line):
        if line.startswith("epoch   2"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train(make_net(), x, y, config, checkpoint=checkpoint, progress=False, log=stop)
    resumed = make_net()
    train(resumed, x, y, config, checkpoint=checkpoint, resume=True, progress=False, log=quiet)
    for a, b in zip(full.layers, resumed.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)

