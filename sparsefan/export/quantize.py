"""int8 quantization of a Network, calibrated on example inputs, and its exact NumPy emulation.

Scheme (the C runtime, csrc/runtime/sf_runtime.h, computes the same):

- weights: symmetric int8, one scale per (output unit j, output channel o):
  ``s_w[j, o] = max_{p in row j, c} |W[p, c, o]| / 127``, ``qW = round(W / s_w)``;
- activations: symmetric int8, one scale per layer input, ``s_x = max |x| / 127`` over the
  calibration set (or a percentile of |x|); the network's input is quantized the same way;
- a layer accumulates ``acc = sum qW * qx`` in int32, then in float32
  ``v = float(acc) * (s_x * s_w[j, o]) + bias[j, o]``, applies its activation and quantizes
  ``v / s_next`` (round half away from zero, clamp to [-127, 127]) for the next layer; the last
  layer's ``v`` are the float logits, aggregated as in the float network.

The emulation below repeats those float32 operations one for one, and sums the integer products
exactly (in float64, whose 53-bit mantissa holds every int32), so its logits equal the C
runtime's bit for bit on the same compiler settings (no fused multiply-add).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from sparsefan import aggregate as agg
from sparsefan.network import Network

QMAX = 127
_INT32_MAX = 2**31 - 1


def round_half_away(v: npt.ArrayLike) -> np.ndarray:
    """float32 -> int8 values exactly as the runtime's ``quantize``: clamp to [-127, 127],
    round half away from zero with float32 arithmetic, NaN -> 0."""
    v = np.asarray(v, dtype=np.float32)
    half = np.float32(0.5)
    with np.errstate(invalid="ignore"):
        pos = np.trunc(v + half)
        neg = -np.trunc(half - v)
        out = np.where(v >= 0, pos, np.where(v < 0, neg, np.float32(0)))
        out = np.where(v >= QMAX, QMAX, np.where(v <= -QMAX, -QMAX, out))
    return out.astype(np.int8)


@dataclass
class QuantizedLayer:
    """One layer's int8 tables (shapes as in FanIn)."""

    qweight: np.ndarray       # int8 (nnz, c_in, c_out)
    weight_scale: np.ndarray  # float32 (n_out, c_out)
    multiplier: np.ndarray    # float32 (n_out, c_out) = in_scale * weight_scale
    bias: np.ndarray          # float32 (n_out, c_out)
    in_scale: float           # scale of this layer's int8 input
    out_scale: float | None   # scale of its int8 output (None for the last layer)

    @property
    def out_inv_scale(self) -> np.float32:
        return np.float32(0.0) if self.out_scale is None else np.float32(1.0 / self.out_scale)


