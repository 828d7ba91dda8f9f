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
    elif activation == "maxmin":  # channels (2i, 2i+1) -> (max, min) of the pair
        a, b = y[:, :, 0::2], y[:, :, 1::2]
        y = np.stack([np.maximum(a, b), np.minimum(a, b)], axis=-1).reshape(y.shape)
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
    elif activation == "maxmin":
        z = fanin_forward(x, connectivity, weight, bias)
        first = z[:, :, 0::2] >= z[:, :, 1::2]  # the pair's max is its first channel
        d = np.empty_like(dy)
        d[:, :, 0::2] = np.where(first, dy[:, :, 0::2], dy[:, :, 1::2])
        d[:, :, 1::2] = np.where(first, dy[:, :, 1::2], dy[:, :, 0::2])
        dy = d
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


# -- networks -----------------------------------------------------------------------------------

def network_unit_logits(x, layers):
    """Per-unit logits Z (M, C, batch) of a chain of FanIn layers, composed from
    ``fanin_forward``. ``layers`` holds objects with connectivity / weight / bias / activation."""
    h = np.asarray(x, dtype=np.float64).reshape(len(x), -1, 1)
    for layer in layers:
        h = fanin_forward(h, layer.connectivity, layer.weight, layer.bias, layer.activation)
    return np.transpose(h, (1, 2, 0))


def network_loss(x, y, layers, aggregate, aggregate_weight=1.0, unit_weight=0.0):
    """The training loss of a network, written out directly (no gradients): for finite
    differences. Cross-entropy of the aggregate and/or the mean per-unit cross-entropy, against
    int labels y (B,) or soft targets y (B, C)."""
    Z = network_unit_logits(x, layers)  # (M, C, B)
    M, C, B = Z.shape
    y = np.asarray(y)
    target = np.eye(C)[y] if y.ndim == 1 else y.astype(np.float64)  # (B, C)

    def cross_entropy(logp):  # logp (C, B)
        return -np.mean([sum(target[b, c] * logp[c, b] for c in range(C) if target[b, c])
                         for b in range(B)])

    total = 0.0
    if aggregate_weight:
        if aggregate == "mean_logits":
            s = Z.mean(axis=0)  # (C, B)
            logp = s - np.log(np.exp(s - s.max(0)).sum(0)) - s.max(0)
            total += aggregate_weight * cross_entropy(logp)
        elif aggregate == "mean_prob":
            p = np.exp(Z - Z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            total += aggregate_weight * cross_entropy(np.log(p.mean(axis=0)))
        else:
            raise ValueError(aggregate)
    if unit_weight:
        ce = 0.0
        for j in range(M):
            s = Z[j]
            ce += cross_entropy(s - s.max(0) - np.log(np.exp(s - s.max(0)).sum(0)))
        total += unit_weight * ce / M
    return total


# -- int8 inference ------------------------------------------------------------------------------
# The readable twin of csrc/int8.c and of the exported C runtime's int8 path
# (csrc/runtime/sf_runtime.c): the same integer sums (exact, in int64), then the same float32
# operations one at a time (no fused multiply-add), so its results are the kernels' bit for bit.

QMAX = 127


def round_half_away(v):
    """float32 values -> int8 as the runtime's ``quantize``: clamp to [-127, 127], round half
    away from zero with float32 arithmetic (trunc(v + 0.5f), or -trunc(0.5f - v) below zero),
    NaN -> 0."""
    v = np.asarray(v, dtype=np.float32)
    half = np.float32(0.5)
    with np.errstate(invalid="ignore"):
        pos = np.trunc(v + half)
        neg = -np.trunc(half - v)
        out = np.where(v >= 0, pos, np.where(v < 0, neg, np.float32(0)))
        out = np.where(v >= QMAX, QMAX, np.where(v <= -QMAX, -QMAX, out))
    return out.astype(np.int8)


def int8_fanin_forward(qx, connectivity, qweight, multiplier, bias, relu, out_inv_scale=None):
    """One int8 layer: acc[b, j, o] = sum over connections p = (j, t) and channels c of
    qweight[p, c, o] * qx[b, idx[p], c] (exact), then v = float32(acc) * multiplier, v = v +
    bias, ReLU, and the next layer's int8 input round_half_away(v * out_inv_scale) -- or, with
    ``out_inv_scale`` None (the last layer), v itself.

    qx (batch, n_in, c_in) int8, qweight (nnz, c_in, c_out) int8, multiplier and bias
    (n_out, c_out) float32 -> int8 or float32 (batch, n_out, c_out).
    """
    qx = np.asarray(qx).astype(np.int64)
    qweight = np.asarray(qweight).astype(np.int64)
    batch = qx.shape[0]
    n_out, c_out = bias.shape
    acc = np.zeros((batch, n_out, c_out), dtype=np.int64)
    for j in range(n_out):
        p0, p1 = connectivity.indptr[j], connectivity.indptr[j + 1]
        gathered = qx[:, connectivity.indices[p0:p1], :].reshape(batch, -1)  # (batch, k*c_in)
        acc[:, j, :] = gathered @ qweight[p0:p1].reshape(-1, c_out)
    v = acc.astype(np.float32) * np.asarray(multiplier, dtype=np.float32)
    v = v + np.asarray(bias, dtype=np.float32)
    if relu:
        v = np.where(v < 0, np.float32(0), v)
    if out_inv_scale is None:
        return v
    return round_half_away(v * np.float32(out_inv_scale))


def int8_network_unit_logits(x, qnet):
    """Per-unit logits Z (M, C, batch), float32, of a QuantizedNetwork on x (batch, n_in):
    the input quantized with the network's input scale, then ``int8_fanin_forward`` per layer."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    h = round_half_away(x * np.float32(qnet.in_inv_scale))[:, :, None]
    for layer in qnet.layers:
        out_inv = None if layer.out_scale is None else layer.out_inv_scale
        h = int8_fanin_forward(h, layer.connectivity, layer.qweight, layer.multiplier,
                               layer.bias, layer.activation == "relu", out_inv)
    return np.ascontiguousarray(np.transpose(h, (1, 2, 0)))
