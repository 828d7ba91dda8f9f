"""The C kernels as PyTorch modules: ``FanIn`` and ``Network`` over ``nn.Parameter`` tensors.

    import sparsefan.torch as sft
    layer = sft.FanIn(conn, c_in=1, c_out=32, activation="relu")   # an nn.Module
    model = sft.from_network(sparsefan.builders.direct())           # an nn.Module
    net = sft.to_network(model)                                     # back to a sparsefan.Network

Each layer is one ``torch.autograd.Function`` whose forward and backward are the engine's
(``sparsefan._engine.forward`` / ``backward``: the C kernels, or one BLAS product for a layer
with a single output unit). Parameters and activations reach the kernels as NumPy views of the
tensors' memory; gradients come back as tensors over the engine's fresh arrays. Copies happen
only where the layout changes (see docs/torch.md):

- ``FanIn.forward`` takes and returns the public ``(batch, units[, channels])`` layout, so it
  transposes ``x`` into the kernels' feature-major ``(units, channels, batch)`` layout and the
  output back (and ``dy`` / ``dx`` in the backward pass). ``FanIn.forward_fm`` works in the
  kernels' layout and copies nothing; a ``Network`` changes layout once, at its entry.
- A non-contiguous input or output gradient is made contiguous first (one copy).
- A ReLU layer's backward masks a copy of the output gradient; a MaxMin layer's recomputes its
  pre-activation (one more forward pass), as in ``sparsefan.FanIn.backward_fm``.

Threads: ``n_threads`` (scikit-learn rules, as everywhere in sparsefan) or, when it is None,
``torch.get_num_threads()`` at call time. The kernels run without the GIL.

float64 tensors (``module.double()``) run the float64 NumPy reference (``sparsefan.reference``)
instead of the kernels: slow, for ``torch.autograd.gradcheck`` and checking. Only CPU tensors
are accepted; NaN/Inf propagate by IEEE rules (the torch convention; no finiteness check).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from sparsefan import _engine, reference
from sparsefan import aggregate as agg
from sparsefan import layers as _layers
from sparsefan import network as _network
from sparsefan._threads import resolve_n_threads
from sparsefan._validation import check_chain, check_int

__all__ = ["FanIn", "Network", "from_network", "to_network", "aggregate_scores",
           "unit_cross_entropy", "to_feature_major", "from_feature_major"]

DTYPES = (torch.float32, torch.float64)  # float32: the kernels; float64: the reference


def _threads(n_threads):
    return resolve_n_threads(torch.get_num_threads() if n_threads is None else n_threads)


def _check_tensor(x, name, dtype=None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (the kernels are CPU code), got device "
                         f"{x.device}")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
    if x.dtype not in DTYPES:
        raise TypeError(f"{name} must have dtype torch.float32 (the C kernels) or torch.float64 "
                        f"(the reference), got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the module's parameters are {dtype}: "
                        f"convert one of them (module.float(), module.double() or x.to(...))")
    return x


def _shape_error(name, want, got):
    want = "(" + ", ".join("*" if s is None else str(s) for s in want) + ")"
    return ValueError(f"{name} must have shape {want}, got {tuple(got)}")


def _numpy(t):
    """The tensor's memory as a NumPy array (no copy; ``t`` is contiguous, CPU, dense)."""
    return t.detach().numpy()


class _EngineLayer:
    """A layer as ``sparsefan._engine`` reads it (connectivity, channels, activation, weight,
    bias), over NumPy views of a module's parameters."""

    __slots__ = ("connectivity", "c_in", "c_out", "activation", "weight", "bias")

    def __init__(self, module, weight, bias):
        self.connectivity = module.connectivity
        self.c_in, self.c_out, self.activation = module.c_in, module.c_out, module.activation
        self.weight, self.bias = weight, bias

    @property
    def blas_single_unit(self):  # the same switch as sparsefan.FanIn's (tests turn it off)
        return _layers.FanIn.blas_single_unit