class QuantizedNetwork:
    """An int8 version of a :class:`~sparsefan.network.Network` (made by :func:`quantize_int8`).

    ``unit_logits`` / ``scores`` / ``predict`` mirror the Network's methods and compute exactly
    what the exported C code computes in its int8 mode.
    """

    def __init__(self, network: Network, layers: list[QuantizedLayer], in_scale: float,
                 calibration_size: int, percentile: float) -> None:
        self.network = network
        self.layers = layers
        self.in_scale = float(in_scale)
        self.calibration_size = int(calibration_size)
        self.percentile = float(percentile)
        self._matrices = None

    @property
    def in_inv_scale(self) -> np.float32:
        return np.float32(1.0 / self.in_scale)

    def _sparse(self):
        """Per layer, the integer weights as a (n_out*c_out, n_in*c_in) sparse matrix."""
        if self._matrices is None:
            mats = []
            for layer, q in zip(self.network.layers, self.layers):
                conn = layer.connectivity
                ci, co = layer.c_in, layer.c_out
                row = conn.row_of_connection().astype(np.int64)
                r = (row[:, None, None] * co + np.arange(co)[None, None, :])
                c = (conn.indices.astype(np.int64)[:, None, None] * ci
                     + np.arange(ci)[None, :, None])
                r, c = np.broadcast_arrays(r, c)
                mats.append(sp.csr_matrix(
                    (q.qweight.astype(np.float64).ravel(), (r.ravel(), c.ravel())),
                    shape=(conn.n_out * co, conn.n_in * ci)))
            self._matrices = mats
        return self._matrices

    def unit_logits(self, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Per-unit logits Z, shape (M, C, batch), float32 — as the int8 C runtime computes."""
        x = self.network.check_inputs(x)
        mats = self._sparse()
        net = self.network
        out = np.empty((net.n_units, net.n_classes, x.shape[0]), dtype=np.float32)
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size]
            a = round_half_away(xb.T * self.in_inv_scale)  # (n_in, batch) int8
            for layer, q, A in zip(net.layers, self.layers, mats):
                acc = A @ a.astype(np.float64)  # exact integer sums
                v = acc.astype(np.float32) * q.multiplier.reshape(-1, 1)
                v = v + q.bias.reshape(-1, 1)
                if layer.activation == "relu":
                    v = np.where(v < 0, np.float32(0), v)
                if q.out_scale is None:
                    out[:, :, s:s + xb.shape[0]] = v.reshape(net.n_units, net.n_classes, -1)
                else:
                    a = round_half_away(v * q.out_inv_scale)
        return out

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(batch, C) aggregate scores of the int8 model."""
        return agg.scores(self.unit_logits(x), self.network.aggregate)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.scores(x).argmax(axis=1)


def _abs_level(values, percentile):
    values = np.abs(values)
    if percentile >= 100.0:
        return float(values.max()) if values.size else 0.0
    return float(np.percentile(values, percentile))


def _scale(level):
    return level / QMAX if level > 0 and np.isfinite(level) else 1.0


def quantize_int8(network: Network, calibration: np.ndarray, percentile: float = 100.0,
                  batch_size: int = 2048) -> QuantizedNetwork:
    """Quantize ``network`` to int8 with activation scales calibrated on ``calibration``.

    Parameters
    ----------
    network : Network
    calibration : float32 array (n, n_in) or (n, *input_shape)
        Representative inputs (e.g. a few hundred training images, scaled as for training).
    percentile : float in (0, 100]
        Activation scales cover this percentile of |activation| over the calibration set
        (100: the maximum, nothing clips on the calibration data).

    Returns a :class:`QuantizedNetwork`.
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a sparsefan Network, got {type(network).__name__}")
    from sparsefan.export import check_exportable

    check_exportable(network)
    if isinstance(calibration, np.ndarray) and calibration.dtype == np.uint8:
        raise TypeError("calibration holds uint8 images: scale them as for training first "
                        "(sparsefan.train.as_float_inputs)")
    x = network.check_inputs(calibration)
    if x.shape[0] == 0:
        raise ValueError("calibration must hold at least one example")
    percentile = float(percentile)
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")

    # activation levels at every layer input (float network), streamed over the calibration set
    n_layers = len(network.layers)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_layers)]
    for s in range(0, x.shape[0], batch_size):
        acts = network.forward_fm(np.ascontiguousarray(x[s:s + batch_size].T[:, None, :]),
                                  keep=True)
        for i in range(n_layers):
            samples[i].append(acts[i].ravel() if percentile < 100.0
                              else np.abs(acts[i]).max(keepdims=True).ravel())
    scales = [_scale(_abs_level(np.concatenate(s), percentile)) for s in samples]

    layers = []
    for i, layer in enumerate(network.layers):
        conn = layer.connectivity
        W = layer.weight.astype(np.float64)
        absmax = np.abs(W).max(axis=1)  # (nnz, c_out)
        level = np.zeros((conn.n_out, layer.c_out))
        row = conn.row_of_connection()
        np.maximum.at(level, row, absmax)
        w_scale = np.where(level > 0, level / QMAX, 1.0)
        qw = np.clip(np.rint(W / w_scale[row][:, None, :]), -QMAX, QMAX).astype(np.int8)
        # int32 accumulators must not overflow: |acc| <= 127 * sum |qW| per (unit, channel)
        bound = np.zeros((conn.n_out, layer.c_out))
        np.add.at(bound, row, np.abs(qw.astype(np.int64)).sum(axis=1))
        if bound.size and QMAX * bound.max() > _INT32_MAX:
            raise ValueError(f"layer {i}: int8 accumulators could overflow int32 "
                             f"(fan-in x channels too large for the int8 export)")
        in_scale = scales[i]
        out_scale = scales[i + 1] if i + 1 < n_layers else None
        layers.append(QuantizedLayer(
            qweight=qw,
            weight_scale=w_scale.astype(np.float32),
            multiplier=(np.float32(in_scale) * w_scale.astype(np.float32)).astype(np.float32),
            bias=layer.bias.copy(),
            in_scale=in_scale, out_scale=out_scale))
    return QuantizedNetwork(network, layers, scales[0], x.shape[0], percentile)
