"""The FanIn layer: every output unit reads a fixed set of input units (see DESIGN §2).

    y[b, j, :] = act(bias[j] + sum_{t, c} W[p(j, t), c, :] * x[b, idx[j, t], c])

act: none, ReLU (fused into the kernel), or MaxMin: channels (2i, 2i+1) of a unit become
(max, min) of the pair — 1-Lipschitz and gradient-norm preserving, the activation that
Lipschitz-constrained networks train best with (Anil et al. 2019).

Shapes (float32 throughout):
    connectivity  n_out rows over n_in units, nnz connections (sparsefan.Connectivity)
    weight        (nnz, c_in, c_out): one (c_in x c_out) block per connection p
    bias          (n_out, c_out)
    x             (batch, n_in) when c_in == 1, or (batch, n_in, c_in)
    y             (batch, n_out) for a 2-D x and c_out == 1, else (batch, n_out, c_out)

The ``*_fm`` methods work on the kernels' feature-major layout, ``(units, channels, batch)``,
so a network can keep activations in that layout between layers (sparsefan.layout).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from sparsefan import _engine
from sparsefan._threads import resolve_n_threads
from sparsefan._validation import check_array, check_int, check_no_overlap, check_writable
from sparsefan.connectivity import Connectivity

ACTIVATIONS = (None, "relu", "maxmin")

# Every write to a layer's parameters takes a fresh number from this one counter, so a tuple of
# layer versions names a weight state uniquely within the process (see FanIn.version).
_VERSIONS = itertools.count(1)


class Gradients(NamedTuple):
    """Gradients of a FanIn layer: w.r.t. its input (None if not asked), weight and bias."""

    input: np.ndarray | None
    weight: np.ndarray
    bias: np.ndarray


class FanIn:
    """A fixed fan-in layer with ``c_in`` input and ``c_out`` output channels per unit.

    Parameters
    ----------
    connectivity : Connectivity
        Which inputs each output unit reads. Never changed by training.
    c_in, c_out : int
        Channels per input unit and per output unit.
    activation : None, "relu" or "maxmin"
        ReLU is fused into the forward kernel; MaxMin (c_out even) sorts each pair of output
        channels (2i, 2i+1) of a unit into (max, min), after the kernel.
    weight : float32 array (nnz, c_in, c_out), optional
        Default: He-normal (relu) or LeCun-normal (no activation) with each unit's own fan-in
        ``fan_in(j) * c_in``, drawn from ``seed``.
    bias : float32 array (n_out, c_out), optional. Default zeros.
    seed : int or numpy Generator, optional. Seeds the default weights.
    n_threads : int or None
        Threads for the kernels (scikit-learn rules: None -> the OpenMP thread limit, which
        OMP_NUM_THREADS or threadpoolctl set, at most the usable CPU count without
        OMP_NUM_THREADS; negative counts back from the CPU count; 0 is an error). Results are
        bit-identical for every thread count.
    """

    def __init__(self, connectivity: Connectivity, c_in: int = 1, c_out: int = 1,
                 activation: str | None = None, weight: np.ndarray | None = None,
                 bias: np.ndarray | None = None,
                 seed: int | np.random.Generator | None = None,
                 n_threads: int | None = None) -> None:
        if not isinstance(connectivity, Connectivity):
            raise TypeError(
                f"connectivity must be a sparsefan.Connectivity, got {type(connectivity).__name__}"
            )
        self.connectivity = connectivity
        self.c_in: int = check_int(c_in, "c_in", 1)
        self.c_out: int = check_int(c_out, "c_out", 1)
        for what, size in (("weight", connectivity.nnz * self.c_in * self.c_out),
                           ("bias", connectivity.n_out * self.c_out),
                           ("input", connectivity.n_in * self.c_in)):
            if size > MAX_ELEMENTS:  # Python ints: checked before any allocation
                raise ValueError(f"c_in={self.c_in}, c_out={self.c_out}: the {what} would hold "
                                 f"{size} values, more than {MAX_ELEMENTS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "maxmin" and self.c_out % 2:
            raise ValueError(f"maxmin pairs output channels: c_out must be even, got "
                             f"{self.c_out}")
        self.activation = activation
        resolve_n_threads(n_threads)  # fail early on a bad value
        self.n_threads = n_threads
        if weight is None:
            gain = 2.0 if activation == "relu" else 1.0  # MaxMin keeps the norm: gain 1
            fan = np.repeat(np.maximum(connectivity.fan_in(), 1), connectivity.fan_in())
            std = np.sqrt(gain / (fan * self.c_in))[:, None, None]
            rng = np.random.default_rng(seed)
            weight = (rng.standard_normal(self.weight_shape) * std).astype(np.float32)
        if bias is None:
            bias = np.zeros(self.bias_shape, dtype=np.float32)
        self.weight = weight
        self.bias = bias

    # -- parameters ----------------------------------------------------------------------------

    @property
    def n_in(self) -> int:
        return self.connectivity.n_in

    @property
    def n_out(self) -> int:
        return self.connectivity.n_out

    @property
    def weight_shape(self) -> tuple[int, int, int]:
        return (self.connectivity.nnz, self.c_in, self.c_out)

    @property
    def bias_shape(self) -> tuple[int, int]:
        return (self.connectivity.n_out, self.c_out)

    # Parameters are owned, read-only arrays: an assignment copies, and in-place updates go
    # through ``edit()``. Either advances ``version``, on which everything derived from the
    # weights (certificate constants, influence tables) is keyed, so it can never go stale.
    _weight: np.ndarray
    _bias: np.ndarray

    @property
    def weight(self) -> np.ndarray:
        """(nnz, c_in, c_out) float32, read-only; assign a new array or use ``edit()``."""
        return self._weight

    @weight.setter
    def weight(self, value: np.ndarray) -> None:
        self._set_parameter("weight", value, self.weight_shape)

    @property
    def bias(self) -> np.ndarray:
        """(n_out, c_out) float32, read-only; assign a new array or use ``edit()``."""
        return self._bias

    @bias.setter
    def bias(self, value: np.ndarray) -> None:
        self._set_parameter("bias", value, self.bias_shape)

    def _set_parameter(self, name, value, shape):
        """Validate, copy into an owned read-only array, advance the version."""
        value = check_array(value, name, np.float32, shape=shape, finite=True)
        _check_magnitude(value, name)
        setattr(self, "_" + name, _owned(value))
        self._version = next(_VERSIONS)

    @property
    def version(self) -> int:
        """A number that changes with every write to the weight or bias (process-unique)."""
        return self._version

    @contextmanager
    def edit(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """In-place access to the parameters: ``with layer.edit() as (weight, bias): ...``.

        The arrays are writable inside the block; leaving it (also by an exception) makes them
        read-only again and advances ``version``. Values are not re-validated: the trainer
        checks its loss, ``check_parameters()`` checks on demand."""
        w, b = self._weight, self._bias
        w.flags.writeable = b.flags.writeable = True
        try:
            yield w, b
        finally:
            w.flags.writeable = b.flags.writeable = False
            self._version = next(_VERSIONS)

    def check_parameters(self) -> None:
        """Raise ValueError if the weight or bias holds NaN, Inf or a value beyond
        ``MAX_ABS_PARAMETER``."""
        for name in ("weight", "bias"):
            value = getattr(self, "_" + name)
            if not np.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or Inf")
            _check_magnitude(value, name)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in ("_weight", "_bias"):  # unpickled arrays come back writable and shared
            self.__dict__[name] = _owned(self.__dict__[name])
        self._version = next(_VERSIONS)

    @property
    def n_params(self) -> int:
        return self._weight.size + self._bias.size

    def flops(self, batch: int = 1) -> int:
        """Useful floating-point operations of one forward pass (2 per multiply-add)."""
        return 2 * self.connectivity.nnz * self.c_in * self.c_out * batch

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"FanIn({self.connectivity!r}, c_in={self.c_in}, c_out={self.c_out}{act})"

    # -- NumPy layout --------------------------------------------------------------------------

    def _check_x(self, x, name, check_finite):
        if isinstance(x, np.ndarray) and x.ndim == 2:
            if self.c_in != 1:
                raise ValueError(
                    f"{name} must have shape (batch, {self.n_in}, {self.c_in}), got {x.shape}"
                )
            return check_array(x, name, np.float32, shape=(None, self.n_in), finite=check_finite)
        return check_array(x, name, np.float32, shape=(None, self.n_in, self.c_in),
                           finite=check_finite)

    def _y_shape(self, x):
        batch = x.shape[0]
        if x.ndim == 2 and self.c_out == 1:
            return (batch, self.n_out)
        return (batch, self.n_out, self.c_out)

    def forward(self, x: np.ndarray, n_threads: int | None = None,
                check_finite: bool = True) -> np.ndarray:
        """Forward pass on ``x`` of shape (batch, n_in) or (batch, n_in, c_in), float32.

        With ``check_finite`` (default) NaN/Inf in ``x`` raise ValueError; without it they
        propagate by IEEE rules to every unit that reads them (ReLU keeps NaN).
        """
        x = self._check_x(x, "x", check_finite)
        return _engine.forward_public(self, x, self._threads(n_threads)).reshape(
            self._y_shape(x))

    def backward(self, x: np.ndarray, dy: np.ndarray, y: np.ndarray | None = None,
                 need_input_grad: bool = True, n_threads: int | None = None,
                 check_finite: bool = True) -> Gradients:
        """Gradients given the forward input ``x`` and the output gradient ``dy``.

        ``y`` (the forward output) is needed when the activation is ReLU. Returns
        :class:`Gradients` with ``input`` shaped like ``x`` (None unless ``need_input_grad``),
        ``weight`` (nnz, c_in, c_out) and ``bias`` (n_out, c_out), freshly allocated.
        """
        x = self._check_x(x, "x", check_finite)
        y_shape = self._y_shape(x)
        check_array(dy, "dy", np.float32, shape=y_shape, finite=check_finite)
        if self.activation == "relu":
            if y is None:
                raise ValueError("y (the forward output) is required for a ReLU layer's backward")
            check_array(y, "y", np.float32, shape=y_shape)
        return Gradients(*_engine.backward_public(self, x, dy, y, self._threads(n_threads),
                                                  need_input_grad))

    # -- kernel layout -------------------------------------------------------------------------

    def _threads(self, n_threads):
        return resolve_n_threads(self.n_threads if n_threads is None else n_threads)

    def _check_xt(self, xt, name, check_finite):
        return check_array(xt, name, np.float32, shape=(self.n_in, self.c_in, None),
                           finite=check_finite)

    def forward_fm(self, xt: np.ndarray, out: np.ndarray | None = None,
                   n_threads: int | None = None, check_finite: bool = True) -> np.ndarray:
        """Forward pass in the kernels' layout: xt (n_in, c_in, batch) -> (n_out, c_out, batch)."""
        xt = self._check_xt(xt, "xt", check_finite)
        batch = xt.shape[2]
        if out is not None:
            check_writable(check_array(out, "out", np.float32,
                                       shape=(self.n_out, self.c_out, batch)), "out")
            check_no_overlap(out, "out", xt=xt, weight=self._weight, bias=self._bias)
        return _engine.forward(self, xt, self._threads(n_threads), out)

    def backward_fm(self, xt: np.ndarray, dyt: np.ndarray, yt: np.ndarray | None = None,
                    grad_input: np.ndarray | None = None,
                    grad_weight: np.ndarray | None = None,
                    grad_bias: np.ndarray | None = None, need_input_grad: bool = True,
                    n_threads: int | None = None, check_finite: bool = True,
                    need_param_grad: bool = True, overwrite_dyt: bool = False) -> Gradients:
        """Backward pass in the kernels' layout; gradients *accumulate* into given buffers.

        xt (n_in, c_in, B) is the forward input, dyt (n_out, c_out, B) the output gradient,
        yt (n_out, c_out, B) the forward output (needed for ReLU; MaxMin recomputes the
        pre-activation from xt instead, one more forward pass). Buffers not given are
        allocated as zeros. Returns :class:`Gradients` (input in the (n_in, c_in, B) layout).
        With ``need_param_grad=False`` only the input gradient is computed (weight and bias
        are None): the attacks' path. With ``overwrite_dyt`` a ReLU layer masks dyt in place
        instead of allocating a masked copy (dyt must be writable; its contents are lost).
        """
        xt = self._check_xt(xt, "xt", check_finite)
        batch = xt.shape[2]
        out_shape = (self.n_out, self.c_out, batch)
        check_array(dyt, "dyt", np.float32, shape=out_shape, finite=check_finite)
        if self.activation == "relu":
            if yt is None:
                raise ValueError("yt (the forward output) is required for a ReLU layer's backward")
            check_array(yt, "yt", np.float32, shape=out_shape)
            if overwrite_dyt:
                check_writable(dyt, "dyt")
        given = dict(xt=xt, dyt=dyt, yt=yt, weight=self._weight)
        for buf, name in ((grad_input, "grad_input"), (grad_weight, "grad_weight"),
                          (grad_bias, "grad_bias")):
            if buf is not None:
                check_no_overlap(buf, name, **given)
        if need_input_grad and grad_input is not None:
            self._grad_buffer(grad_input, "grad_input", xt.shape)
        if need_param_grad:
            if grad_weight is not None:
                self._grad_buffer(grad_weight, "grad_weight", self.weight_shape)
            if grad_bias is not None:
                self._grad_buffer(grad_bias, "grad_bias", self.bias_shape)
                if grad_weight is not None:
                    check_no_overlap(grad_weight, "grad_weight", grad_bias=grad_bias)
        g = _engine.backward(self, xt, dyt, yt, self._threads(n_threads), grad_input,
                             grad_weight, grad_bias, need_input_grad, need_param_grad,
                             overwrite_dyt)
        return Gradients(*g)

    # A layer with one output unit runs as one BLAS product (sparsefan._engine.uses_blas).
    blas_single_unit = True  # tests switch it off to exercise the C kernel on such layers

    @staticmethod
    def _grad_buffer(buf, name, shape):
        return check_writable(check_array(buf, name, np.float32, shape=shape), name)


MAX_ELEMENTS = 2**31 - 1  # per weight, bias or example: beyond any layer this engine runs
MAX_ABS_PARAMETER = 1e15  # beyond it float32 sums of products overflow on ordinary inputs


def _check_magnitude(value, name):
    if value.size and float(np.abs(value).max()) > MAX_ABS_PARAMETER:
        raise ValueError(f"{name} holds values beyond {MAX_ABS_PARAMETER:g} in magnitude "
                         f"(float32 arithmetic would overflow)")


def _owned(a):
    """A read-only copy of ``a`` that no one else holds."""
    a = np.array(a, dtype=np.float32, order="C", copy=True)
    a.flags.writeable = False
    return a
