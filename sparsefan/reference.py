"""The readable twin of the C kernels: the definition of correct, in float64 NumPy.

Written to be read, not to be fast. Each function mirrors one kernel of csrc/fanin.c, on the
public ``(batch, units, channels)`` layout; the tests compare the two on every variant, and check
these functions' gradients against central finite differences.
"""
import numpy as np


def fanin_forward(x, connectivity, weight, bias, activation=None):
    """y[b, j, :] = act(bias[j] + sum over connections p = (j, t) of x[b, idx[p], :] @ W[p]).

    x (batch, n_in, c_in), weight (nnz, c_in, c_out), bias (n_out, c_out)
    -> y (batch, n_out, c_out), float64.
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    batch = x.shape[0]
    n_out, c_out = bias.shape
    y = np.empty((batch, n_out, c_out))
    for j in range(n_out):
        z = np.broadcast_to(bias[j], (batch, c_out)).copy()
        for p in range(connectivity.indptr[j], connectivity.indptr[j + 1]):
            i = connectivity.indices[p]
            z += x[:, i, :] @ weight[p]  # (batch, c_in) @ (c_in, c_out)
        y[:, j, :] = z
    if activation == "relu":
        y = np.maximum(y, 0.0)
    return y


def fanin_backward(x, connectivity, weight, bias, dy, activation=None):
    """Gradients of ``sum(dy * fanin_forward(x, ...))`` w.r.t. x, weight and bias.

    Returns (dx (batch, n_in, c_in), dW (nnz, c_in, c_out), db (n_out, c_out)), float64.
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    if activation == "relu":
        z = fanin_forward(x, connectivity, weight, bias)
        dy = dy * (z > 0)  # ReLU'(z), taking 0 at z = 0
    dx = np.zeros_like(x)
    dW = np.zeros_like(weight)
    db = dy.sum(axis=0)  # bias[j] is added to every example
    for j in range(connectivity.n_out):
        for p in range(connectivity.indptr[j], connectivity.indptr[j + 1]):
            i = connectivity.indices[p]
            # forward: y[:, j] += x[:, i] @ W[p]
            dW[p] = x[:, i, :].T @ dy[:, j, :]
            dx[:, i, :] += dy[:, j, :] @ weight[p].T
    return dx, dW, db


def relu(z):
    return np.maximum(z, 0.0)