# -- autograd functions ----------------------------------------------------------------------

class _FanInFunction(torch.autograd.Function):
    """yt = act(W xt + b) in the kernels' layout: xt (n_in, c_in, B) -> (n_out, c_out, B)."""

    @staticmethod
    def forward(ctx, xt, weight, bias, module, n):
        ctx.module, ctx.n = module, n
        if xt.dtype == torch.float64:
            y = reference.fanin_forward(_numpy(xt).transpose(2, 0, 1), module.connectivity,
                                        _numpy(weight), _numpy(bias), module.activation)
            yt = torch.from_numpy(np.ascontiguousarray(y.transpose(1, 2, 0)))
        else:
            layer = _EngineLayer(module, _numpy(weight), _numpy(bias))
            yt = torch.from_numpy(_engine.forward(layer, _numpy(xt), n))
        ctx.save_for_backward(xt, weight, bias, yt)
        return yt

    @staticmethod
    @once_differentiable
    def backward(ctx, dyt):
        xt, weight, bias, yt = ctx.saved_tensors
        module = ctx.module
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if xt.dtype == torch.float64:
            dx, dw, db = reference.fanin_backward(
                _numpy(xt).transpose(2, 0, 1), module.connectivity, _numpy(weight),
                _numpy(bias), _numpy(dyt).transpose(2, 0, 1), module.activation)
            dx = torch.from_numpy(np.ascontiguousarray(dx.transpose(1, 2, 0)))
            dw, db = torch.from_numpy(dw), torch.from_numpy(db)
        else:
            d = dyt.contiguous()
            layer = _EngineLayer(module, _numpy(weight), _numpy(bias))
            # a ReLU layer may mask the gradient in place only when it is our own copy
            dx, dw, db = _engine.backward(layer, _numpy(xt), _numpy(d), _numpy(yt), ctx.n,
                                          need_input_grad=need_x,
                                          need_param_grad=need_w or need_b,
                                          overwrite_dyt=d is not dyt)
            dx, dw, db = (None if a is None else torch.from_numpy(a) for a in (dx, dw, db))
        return (dx if need_x else None, dw if need_w else None, db if need_b else None,
                None, None)


class _ToFeatureMajor(torch.autograd.Function):
    """(batch, units[, channels]) -> (units, channels, batch), the C transpose (float32)."""

    @staticmethod
    def forward(ctx, x, n):
        ctx.shape, ctx.n = x.shape, n
        return torch.from_numpy(_engine.to_feature_major(_numpy(x), n))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        dx = _engine.from_feature_major(_numpy(g.contiguous()), ctx.n)
        return torch.from_numpy(dx).reshape(ctx.shape), None


class _FromFeatureMajor(torch.autograd.Function):
    """(units, channels, batch) -> (batch, units, channels), the C transpose (float32)."""

    @staticmethod
    def forward(ctx, xt, n):
        ctx.n = n
        return torch.from_numpy(_engine.from_feature_major(_numpy(xt), n))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return torch.from_numpy(_engine.to_feature_major(_numpy(g.contiguous()), ctx.n)), None


def to_feature_major(x, n_threads=None):
    """(batch, units) or (batch, units, channels) -> (units, channels, batch), differentiable;
    a copy (the C transpose for float32 tensors)."""
    _check_tensor(x, "x")
    if x.dim() not in (2, 3):
        raise ValueError(f"x must have 2 or 3 dimensions, got shape {tuple(x.shape)}")
    if x.dtype == torch.float64:
        xt = x.reshape(x.shape[0], x.shape[1], -1).permute(1, 2, 0)
        return xt.contiguous()
    return _ToFeatureMajor.apply(x.contiguous(), _threads(n_threads))


