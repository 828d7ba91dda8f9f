"""int8 networks: quantized from a float Network on calibration inputs, run by the engine's
int8 kernels, exported to C (``sparsefan.export.export_c``) with the same arithmetic.

    q = sparsefan.quantize(network, calibration_x)   # a QuantizedNetwork
    q.predict(x), q.predict_proba(x), q.scores(x), q.unit_logits(x)
    sparsefan.save_model(q, path); sparsefan.io.load_quantized(path)

Scheme -- one implementation, shared by the engine (csrc/int8.h) and the exported C runtime
(csrc/runtime/sf_runtime.h):

- weights: symmetric int8, one scale per (output unit j, output channel o):
  ``s_w[j, o] = max_{p in row j, c} |W[p, c, o]| / 127``, ``qW = round(W / s_w)``;
- activations: symmetric int8, one scale per layer input, ``s_x = max |x| / 127`` over the
  calibration set (or a percentile of |x|); the network's input is quantized the same way;
- a layer accumulates ``acc = sum qW * qx`` in int32, then in float32
  ``v = float(acc) * (s_x * s_w[j, o]) + bias[j, o]`` (a multiply, then an add: two roundings),
  applies its activation and quantizes ``v / s_next`` (round half away from zero, clamp to
  [-127, 127]) for the next layer; the last layer's ``v`` are the float logits, aggregated as
  in the float network.

The readable twin is :func:`sparsefan.reference.int8_network_unit_logits`; the tests check the
kernels (every variant) and the compiled C export against it, bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

from sparsefan import _engine
from sparsefan import aggregate as agg
from sparsefan._threads import resolve_n_threads
from sparsefan._validation import check_array, check_chain, check_int
from sparsefan.connectivity import Connectivity
from sparsefan.layers import MAX_ABS_PARAMETER
from sparsefan.reference import QMAX, round_half_away

INT32_MAX = 2**31 - 1
ACTIVATIONS = (None, "relu")

__all__ = ["quantize", "QuantizedNetwork", "QuantizedLayer", "round_half_away", "QMAX",
           "check_accumulators"]


def _frozen(a, dtype):
    a = np.array(a, dtype=dtype, order="C", copy=True)
    a.flags.writeable = False
    return a


def check_accumulators(connectivity, qweight, where="layer"):
    """Raise ValueError unless every int32 sum of the layer is safe: |qW| <= 127 (int8 values
    of -128 would make the kernels' int16 pair sums saturate) and 127 * sum |qW| <= INT32_MAX
    for every (unit, output channel)."""
    qweight = np.asarray(qweight)
    if qweight.size and int(qweight.min()) < -QMAX:
        raise ValueError(f"{where}: int8 weights must lie in [-127, 127], got "
                         f"{int(qweight.min())}")
    n_out, c_out = connectivity.n_out, qweight.shape[2] if qweight.ndim == 3 else 1
    bound = np.zeros((n_out, c_out), dtype=np.int64)
    if qweight.size:
        np.add.at(bound, connectivity.row_of_connection(),
                  np.abs(qweight.astype(np.int64)).sum(axis=1))
    if bound.size and QMAX * int(bound.max()) > INT32_MAX:
        raise ValueError(f"{where}: int8 accumulators could overflow int32 (fan-in x channels "
                         f"too large for int8)")


class QuantizedLayer:
    """One int8 layer (read-only): the FanIn's connectivity and shapes, its int8 weights with
    one scale per (output unit, channel), its float32 bias, and its input and output scales.

    ``multiplier`` = float32(in_scale) * weight_scale (float32), the factor the kernels apply to
    each int32 sum; ``out_scale`` is the next layer's ``in_scale`` (None for the last layer).
    """

    __slots__ = ("connectivity", "c_in", "c_out", "activation", "qweight", "weight_scale",
                 "bias", "in_scale", "out_scale", "multiplier")

    def __init__(self, connectivity, c_in, c_out, activation, qweight, weight_scale, bias,
                 in_scale, out_scale):
        if not isinstance(connectivity, Connectivity):
            raise TypeError(f"connectivity must be a sparsefan.Connectivity, got "
                            f"{type(connectivity).__name__}")
        c_in, c_out = check_int(c_in, "c_in", 1), check_int(c_out, "c_out", 1)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be None or 'relu' for int8, got {activation!r}")
        qweight = check_array(np.ascontiguousarray(qweight), "qweight", np.int8,
                              shape=(connectivity.nnz, c_in, c_out))
        weight_scale = check_array(np.ascontiguousarray(weight_scale), "weight_scale",
                                   np.float32, shape=(connectivity.n_out, c_out), finite=True)
        bias = check_array(np.ascontiguousarray(bias), "bias", np.float32,
                           shape=(connectivity.n_out, c_out), finite=True)
        if weight_scale.size and not (weight_scale > 0).all():
            raise ValueError("weight_scale must be positive")
        for what, a in (("weight_scale", weight_scale), ("bias", bias)):
            if a.size and float(np.abs(a).max()) > MAX_ABS_PARAMETER:
                raise ValueError(f"{what} holds values beyond {MAX_ABS_PARAMETER:g} in "
                                 f"magnitude (float32 arithmetic would overflow)")
        in_scale = _check_scale(in_scale, "in_scale")
        out_scale = None if out_scale is None else _check_scale(out_scale, "out_scale")
        check_accumulators(connectivity, qweight)
        put = object.__setattr__
        put(self, "connectivity", connectivity)
        put(self, "c_in", c_in)
        put(self, "c_out", c_out)
        put(self, "activation", activation)
        put(self, "qweight", _frozen(qweight, np.int8))
        put(self, "weight_scale", _frozen(weight_scale, np.float32))
        put(self, "bias", _frozen(bias, np.float32))
        put(self, "in_scale", in_scale)
        put(self, "out_scale", out_scale)
        put(self, "multiplier", _frozen(np.float32(in_scale) * self.weight_scale, np.float32))

    def __setattr__(self, name, value):
        raise AttributeError("a QuantizedLayer is read-only (quantize the float network again)")

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k in self.__slots__:
            v = state[k]
            if isinstance(v, np.ndarray):
                v = _frozen(v, v.dtype)
            object.__setattr__(self, k, v)

    @property
    def n_in(self):
        return self.connectivity.n_in

    @property
    def n_out(self):
        return self.connectivity.n_out

    @property
    def out_inv_scale(self):
        """float32 1 / out_scale (0 for the last layer), as the kernels and the export use it."""
        return np.float32(0.0) if self.out_scale is None else np.float32(1.0 / self.out_scale)

    @property
    def nbytes(self):
        """Bytes of the int8 weights, scales, bias and index tables."""
        c = self.connectivity
        return (self.qweight.nbytes + self.weight_scale.nbytes + self.bias.nbytes
                + c.indptr.nbytes + c.indices.nbytes)

    def __repr__(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return (f"QuantizedLayer({self.connectivity!r}, c_in={self.c_in}, c_out={self.c_out}"
                f"{act})")


def _check_scale(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value) and value > 0
    if ok:  # the kernels use float32(scale) and float32(1 / scale): both finite and positive
        with np.errstate(over="ignore", under="ignore"):
            f, inv = np.float32(value), np.float32(1.0 / value)
        ok = bool(np.isfinite(f) and f > 0 and np.isfinite(inv) and inv > 0)
    if not ok:
        raise ValueError(f"{name} must be a positive float whose float32 value and inverse "
                         f"are finite and nonzero, got {value}")
    return value


class QuantizedNetwork:
    """An int8 network: the layers of a :class:`~sparsefan.network.Network` quantized by
    :func:`quantize` (or read by :func:`sparsefan.io.load_quantized`).

    ``unit_logits`` / ``scores`` / ``predict_proba`` / ``predict`` mirror the Network's methods
    and run the engine's int8 kernels, every layer in one C call: int8 weights and
    activations, int32 sums, the exported C runtime's float32 requantization. The per-unit
    logits equal the exported int8 C code's bit for bit; the aggregate is the float network's
    (in float64, where the C runtime sums in float32).

    Parameters
    ----------
    layers : list of QuantizedLayer, chained as a Network's (the first has c_in = 1, the last
        c_out = n_classes and no activation; each out_scale is the next in_scale)
    n_classes, aggregate, input_shape, name : as the Network's
    calibration_size : int, percentile : float -- how the scales were calibrated (kept in
        model files)
    """

    def __init__(self, layers, n_classes, aggregate="mean_logits", input_shape=None,
                 name=None, calibration_size=0, percentile=100.0):
        layers = tuple(layers)
        self.n_classes = check_int(n_classes, "n_classes", 2)
        _check_chain(layers, self.n_classes)
        if aggregate not in agg.AGGREGATES:
            raise ValueError(f"aggregate must be one of {agg.AGGREGATES}, got {aggregate!r}")
        n_in = layers[0].n_in
        input_shape = (n_in,) if input_shape is None else tuple(int(s) for s in input_shape)
        if any(s < 1 for s in input_shape) or math.prod(input_shape) != n_in:
            raise ValueError(f"input_shape {input_shape} does not hold n_in = {n_in} values")
        self.layers = layers
        self.aggregate = aggregate
        self.input_shape = input_shape
        self.name = name or "network"
        self.calibration_size = check_int(calibration_size, "calibration_size", 0)
        self.percentile = float(percentile)
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        self.metadata = {}

    # -- structure -----------------------------------------------------------------------------

    @property
    def n_in(self):
        return self.layers[0].n_in

    @property
    def n_units(self):
        return self.layers[-1].n_out

    @property
    def in_scale(self):
        return self.layers[0].in_scale

    @property
    def in_inv_scale(self):
        return np.float32(1.0 / self.in_scale)

    @property
    def nbytes(self):
        return sum(layer.nbytes for layer in self.layers)

    def __repr__(self):
        return (f"QuantizedNetwork({self.name!r}, int8, n_in={self.n_in}, "
                f"layers={len(self.layers)}, n_units={self.n_units}, "
                f"n_classes={self.n_classes}, aggregate={self.aggregate!r})")

    # -- inference -----------------------------------------------------------------------------

    def check_inputs(self, x):
        """``x`` as the validated (batch, n_in) float32 array: (batch, n_in) or
        (batch, *input_shape), C-contiguous float32, finite (NaN/Inf raise ValueError)."""
        if isinstance(x, np.ndarray) and x.ndim > 2 and x.shape[1:] == self.input_shape:
            x = x.reshape(x.shape[0], -1)
        return check_array(x, "x", np.float32, shape=(None, self.n_in), finite=True)

    def unit_logits(self, x, n_threads=None):
        """Per-unit logits Z, shape (M, C, batch), float32: one C call for every layer."""
        return self._logits(self.check_inputs(x), resolve_n_threads(n_threads))

    def _logits(self, x, n):
        """unit_logits for a checked x and a resolved thread count."""
        return _engine.int8_forward(_engine.int8_plan(self), x, n).reshape(
            self.n_units, self.n_classes, x.shape[0])

    def reference_unit_logits(self, x):
        """The same logits from the readable NumPy twin (slow; for checks)."""
        from sparsefan import reference

        return reference.int8_network_unit_logits(self.check_inputs(x), self)

    def _aggregate(self, x, n_threads, batch_size, what):
        x = self.check_inputs(x)
        n = resolve_n_threads(n_threads)
        batch_size = check_int(batch_size, "batch_size", 1)
        if x.shape[0] <= batch_size:
            return self._aggregate_chunk(x, n, what)
        return np.concatenate([self._aggregate_chunk(x[s:s + batch_size], n, what)
                               for s in range(0, x.shape[0], batch_size)])

    def _aggregate_chunk(self, x, n, what):
        Z = self._logits(x, n)
        if what == "scores" and self.aggregate == "mean_logits":  # the common case, lean
            S = agg.mean_logits(Z).T
            if not np.isfinite(S).all():
                _refuse_overflow(self.aggregate, Z, S, False)
            return S
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            S = (agg.probabilities(Z, self.aggregate) if what == "proba"
                 else agg.scores(Z, self.aggregate))
        _refuse_overflow(self.aggregate, Z, S, what != "proba" and self.aggregate == "mean_prob")
        return S

    def scores(self, x, n_threads=None, batch_size=1024):
        """(batch, C) aggregate scores (as ``Network.scores``), computed ``batch_size``
        examples at a time."""
        return self._aggregate(x, n_threads, batch_size, "scores")

    def predict_proba(self, x, n_threads=None, batch_size=1024):
        """(batch, C) probabilities of the aggregate (as ``Network.predict_proba``)."""
        return self._aggregate(x, n_threads, batch_size, "proba")

    def predict(self, x, n_threads=None, batch_size=1024):
        """(batch,) predicted class (argmax of the scores; ties -> lowest class)."""
        return self.scores(x, n_threads, batch_size).argmax(axis=1)


def _refuse_overflow(aggregate, Z, S, allow_neg_inf):
    agg.refuse_overflow(aggregate, Z, S, "the int8 network's", "scales or biases too large",
                        allow_neg_inf)


def _check_chain(layers, n_classes):
    """Raise unless ``layers`` is a chain of QuantizedLayers the int8 C call can run."""
    check_chain(layers, QuantizedLayer, n_classes)
    for i in range(1, len(layers)):
        a, b = layers[i - 1], layers[i]
        if a.out_scale != b.in_scale:
            raise ValueError(f"layers[{i - 1}].out_scale ({a.out_scale}) must be layers[{i}]"
                             f".in_scale ({b.in_scale})")
    if layers[-1].out_scale is not None:
        raise ValueError("the last layer emits float logits: its out_scale must be None")


# -- quantization -----------------------------------------------------------------------------

def _abs_level(values, percentile):
    values = np.abs(values)
    if percentile >= 100.0:
        return float(values.max()) if values.size else 0.0
    return float(np.percentile(values, percentile))


def _scale(level):
    return level / QMAX if level > 0 and np.isfinite(level) else 1.0


def quantize_weights(weight, connectivity):
    """(qweight int8 (nnz, c_in, c_out), weight_scale float32 (n_out, c_out)): symmetric
    int8 with one scale per (output unit, output channel), max |W| / 127 over the unit's
    connections and input channels (1 for a unit whose weights are all zero)."""
    W = np.asarray(weight, dtype=np.float64)
    level = np.zeros((connectivity.n_out, W.shape[2]))
    row = connectivity.row_of_connection()
    if W.size:
        np.maximum.at(level, row, np.abs(W).max(axis=1))
    w_scale = np.where(level > 0, level / QMAX, 1.0)
    qw = np.clip(np.rint(W / w_scale[row][:, None, :]), -QMAX, QMAX).astype(np.int8)
    return qw, w_scale.astype(np.float32)


def quantize(network, calibration, percentile=100.0, batch_size=2048):
    """An int8 :class:`QuantizedNetwork` of ``network``, its activation scales calibrated on
    ``calibration`` (the C export's int8 mode takes the same object).

    Parameters
    ----------
    network : Network with ReLU or linear layers (MaxMin is refused)
    calibration : float32 array (n, n_in) or (n, *input_shape)
        Representative inputs (e.g. a few hundred training images, scaled as for training).
    percentile : float in (0, 100]
        Activation scales cover this percentile of |activation| over the calibration set
        (100: the maximum, nothing clips on the calibration data).
    batch_size : int, examples per calibration pass.

    Raises ValueError for a layer whose int32 accumulators could overflow.
    """
    from sparsefan.network import Network

    if not isinstance(network, Network):
        raise TypeError(f"network must be a sparsefan Network, got {type(network).__name__}")
    for i, layer in enumerate(network.layers):
        if layer.activation not in ACTIVATIONS:
            raise ValueError(f"layers[{i}] has activation {layer.activation!r}: int8 (and the C "
                             f"and ONNX exports) support ReLU and linear layers")
    if isinstance(calibration, np.ndarray) and calibration.dtype == np.uint8:
        raise TypeError("calibration holds uint8 images: scale them as for training first "
                        "(sparsefan.train.as_float_inputs)")
    x = calibration
    if isinstance(x, np.ndarray) and x.ndim > 2 and x.shape[1:] == network.input_shape:
        x = x.reshape(x.shape[0], -1)
    x = check_array(x, "calibration", np.float32, shape=(None, network.n_in), finite=True)
    if x.shape[0] == 0:
        raise ValueError("calibration must hold at least one example")
    percentile = float(percentile)
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    batch_size = check_int(batch_size, "batch_size", 1)

    # activation levels at every layer input (float network), streamed over the calibration set
    n_layers = len(network.layers)
    samples = [[] for _ in range(n_layers)]
    for s in range(0, x.shape[0], batch_size):
        acts = network.forward_fm(np.ascontiguousarray(x[s:s + batch_size].T[:, None, :]),
                                  keep=True)
        for i in range(n_layers):
            samples[i].append(acts[i].ravel() if percentile < 100.0
                              else np.abs(acts[i]).max(keepdims=True).ravel())
    scales = [_scale(_abs_level(np.concatenate(s), percentile)) for s in samples]

    layers = []
    for i, layer in enumerate(network.layers):
        qw, w_scale = quantize_weights(layer.weight, layer.connectivity)
        try:
            check_accumulators(layer.connectivity, qw, f"layer {i}")
        except ValueError as e:
            raise ValueError(str(e)) from None
        layers.append(QuantizedLayer(
            layer.connectivity, layer.c_in, layer.c_out, layer.activation, qw, w_scale,
            layer.bias, scales[i], scales[i + 1] if i + 1 < n_layers else None))
    q = QuantizedNetwork(layers, network.n_classes, network.aggregate, network.input_shape,
                         name=network.name, calibration_size=x.shape[0], percentile=percentile)
    return q
