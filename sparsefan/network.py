"""A Network: a chain of FanIn layers ending in per-unit class scores, and an aggregation.

    x (batch, n_in) --FanIn--> ... --FanIn (head: c_out = n_classes)--> Z (M units, C, batch)
                    --aggregate--> (batch, C)

Between layers the activations stay in the kernels' feature-major layout ``(units, channels,
batch)``; the layout changes once at the entry. Layers with one output unit (dense layers) run as
one GEMM (see FanIn), so a dense MLP is a Network too and trains with the same trainer.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar, overload

import numpy as np
import numpy.typing as npt

from sparsefan import _engine
from sparsefan import aggregate as agg
from sparsefan._threads import resolve_n_threads
from sparsefan._validation import check_array, check_chain, check_int, check_writable
from sparsefan.connectivity import Connectivity
from sparsefan.layers import FanIn
from sparsefan._engine import Workspace

_T = TypeVar("_T")
_V = TypeVar("_V")


class Certified(NamedTuple):
    """Predictions with certificates (see ``Network.predict_certified``)."""

    classes: np.ndarray
    l2_radius: np.ndarray
    l0_radius: np.ndarray


def _same_state(a, b):
    """Equal state keys; connectivities compare by identity (they are immutable objects)."""
    if a[:2] != b[:2] or len(a[2]) != len(b[2]):
        return False
    return all(x[:4] == y[:4] and x[4] is y[4] for x, y in zip(a[2], b[2]))


@dataclass
class StepResult:
    """One forward + backward pass on a batch."""

    loss: float
    aggregate_loss: float
    unit_loss: float
    correct: int
    grads: list[tuple[np.ndarray, np.ndarray]]  # per layer: (grad_weight, grad_bias)
    d_offsets: np.ndarray | None = None  # (C, C) dLoss/d offsets, with margin offsets
    d_scale: float | None = None  # dLoss/d the logit scale, with margin offsets
    certified: int | None = None  # examples whose margins clear the offsets


class Network:
    """A chain of FanIn layers whose last layer emits ``n_classes`` scores per output unit.

    Parameters
    ----------
    layers : list of FanIn
        Consecutive layers must agree: ``layers[i].n_out == layers[i+1].n_in`` and
        ``layers[i].c_out == layers[i+1].c_in``. The first layer has ``c_in == 1``; the last has
        ``c_out == n_classes`` and no activation.
    n_classes : int
    aggregate : "mean_logits", "mean_prob" or "vote"
    input_shape : tuple, optional
        The shape of one example (e.g. (28, 28)); its product must be ``layers[0].n_in``.
    name : str, optional
        The builder or a free label, kept in model files.
    """

    def __init__(self, layers: Iterable[FanIn], n_classes: int, aggregate: str = "mean_logits",
                 input_shape: Iterable[int] | None = None, name: str | None = None) -> None:
        layers = list(layers)
        self.n_classes: int = check_int(n_classes, "n_classes", 2)
        self._check_chain(layers)
        if aggregate not in agg.AGGREGATES:
            raise ValueError(f"aggregate must be one of {agg.AGGREGATES}, got {aggregate!r}")
        self.layers = layers
        self.aggregate = aggregate
        n_in = layers[0].n_in
        if input_shape is None:
            input_shape = (n_in,)
        input_shape = tuple(int(s) for s in input_shape)
        if any(s < 1 for s in input_shape) or math.prod(input_shape) != n_in:
            raise ValueError(f"input_shape {input_shape} does not hold n_in = {n_in} values")
        self.input_shape = input_shape
        self.name = name or "network"
        self.metadata: dict[str, Any] = {}

    def _check_chain(self, layers):
        """Raise unless ``layers`` is a non-empty chain of FanIn layers ending in n_classes
        logits per unit (the C forward trusts this)."""
        check_chain(layers, FanIn, self.n_classes)

    # -- structure -----------------------------------------------------------------------------

    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def n_units(self) -> int:
        """M: the number of output units, each emitting n_classes scores."""
        return self.layers[-1].n_out

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def flops(self, batch: int = 1) -> int:
        """FLOPs of one forward pass through the layers, 2 per multiply-add (as
        ``FanIn.flops``; aggregation excluded)."""
        return sum(layer.flops(batch) for layer in self.layers)

    def connectivities(self) -> list[Connectivity]:
        return [layer.connectivity for layer in self.layers]

    def receptive_fields(self) -> Connectivity:
        """Connectivity from the inputs to the output units: the composition of every table."""
        fields = self.layers[0].connectivity
        for layer in self.layers[1:]:
            fields = layer.connectivity.compose(fields)
        return fields

    # -- inference -----------------------------------------------------------------------------

    def check_inputs(self, x: np.ndarray, check_finite: bool = True,
                     name: str = "x") -> np.ndarray:
        """``x`` as the validated (batch, n_in) float32 array the engine reads: (batch, n_in)
        or (batch, *input_shape), C-contiguous float32; NaN/Inf refused with ``check_finite``."""
        if isinstance(x, np.ndarray) and x.ndim > 2 and x.shape[1:] == self.input_shape:
            x = x.reshape(x.shape[0], -1)
        return check_array(x, name, np.float32, shape=(None, self.n_in), finite=check_finite)

    @overload
    def forward_fm(self, xt: np.ndarray, n_threads: int | None = None,
                   keep: Literal[False] = False) -> np.ndarray: ...
    @overload
    def forward_fm(self, xt: np.ndarray, n_threads: int | None = None, *,
                   keep: Literal[True]) -> list[np.ndarray]: ...
    @overload
    def forward_fm(self, xt: np.ndarray, n_threads: int | None = None,
                   keep: bool = False) -> np.ndarray | list[np.ndarray]: ...

    def forward_fm(self, xt: np.ndarray, n_threads: int | None = None,
                   keep: bool = False) -> np.ndarray | list[np.ndarray]:
        """Run the layers on xt (n_in, 1, batch). Returns Z (M, C, batch), or with ``keep`` the
        list of every layer's input and the final output."""
        check_array(xt, "xt", np.float32, shape=(self.n_in, 1, None))
        return _engine.forward_chain(self._chain(), xt, resolve_n_threads(n_threads), keep)

    def _chain(self):
        """``self.layers``, checked to fit together (a public list: it may have been edited
        since construction). Once per public call: the engine trusts it."""
        self._check_chain(self.layers)
        return self.layers

    def _fused_plan(self):
        """The layers as one C call (sparsefan._engine.fused_plan), or None."""
        return _engine.fused_plan(self)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_derived", None)  # recomputed for the unpickled weights
        return state

    # -- constants derived from the weights --------------------------------------------------

    def _state_key(self):
        return (self.aggregate, self.n_classes, tuple(
            (layer.version, layer.activation, layer.c_in, layer.c_out, layer.connectivity)
            for layer in self.layers))

    def derived(self, name: str, compute: Callable[[Network], _T]) -> _T:
        """``compute(self)``, cached under ``name`` for the current weight state.

        The cache is keyed on every layer's ``version`` (advanced by any write to its weight
        or bias, see ``FanIn.edit``), activation, channels and connectivity object, and on the
        aggregate: a derived constant (certificate bounds, influence tables) can never outlive
        the weights it was computed from."""
        key = self._state_key()
        cache = self.__dict__.setdefault("_derived", {})
        hit = cache.get(name)
        if hit is not None and _same_state(hit[0], key):
            return hit[1]
        value = compute(self)
        cache[name] = (key, value)
        return value

    def unit_logits(self, x: np.ndarray, n_threads: int | None = None,
                    batch_size: int = 4096) -> np.ndarray:
        """Per-unit class scores Z, shape (M, C, batch), float32.

        Fixed fan-in networks run as one C call per chunk of about ``batch_size`` examples
        (layout change, every layer, activations in scratch memory); networks with GEMM layers
        run layer by layer."""
        x = self.check_inputs(x)
        batch_size = check_int(batch_size, "batch_size", 1)
        n = resolve_n_threads(n_threads)
        return self._unit_logits(x, n, batch_size)

    def _unit_logits(self, x, n, batch_size):
        batch = x.shape[0]
        plan = self._fused_plan()
        shape = (self.n_units, self.n_classes)
        if batch <= batch_size:  # one chunk: the result is the last layer's own output
            if plan is None:
                return _engine.forward_chain(self._chain(), _engine.to_feature_major(x, n), n)
            return _engine.plan_forward(plan, x, n).reshape(shape + (batch,))
        out = np.empty(shape + (batch,), dtype=np.float32)
        for s, e in _chunks(batch, batch_size):
            xb = x[s:e]
            if plan is None:
                out[:, :, s:e] = _engine.forward_chain(self._chain(),
                                                       _engine.to_feature_major(xb, n), n)
            else:
                out[:, :, s:e] = _engine.plan_forward(plan, xb, n).reshape(shape + (e - s,))
        return out

    def _aggregate(self, x, n_threads, batch_size, what):
        """scores / probabilities, ``batch_size`` examples at a time: the unit logits of one
        chunk at a time (M x C x batch_size floats, not the whole batch's)."""
        x = self.check_inputs(x)
        batch_size = check_int(batch_size, "batch_size", 1)
        n = resolve_n_threads(n_threads)
        # networks with GEMM layers run whole: their few units' logits are small, and BLAS's
        # last bits depend on the batch size (torch's modules and exports compare bit for bit)
        ranges = _chunks(x.shape[0], batch_size) if self._fused_plan() is not None else []
        if len(ranges) <= 1:  # (none: an empty batch, or GEMM layers)
            return self._aggregate_chunk(x, n, what)
        return np.concatenate([self._aggregate_chunk(x[s:e], n, what) for s, e in ranges])

    def _aggregate_chunk(self, x, n, what):
        Z = self._unit_logits(x, n, x.shape[0])
        with np.errstate(invalid="ignore", over="ignore"):  # refused just below
            if what == "proba":
                S = agg.probabilities(Z, self.aggregate)
            else:
                S = agg.scores(Z, self.aggregate)
        self._refuse_overflow(Z, S, allow_neg_inf=what == "scores" and
                              self.aggregate == "mean_prob")
        return S

    def _refuse_overflow(self, Z, S, allow_neg_inf=False):
        agg.refuse_overflow(self.aggregate, Z, S, "the network's", "weights or inputs too large",
                            allow_neg_inf)

    def predict_proba(self, x: np.ndarray, n_threads: int | None = None,
                      batch_size: int = 256) -> np.ndarray:
        """(batch, C) probabilities of the aggregate, computed ``batch_size`` examples at a
        time, so that a chunk's unit logits stay in cache (1.6-2x the speed of one 8192-example
        chunk on the MNIST networks); any chunk size of 2 or more gives the same values.
        Networks with GEMM layers (``dense_mlp``) run as one chunk: BLAS's last bits depend on
        the batch size."""
        return self._aggregate(x, n_threads, batch_size, "proba")

    def scores(self, x: np.ndarray, n_threads: int | None = None,
               batch_size: int = 256) -> np.ndarray:
        """(batch, C) aggregate scores: mean logits, log mean probability (-inf for a class of
        probability 0), or vote fraction; ``batch_size`` as in :meth:`predict_proba`."""
        return self._aggregate(x, n_threads, batch_size, "scores")

    def predict(self, x: np.ndarray, n_threads: int | None = None,
                batch_size: int = 256) -> np.ndarray:
        """(batch,) predicted class (argmax of the aggregate scores; ties -> lowest class),
        ``batch_size`` examples at a time."""
        return self.scores(x, n_threads, batch_size).argmax(axis=1)

    def predict_certified(self, x: np.ndarray, n_threads: int | None = None,
                          max_l0: int = 200) -> Certified:
        """Every prediction with its certificates, for mean_logits networks.

        Returns :class:`Certified` (classes (batch,) int64, l2_radius (batch,) float64,
        l0_radius (batch,) int64): no perturbation of L2 norm below ``l2_radius`` (pixels
        staying in [0, 1]), and no change of at most ``l0_radius`` pixels (each to any value
        in [0, 1]), changes the predicted class. The radii equal
        ``certify.l2_radius(net, x, classes)`` and ``certify.l0_radius(net, x, classes,
        room="box", max_radius=max_l0)``; the constants behind them are computed once per
        weight state, so a prediction costs one forward pass plus O(C log max_l0) per example.
        """
        from sparsefan import certify

        if self.aggregate != "mean_logits":
            raise ValueError("predict_certified needs a mean_logits network, got aggregate="
                             f"{self.aggregate!r} (use sparsefan.certify.l0_radius)")
        max_l0 = check_int(max_l0, "max_l0", 0)
        S = agg.mean_logits(self.unit_logits(x, n_threads))  # (C, B) float64, checks x
        self._refuse_overflow(None, S.T)
        K, cum = certify.certificate_tables(self, max_l0)
        B = S.shape[1]
        classes, l0 = np.empty(B, np.int64), np.empty(B, np.int64)
        l2 = np.empty(B)
        _engine.certify_mean_logits(classes, l2, l0, np.ascontiguousarray(S), K, cum)
        return Certified(classes, l2, l0)

    # -- training ------------------------------------------------------------------------------

    def check_targets(self, y: npt.ArrayLike, batch: int, name: str = "y") -> np.ndarray:
        """``y`` checked as ``batch`` int labels in [0, n_classes) (returned as int64) or as
        soft targets (batch, n_classes): finite, >= 0, rows summing to 1 (returned as float64)."""
        y = np.asarray(y)
        C = self.n_classes
        if y.ndim == 2 and np.issubdtype(y.dtype, np.floating):
            if y.shape != (batch, C):
                raise ValueError(f"{name} (soft targets) must have shape ({batch}, {C}), got "
                                 f"{y.shape}")
            y = y.astype(np.float64)
            if not np.isfinite(y).all() or (y < 0).any():
                raise ValueError(f"{name} (soft targets) must be finite and >= 0")
            if y.size and np.abs(y.sum(axis=1) - 1).max() > 1e-5:
                raise ValueError(f"{name} (soft targets) rows must sum to 1")
            return y
        if y.shape != (batch,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must be int labels of shape ({batch},) or soft targets "
                             f"({batch}, {C}), got shape {y.shape} dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= C):
            raise ValueError(f"{name} must hold labels in [0, {C})")
        return y.astype(np.int64, copy=False)

    def loss_and_grad(self, x: np.ndarray, y: npt.ArrayLike, aggregate_weight: float = 1.0,
                      unit_weight: float = 0.0, n_threads: int | None = None,
                      grads: list[tuple[np.ndarray, np.ndarray]] | None = None,
                      offsets: np.ndarray | None = None, scale: float = 1.0,
                      workspace: Workspace | None = None) -> StepResult:
        """Loss = aggregate_weight * CE(aggregate) + unit_weight * mean per-unit CE, and the
        gradient of every layer's weight and bias (accumulated into ``grads`` if given).

        x (batch, n_in) float32, y (batch,) int labels in [0, n_classes) or soft targets
        (batch, n_classes), each row a probability vector (cross-entropy against it; a soft
        example counts as correct when the prediction is its most likely class). ``offsets`` (C, C),
        mean_logits only: the aggregate loss becomes the Lipschitz-margin cross-entropy
        (:func:`sparsefan.aggregate.margin_loss`, logits times ``scale``); the result carries
        dLoss/d offsets and dLoss/d scale. ``workspace`` (a :class:`Workspace`, one per training
        loop): the activations and gradients of this step live in its buffers, reused by the
        next step of the same batch size instead of allocated again; the results are the same.
        """
        x = self.check_inputs(x, check_finite=False)
        y = self.check_targets(y, x.shape[0])
        if offsets is not None and agg.is_soft(y):
            raise ValueError("certified training (margin offsets) needs int labels, not soft "
                             "targets")
        n = resolve_n_threads(n_threads)
        if workspace is not None and not isinstance(workspace, Workspace):
            raise TypeError(f"workspace must be a sparsefan.Workspace or None, got "
                            f"{type(workspace).__name__}")
        ws = workspace
        acts = _engine.forward_chain(self._chain(), _engine.to_feature_major(x, n, ws), n,
                                     keep=True, ws=ws)
        Z = acts[-1]
        loss_a = loss_u = 0.0
        dZ = None  # float64, scaled and summed in place: one Z-sized float64 array at a time
        d_off = d_scale = certified = g = None
        # the mean logits once, for the loss and the count of correct predictions
        S = agg.mean_logits(Z) if self.aggregate == "mean_logits" else None
        if offsets is not None:
            if self.aggregate != "mean_logits" or unit_weight or not aggregate_weight:
                raise ValueError("margin offsets need a mean_logits network and the aggregate "
                                 "loss alone")
            loss_a, g, d_off, d_scale, certified = agg.margin_loss(Z, y, offsets, scale, S=S)
            d_off *= aggregate_weight
            d_scale *= aggregate_weight
        elif aggregate_weight and not unit_weight and self.aggregate == "mean_logits":
            loss_a, g = agg.mean_logits_loss(Z, y, S=S)
        if g is not None:
            # every unit gets the same gradient: cast it once and broadcast it into float32
            g *= aggregate_weight
            dy = _engine._buffer(ws, "loss", Z.shape)
            dy[...] = g.astype(np.float32)
        elif aggregate_weight:
            loss_a, d = agg.aggregate_loss(Z, y, self.aggregate)
            d *= aggregate_weight
            dZ = d
        if unit_weight:
            loss_u, d = agg.unit_loss(Z, y)
            d *= unit_weight
            dZ = d if dZ is None else np.add(dZ, d, out=dZ)
        truth = y.argmax(axis=1) if agg.is_soft(y) else y
        scores = S.T if S is not None else agg.scores(Z, self.aggregate)
        correct = int((scores.argmax(axis=1) == truth).sum())
        if grads is None:
            grads = [(np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
                     for l in self.layers]
        else:  # checked once here: the engine accumulates into them
            if len(grads) != len(self.layers):
                raise ValueError(f"grads must hold one (weight, bias) pair per layer "
                                 f"({len(self.layers)}), got {len(grads)}")
            for i, (l, (gw, gb)) in enumerate(zip(self.layers, grads)):
                check_writable(check_array(gw, f"grads[{i}][0]", np.float32,
                                           shape=l.weight_shape), f"grads[{i}][0]")
                check_writable(check_array(gb, f"grads[{i}][1]", np.float32,
                                           shape=l.bias_shape), f"grads[{i}][1]")
        if dZ is not None:
            if ws is None:
                dy = dZ.astype(np.float32)
            else:
                dy = ws.get("loss", Z.shape)
                dy[...] = dZ
        elif not aggregate_weight:
            dy = _engine._buffer(ws, "loss", Z.shape, zero=True)
        dZ = d = None  # the float64 gradients are not needed by the backward pass
        # dy is ours (the cast above, then each layer's fresh input gradient): a ReLU layer may
        # mask it in place
        _engine.backward_chain(self._chain(), acts, dy, n, grads, ws=ws)
        loss = aggregate_weight * loss_a + unit_weight * loss_u
        return StepResult(float(loss), float(loss_a), float(loss_u), correct, grads, d_off,
                          d_scale, certified)

    def input_gradient(self, x: np.ndarray,
                       objective: Callable[[np.ndarray], tuple[_V, npt.ArrayLike]],
                       n_threads: int | None = None) -> tuple[_V, np.ndarray]:
        """Value and input gradient of ``objective`` through the C backward pass.

        ``objective(Z)`` receives the per-unit logits Z (M, C, batch) (float32) and returns
        ``(values (batch,), dZ)`` with dZ = d(sum of values)/dZ. Returns ``(values, grad)``
        with grad of shape (batch, n_in), float32. No weight gradients are computed.
        """
        x = self.check_inputs(x, check_finite=False)
        n = resolve_n_threads(n_threads)
        acts = _engine.forward_chain(self._chain(), _engine.to_feature_major(x, n), n, keep=True)
        values, dZ = objective(acts[-1])
        dy = np.array(dZ, dtype=np.float32, order="C")  # a copy: masked in place below
        if dy.shape != acts[-1].shape:
            raise ValueError(f"objective must return dZ of shape {acts[-1].shape}, got "
                             f"{dy.shape}")
        dy = _engine.backward_chain(self._chain(), acts, dy, n)
        return values, np.ascontiguousarray(dy.reshape(self.n_in, -1).T)

    # -- description ---------------------------------------------------------------------------

    def summary_dict(self) -> dict[str, Any]:
        rows = []
        for i, layer in enumerate(self.layers):
            conn = layer.connectivity
            fan = conn.fan_in()
            nbytes = (layer.weight.nbytes + layer.bias.nbytes + conn.indices.nbytes
                      + conn.indptr.nbytes)
            rows.append({
                "layer": i, "units": conn.n_out, "c_in": layer.c_in, "c_out": layer.c_out,
                "fan_in_min": int(fan.min()), "fan_in_max": int(fan.max()),
                "activation": layer.activation or "-", "params": layer.n_params,
                "flops": layer.flops(1), "bytes": int(nbytes),
            })
        fields = self.receptive_fields()
        rf = fields.fan_in()
        deg = fields.out_degree()
        return {
            "name": self.name, "input_shape": list(self.input_shape), "n_in": self.n_in,
            "n_units": self.n_units, "n_classes": self.n_classes, "aggregate": self.aggregate,
            "layers": rows, "params": self.n_params, "flops": self.flops(1),
            "bytes": sum(r["bytes"] for r in rows),
            "receptive_field_min": int(rf.min()), "receptive_field_mean": float(rf.mean()),
            "receptive_field_max": int(rf.max()),
            "out_degree_max": int(deg.max()), "out_degree_mean": float(deg.mean()),
        }

    def summary(self) -> str:
        """A table per layer (units, channels, fan-in, params, FLOPs per example, bytes) and
        the receptive fields and per-input out-degree to the output units."""
        s = self.summary_dict()
        lines = [
            f"{s['name']}: input {tuple(s['input_shape'])} -> {s['n_units']} output units x "
            f"{s['n_classes']} classes, aggregate={s['aggregate']}",
            f"{'layer':>5} {'units':>7} {'channels':>9} {'fan-in':>9} {'act':>5} "
            f"{'params':>10} {'FLOPs/ex':>11} {'bytes':>11}",
        ]
        for r in s["layers"]:
            fan = (str(r["fan_in_min"]) if r["fan_in_min"] == r["fan_in_max"]
                   else f"{r['fan_in_min']}..{r['fan_in_max']}")
            lines.append(
                f"{r['layer']:>5} {r['units']:>7} {str(r['c_in']) + '->' + str(r['c_out']):>9} "
                f"{fan:>9} {r['activation']:>5} {r['params']:>10,} {r['flops']:>11,} "
                f"{r['bytes']:>11,}")
        lines.append(f"total: {s['params']:,} parameters, {s['flops']:,} FLOPs per example, "
                     f"{s['bytes']:,} bytes")
        lines.append(
            f"receptive field of an output unit: {s['receptive_field_min']}.."
            f"{s['receptive_field_max']} inputs (mean {s['receptive_field_mean']:.1f}); "
            f"output units reached per input: max {s['out_degree_max']}, "
            f"mean {s['out_degree_mean']:.1f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Network({self.name!r}, n_in={self.n_in}, layers={len(self.layers)}, "
                f"n_units={self.n_units}, n_classes={self.n_classes}, "
                f"aggregate={self.aggregate!r})")


def _chunks(n, size):
    """(start, end) ranges of about ``size`` examples covering ``n``. A last range of one
    example is merged into the one before it: a batch of one takes the kernels' single-example
    path, which sums in another order (last bits), so that results would depend on where the
    chunks fall."""
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))