def from_feature_major(xt, n_threads=None):
    """(units, channels, batch) -> (batch, units, channels), differentiable; a copy."""
    _check_tensor(xt, "xt")
    if xt.dim() != 3:
        raise ValueError(f"xt must have 3 dimensions, got shape {tuple(xt.shape)}")
    if xt.dtype == torch.float64:
        return xt.permute(2, 0, 1).contiguous()
    return _FromFeatureMajor.apply(xt.contiguous(), _threads(n_threads))


# -- modules ---------------------------------------------------------------------------------

class FanIn(nn.Module):
    """A fixed fan-in layer (see :class:`sparsefan.FanIn`) as a torch module.

    ``weight`` (nnz, c_in, c_out) and ``bias`` (n_out, c_out) are ordinary ``nn.Parameter``s:
    any optimizer, scheduler, ``state_dict``, DDP or DataLoader loop works. The wiring is part of
    the architecture, like a convolution's kernel size: it is not in the ``state_dict``; build
    the module over the same connectivity before ``load_state_dict``.

    Parameters
    ----------
    connectivity : sparsefan.Connectivity
    c_in, c_out : int
    activation : None, "relu" or "maxmin"
    weight, bias : arrays or tensors, optional
        Initial values (float32); default: ``sparsefan.FanIn``'s initialisation from ``seed``.
    seed : int or numpy Generator, optional
    n_threads : int or None
        Threads for the kernels; None follows ``torch.get_num_threads()`` at each call.

    ``forward(x)``: x (batch, n_in) (c_in == 1) or (batch, n_in, c_in) -> (batch, n_out) (a 2-D
    x and c_out == 1) or (batch, n_out, c_out); the layout changes at entry and exit (copies).
    ``forward_fm(xt)``: (n_in, c_in, batch) -> (n_out, c_out, batch), no copies.
    """

    def __init__(self, connectivity, c_in=1, c_out=1, activation=None, *, weight=None,
                 bias=None, seed=None, n_threads=None):
        super().__init__()
        # sparsefan.FanIn validates every argument and draws the default weights
        layer = _layers.FanIn(connectivity, c_in, c_out, activation, weight=_as_array(weight),
                              bias=_as_array(bias), seed=seed, n_threads=n_threads)
        self._init_from(layer)

    def _init_from(self, layer):
        self.connectivity = layer.connectivity
        self.c_in, self.c_out, self.activation = layer.c_in, layer.c_out, layer.activation
        self.n_threads = layer.n_threads
        self.weight = nn.Parameter(torch.from_numpy(np.array(layer.weight)))
        self.bias = nn.Parameter(torch.from_numpy(np.array(layer.bias)))

    @classmethod
    def from_layer(cls, layer, n_threads=None):
        """A module with a copy of a :class:`sparsefan.FanIn`'s parameters."""
        if not isinstance(layer, _layers.FanIn):
            raise TypeError(f"layer must be a sparsefan.FanIn, got {type(layer).__name__}")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._init_from(layer)
        if n_threads is not None:
            resolve_n_threads(n_threads)
            module.n_threads = n_threads
        return module

    def to_layer(self):
        """A :class:`sparsefan.FanIn` with a copy of the parameters (float32 modules only)."""
        for name in ("weight", "bias"):
            p = getattr(self, name)
            if p.dtype != torch.float32:
                raise TypeError(f"{name} is {p.dtype}: sparsefan layers are float32 (call "
                                f"module.float() first)")
        return _layers.FanIn(self.connectivity, self.c_in, self.c_out, self.activation,
                             weight=_numpy(self.weight.cpu()), bias=_numpy(self.bias.cpu()),
                             n_threads=self.n_threads)

    @property
    def n_in(self):
        return self.connectivity.n_in

    @property
    def n_out(self):
        return self.connectivity.n_out

    @property
    def weight_shape(self):
        return (self.connectivity.nnz, self.c_in, self.c_out)

    @property
    def bias_shape(self):
        return (self.connectivity.n_out, self.c_out)

    def extra_repr(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"{self.connectivity!r}, c_in={self.c_in}, c_out={self.c_out}{act}"

    def _parameters_checked(self):
        """(weight, bias) after the checks the kernels rely on (they may have been replaced)."""
        w = _check_tensor(self.weight, "weight")
        b = _check_tensor(self.bias, "bias", w.dtype)
        for name, p, shape in (("weight", w, self.weight_shape), ("bias", b, self.bias_shape)):
            if tuple(p.shape) != shape:
                raise _shape_error(name, shape, p.shape)
        return w.contiguous(), b.contiguous()

    def forward_fm(self, xt, n_threads=None):
        """xt (n_in, c_in, batch) -> (n_out, c_out, batch), the kernels' layout: no copy when
        xt is contiguous."""
        w, b = self._parameters_checked()
        _check_tensor(xt, "xt", w.dtype)
        if xt.dim() != 3 or tuple(xt.shape[:2]) != (self.n_in, self.c_in):
            raise _shape_error("xt", (self.n_in, self.c_in, None), xt.shape)
        n = _threads(self.n_threads if n_threads is None else n_threads)
        return _FanInFunction.apply(xt.contiguous(), w, b, self, n)

    def forward(self, x):
        _check_tensor(x, "x", self._parameters_checked()[0].dtype)
        if x.dim() == 2 and self.c_in == 1:
            want = (None, self.n_in)
        else:
            want = (None, self.n_in, self.c_in)
        if x.dim() != len(want) or tuple(x.shape[1:]) != want[1:]:
            raise _shape_error("x", want, x.shape)
        n = _threads(self.n_threads)
        y = from_feature_major(self.forward_fm(to_feature_major(x, n), n), n)
        return y.reshape(x.shape[0], self.n_out) if x.dim() == 2 and self.c_out == 1 else y


def aggregate_scores(Z, aggregate):
    """(batch, C) aggregate scores of per-unit logits Z (M, C, batch), as torch operations:
    mean logits (for ``F.cross_entropy``), log mean probability (for ``F.nll_loss``) or vote
    fractions (not differentiable: train a vote with :func:`unit_cross_entropy`)."""
    if aggregate == "mean_logits":
        return Z.mean(dim=0).T
    if aggregate == "mean_prob":
        return (torch.logsumexp(F.log_softmax(Z, dim=1), dim=0) - math.log(Z.shape[0])).T
    if aggregate == "vote":  # ties go to the lowest class, as in sparsefan.aggregate
        winners = Z.detach().argmax(dim=1)  # (M, B)
        votes = F.one_hot(winners, Z.shape[1]).sum(dim=0)  # (B, C)
        return votes.to(Z.dtype) / Z.shape[0]
    raise ValueError(f"aggregate must be one of {agg.AGGREGATES}, got {aggregate!r}")


def unit_cross_entropy(Z, y):
    """The mean over units and examples of every unit's own cross-entropy (the per-unit loss
    of ``sparsefan.train``): Z (M, C, batch), y (batch,) int64 labels."""
    return F.cross_entropy(Z.permute(2, 1, 0), y[:, None].expand(-1, Z.shape[0]))


class Network(nn.Module):
    """A chain of :class:`FanIn` modules ending in per-unit class scores, and an aggregation
    (see :class:`sparsefan.Network`). Activations stay in the kernels' layout between layers:
    the layout changes once, at the entry.

    ``forward(x)``: x (batch, n_in) or (batch, *input_shape) -> (batch, n_classes) aggregate
    scores (:func:`aggregate_scores`). ``unit_logits(x)``: Z (M, n_classes, batch).
    ``predict(x)``: the classes ``sparsefan.Network.predict`` gives (the same float64 scores).
    ``n_threads``: for the layout change and every layer without its own (None: torch's).
    """

    def __init__(self, layers, n_classes, aggregate="mean_logits", input_shape=None,
                 name=None, n_threads=None):
        super().__init__()
        layers = list(layers)
        n_classes = check_int(n_classes, "n_classes", 2)
        _check_chain(layers, n_classes)
        if aggregate not in agg.AGGREGATES:
            raise ValueError(f"aggregate must be one of {agg.AGGREGATES}, got {aggregate!r}")
        n_in = layers[0].n_in
        input_shape = (n_in,) if input_shape is None else tuple(int(s) for s in input_shape)
        if any(s < 1 for s in input_shape) or math.prod(input_shape) != n_in:
            raise ValueError(f"input_shape {input_shape} does not hold n_in = {n_in} values")
        resolve_n_threads(n_threads)
        self.layers = nn.ModuleList(layers)
        self.n_classes, self.aggregate, self.input_shape = n_classes, aggregate, input_shape
        self.name = name or "network"
        self.n_threads = n_threads
        self.metadata = {}

    @property
    def n_in(self):
        return self.layers[0].n_in

    @property
    def n_units(self):
        return self.layers[-1].n_out

    def extra_repr(self):
        return (f"{self.name!r}, n_classes={self.n_classes}, aggregate={self.aggregate!r}, "
                f"input_shape={self.input_shape}")

    def _inputs(self, x):
        _check_tensor(x, "x", self.layers[0]._parameters_checked()[0].dtype)
        if x.dim() > 2 and tuple(x.shape[1:]) == self.input_shape:
            x = x.reshape(x.shape[0], -1)
        if x.dim() != 2 or x.shape[1] != self.n_in:
            raise _shape_error("x", (None, self.n_in), x.shape)
        return x

    def unit_logits(self, x):
        """Per-unit class scores Z (M, n_classes, batch), differentiable."""
        x = self._inputs(x)
        _check_chain(list(self.layers), self.n_classes)  # a public list: it may have changed
        n = _threads(self.n_threads)
        h = to_feature_major(x, n)
        for layer in self.layers:  # the network's count for layers that have none
            h = layer.forward_fm(h, n if layer.n_threads is None else None)
        return h

    def forward(self, x):
        return aggregate_scores(self.unit_logits(x), self.aggregate)

    @torch.no_grad()
    def scores(self, x):
        """(batch, C) float64 aggregate scores, computed as ``sparsefan.Network.scores``."""
        Z = _numpy(self.unit_logits(x))
        with np.errstate(invalid="ignore", over="ignore"):
            return torch.from_numpy(np.ascontiguousarray(agg.scores(Z, self.aggregate)))

    def predict(self, x):
        """(batch,) int64 classes: the argmax of :meth:`scores` (ties -> lowest class)."""
        return self.scores(x).argmax(dim=1)


def _check_chain(layers, n_classes):
    """The checks of ``sparsefan.Network._check_chain``, for torch modules."""
    check_chain(layers, (FanIn, "sparsefan.torch.FanIn"), n_classes)


# -- conversion ------------------------------------------------------------------------------

def from_network(net, n_threads=None):
    """A :class:`Network` module with a copy of ``net``'s parameters (a sparsefan.Network);
    its ``predict`` gives the same classes, bit for bit."""
    if not isinstance(net, _network.Network):
        raise TypeError(f"net must be a sparsefan.Network, got {type(net).__name__}")
    layers = [FanIn.from_layer(layer) for layer in net.layers]
    module = Network(layers, net.n_classes, net.aggregate, net.input_shape, net.name, n_threads)
    module.metadata = dict(net.metadata)
    return module


def to_network(module):
    """A :class:`sparsefan.Network` with a copy of a :class:`Network` module's parameters
    (float32; a DistributedDataParallel wrapper is unwrapped)."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    if not isinstance(module, Network):
        raise TypeError(f"module must be a sparsefan.torch.Network, got "
                        f"{type(module).__name__}")
    net = _network.Network([layer.to_layer() for layer in module.layers], module.n_classes,
                           module.aggregate, module.input_shape, module.name)
    net.metadata = dict(module.metadata)
    return net


def _as_array(value):
    """A tensor given as initial weights becomes the NumPy array sparsefan.FanIn validates."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
