"""Every bad input gets a ValueError/TypeError naming the argument, before any C code runs."""
import numpy as np
import pytest

import sparsefan as sf
from sparsefan import Connectivity, FanIn


@pytest.fixture
def layer():
    return FanIn(Connectivity.random(10, 6, 3, seed=0), c_in=2, c_out=3, activation="relu",
                 seed=0)


@pytest.fixture
def x():
    return np.ones((4, 10, 2), np.float32)


def test_forward_wrong_dtype(layer, x):
    with pytest.raises(TypeError, match="x must have dtype float32, got float64"):
        layer.forward(x.astype(np.float64))


def test_forward_not_an_array(layer):
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        layer.forward([[1.0] * 10])


@pytest.mark.parametrize("shape,match", [
    ((4, 11, 2), r"x must have shape \(\*, 10, 2\), got \(4, 11, 2\)"),
    ((4, 10, 1), r"x must have shape \(\*, 10, 2\)"),
    ((4, 10), r"x must have shape \(batch, 10, 2\), got \(4, 10\)"),
    ((10,), r"x must have shape \(\*, 10, 2\)"),
    ((1, 4, 10, 2), r"x must have shape"),
])
def test_forward_wrong_shape(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.forward(np.ones(shape, np.float32))


def test_forward_non_contiguous(layer):
    x = np.ones((10, 4, 2), np.float32).transpose(1, 0, 2)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        layer.forward(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_forward_nan_inf(layer, x, bad):
    x[1, 2, 0] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        layer.forward(x)


def test_backward_bad_dy_and_missing_y(layer, x):
    y = layer.forward(x)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 6, 3\)"):
        layer.backward(x, np.ones((4, 6, 2), np.float32), y)
    with pytest.raises(TypeError, match="dy must have dtype float32"):
        layer.backward(x, y.astype(np.float64), y)
    dy = np.ones_like(y)
    dy[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="dy contains NaN or Inf"):
        layer.backward(x, dy, y)
    with pytest.raises(ValueError, match="y \\(the forward output\\) is required"):
        layer.backward(x, np.ones_like(y))
    with pytest.raises(ValueError, match=r"y must have shape \(4, 6, 3\)"):
        layer.backward(x, np.ones_like(y), y[:2])


def test_feature_major_buffers(layer):
    xt = np.ones((10, 2, 5), np.float32)
    with pytest.raises(ValueError, match=r"xt must have shape \(10, 2, \*\)"):
        layer.forward_fm(np.ones((10, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(6, 3, 5\)"):
        layer.forward_fm(xt, out=np.empty((6, 3, 4), np.float32))
    ro = np.empty((6, 3, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        layer.forward_fm(xt, out=ro)
    dyt = np.ones((6, 3, 5), np.float32)
    yt = layer.forward_fm(xt)
    with pytest.raises(ValueError, match=r"grad_weight must have shape \(18, 2, 3\)"):
        layer.backward_fm(xt, dyt, yt, grad_weight=np.zeros((18, 2, 2), np.float32))
    with pytest.raises(TypeError, match="grad_bias must have dtype float32"):
        layer.backward_fm(xt, dyt, yt, grad_bias=np.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"grad_input must have shape \(10, 2, 5\)"):
        layer.backward_fm(xt, dyt, yt, grad_input=np.zeros((10, 2, 4), np.float32))


def test_mismatched_weights_and_bias():
    conn = Connectivity.random(10, 6, 3, seed=0)
    with pytest.raises(ValueError, match=r"weight must have shape \(18, 1, 1\), got \(17, 1, 1\)"):
        FanIn(conn, weight=np.zeros((17, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(6, 2\)"):
        FanIn(conn, c_out=2, bias=np.zeros((6, 1), np.float32))
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        FanIn(conn, weight=np.zeros((18, 1, 1)))
    w = np.zeros((18, 1, 1), np.float32)
    w[3] = np.inf
    with pytest.raises(ValueError, match="weight contains NaN or Inf"):
        FanIn(conn, weight=w)
    layer = FanIn(conn, seed=0)
    with pytest.raises(ValueError, match="weight must be C-contiguous"):
        layer.weight = np.zeros((18, 1, 2), np.float32)[:, :, :1]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(connectivity="abc"), TypeError, "connectivity must be a sparsefan.Connectivity"),
    (dict(c_in=0), ValueError, "c_in must be >= 1"),
    (dict(c_out=1.5), TypeError, "c_out must be an int"),
    (dict(activation="tanh"), ValueError, "activation must be one of"),
    (dict(n_threads=0), ValueError, "n_threads=0 is not a thread count"),
    (dict(n_threads="2"), TypeError, "n_threads must be an int or None"),
])
def test_bad_layer_arguments(kwargs, exc, match):
    args = dict(connectivity=Connectivity.random(10, 6, 3, seed=0))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        FanIn(**args)


def test_n_threads_zero_on_a_call(layer, x):
    with pytest.raises(ValueError, match="n_threads=0"):
        layer.forward(x, n_threads=0)


def test_layout_helpers_validate():
    with pytest.raises(TypeError, match="x must have dtype float32"):
        sf.to_feature_major(np.ones((2, 3)))
    with pytest.raises(ValueError, match="xt must have 3 dimensions"):
        sf.from_feature_major(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="squeeze_channels needs 1 channel"):
        sf.from_feature_major(np.ones((2, 3, 4), np.float32), squeeze_channels=True)
