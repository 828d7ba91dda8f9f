"""The engine: the one module that calls the C kernels (``sparsefan._kernels``).

It owns the kernels' layout (feature-major activations, ``(units, channels, batch)`` with the
batch contiguous, in 64-byte aligned buffers), the choice between the C gather kernels and one
BLAS product per layer, the fused forward plan of a network, and the small numeric kernels
(unit means, certificates). Everything here trusts its arguments: the public layer
(:class:`~sparsefan.FanIn`, :class:`~sparsefan.Network`, ``sparsefan.layout``) validates once
per public call and then calls in here, so a training step checks its arrays once, not once per
layer.

Layers are read through their public attributes (``weight``, ``bias``, ``connectivity``,
``c_in``, ``c_out``, ``activation``).
"""
import math
import weakref

import numpy as np

from sparsefan import _kernels

# Feature-major activations are gathered one batch vector at a time; vector loads that straddle two
# cache lines cost the kernels up to a third of their speed, so the arrays this package allocates
# start on a cache-line boundary (so does every row when the batch is a multiple of 16).
ALIGNMENT = 64
# Multiply-adds below which a kernel call stays on the calling thread (tests size their
# thread-count checks above it, so that the threads really split the work).
PARALLEL_MIN_WORK = _kernels.PARALLEL_MIN_WORK


def openmp_enabled():
    return _kernels.openmp_enabled()


def openmp_max_threads():
    """The OpenMP runtime's current limit (what threadpoolctl and ``omp_set_num_threads`` set)."""
    return _kernels.openmp_max_threads()


def empty_aligned(shape, zero=False):
    """A C-contiguous float32 array of ``shape`` starting on a 64-byte boundary."""
    flat = isinstance(shape, (int, np.integer))  # (no reshape: the common case, kept lean)
    shape = int(shape) if flat else tuple(map(int, shape))
    n = shape if flat else math.prod(shape)
    buf = np.empty(n + ALIGNMENT // 4, np.float32)
    start = _kernels.float_offset_to(buf, ALIGNMENT)
    out = buf[start:start + n] if flat else buf[start:start + n].reshape(shape)
    if zero:
        out.fill(0.0)
    return out


class Workspace:
    """Activation-sized buffers kept from one training step to the next, by role: a new large
    array costs the operating system a page fault and a page of zeros per 4 KB on its first
    write (the direct MNIST network at batch 128: 1,700 faults and 11-18 ms of system time per
    step, measured). One per training loop: two calls running at once must not share one."""

    def __init__(self):
        self._buffers = {}

    def get(self, role, shape, zero=False):
        """An aligned float32 array of ``shape`` for ``role``: the same memory as the last
        call with this role and shape (contents left from then, unless ``zero``)."""
        shape = tuple(int(s) for s in shape)
        buf = self._buffers.get(role)
        if buf is None or buf.shape != shape:
            self._buffers[role] = buf = empty_aligned(shape, zero=zero)
        elif zero:
            buf.fill(0.0)
        return buf

    @property
    def nbytes(self):
        return sum(b.nbytes for b in self._buffers.values())


def _buffer(ws, role, shape, zero=False):
    return empty_aligned(shape, zero=zero) if ws is None else ws.get(role, shape, zero=zero)


# -- layout --------------------------------------------------------------------------------------

def to_feature_major(x, n, ws=None):
    """(batch, units[, channels]) -> (units, channels, batch), a new aligned array (or the
    workspace's)."""
    batch = x.shape[0]
    feats = x.shape[1:] if x.ndim == 3 else (x.shape[1], 1)
    out = _buffer(ws, "input", feats + (batch,))
    _kernels.transpose(out.reshape(-1), x.reshape(-1), batch, math.prod(feats), n)
    return out


def from_feature_major(xt, n):
    """(units, channels, batch) -> (batch, units, channels), a new aligned array."""
    units, channels, batch = xt.shape
    out = empty_aligned((batch, units, channels))
    _kernels.transpose(out.reshape(-1), xt.reshape(-1), units * channels, batch, n)
    return out


# -- one layer -----------------------------------------------------------------------------------

def uses_blas(layer):
    """A layer with one output unit (a dense layer, or a per-unit layer over a single unit) has
    no parallelism across rows: its work is one matrix product, which BLAS does best. Same math
    and layouts as the kernels; ``FanIn.blas_single_unit = False`` (tests) forces the kernel."""
    conn = layer.connectivity
    return layer.blas_single_unit and conn.n_out == 1 and conn.nnz > 0


def _gather(layer, xt):
    idx = layer.connectivity.indices
    n_in = layer.connectivity.n_in
    if idx.size == n_in and (idx == np.arange(n_in)).all():
        return xt.reshape(n_in * layer.c_in, -1)
    return xt[idx].reshape(idx.size * layer.c_in, -1)


def linear(layer, out, xt, n, relu):
    """out = W x + b (ReLU'd with ``relu``) for ``layer``, in the kernels' layout."""
    if uses_blas(layer):
        w = layer.weight.reshape(-1, layer.c_out)  # (k * c_in, c_out)
        y = out.reshape(layer.c_out, -1)
        np.matmul(w.T, _gather(layer, xt), out=y)
        y += layer.bias.reshape(layer.c_out, 1)
        if relu:
            np.maximum(y, 0.0, out=y)  # keeps NaN, like the kernel
        return
    conn = layer.connectivity
    _kernels.fanin_forward(out.reshape(-1), xt.reshape(-1), layer.weight.reshape(-1),
                           layer.bias.reshape(-1), conn.indptr, conn.indices, layer.c_in,
                           layer.c_out, xt.shape[2], relu, n)


def forward(layer, xt, n, out=None):
    """The layer's output (n_out, c_out, batch) for xt (n_in, c_in, batch), into ``out``."""
    if out is None:
        out = empty_aligned((layer.connectivity.n_out, layer.c_out, xt.shape[2]))
    linear(layer, out, xt, n, relu=layer.activation == "relu")
    if layer.activation == "maxmin":
        maxmin(out)
    return out


def backward(layer, xt, dyt, yt, n, grad_input=None, grad_weight=None, grad_bias=None,
             need_input_grad=True, need_param_grad=True, overwrite_dyt=False, dz=False,
             relu_input=False, ws=None, role=None):
    """(input gradient or None, weight gradient or None, bias gradient or None). Gradients
    accumulate into the buffers given (zeros are allocated for those not given); a buffer of
    ours is written, not accumulated into. ``overwrite_dyt``: a ReLU layer masks dyt in place.
    ``dz``: dyt is already the gradient before the activation (yt is not read).
    ``relu_input``: xt is the output of a ReLU and the input gradient (a buffer of ours) is
    returned through it, xt > 0 ? gradient : 0 -- masked in the kernel's registers, before its
    store, which saves the ReLU's own pass over it. ``ws``: a Workspace for the input gradient
    (under ``role``) when it is ours."""
    conn = layer.connectivity
    batch = xt.shape[2]
    activation = None if dz else layer.activation
    if activation == "relu":
        dzt = dyt if overwrite_dyt else empty_aligned(dyt.shape)
        _kernels.relu_backward(dzt.reshape(-1), dyt.reshape(-1), yt.reshape(-1), n)
        dyt = dzt
    elif activation == "maxmin":  # recompute the pre-activation: one more forward pass
        zt = empty_aligned(dyt.shape)
        linear(layer, zt, xt, n, relu=False)
        dyt = maxmin_backward(zt, dyt)
    if need_param_grad:
        if grad_weight is None:
            grad_weight = empty_aligned(layer.weight.shape, zero=True)
        if grad_bias is None:
            grad_bias = empty_aligned(layer.bias.shape, zero=True)
    else:
        grad_weight = grad_bias = None
    blas = uses_blas(layer)
    # the GEMM path adds into the rows its unit reads, so it needs zeros; the kernel can write
    fresh_input = need_input_grad and grad_input is None and not blas
    if fresh_input:
        grad_input = _buffer(ws, role, xt.shape)
    elif need_input_grad and grad_input is None:
        grad_input = _buffer(ws, role, xt.shape, zero=True)
    elif not need_input_grad:
        grad_input = None
    if blas:
        dz = dyt.reshape(layer.c_out, -1)  # (c_out, batch), already through the ReLU
        if grad_weight is not None:
            grad_weight.reshape(-1, layer.c_out)[...] += _gather(layer, xt) @ dz.T
            grad_bias.reshape(-1)[...] += dz.sum(axis=1)
        if grad_input is not None:
            dxg = (layer.weight.reshape(-1, layer.c_out) @ dz).reshape(-1, layer.c_in, batch)
            grad_input[conn.indices] += dxg  # a row never repeats an input
            if relu_input:
                _kernels.relu_backward(grad_input.reshape(-1), grad_input.reshape(-1),
                                       xt.reshape(-1), n)
        return grad_input, grad_weight, grad_bias
    if need_param_grad:
        _kernels.fanin_backward_params(grad_weight.reshape(-1), grad_bias.reshape(-1),
                                       dyt.reshape(-1), xt.reshape(-1), conn.indptr,
                                       conn.indices, layer.c_in, layer.c_out, batch, n)
    if need_input_grad:
        if relu_input and not fresh_input:
            raise ValueError("relu_input needs the input gradient in a buffer of ours")
        t = conn.transpose()
        _kernels.fanin_backward_input(grad_input.reshape(-1), dyt.reshape(-1),
                                      layer.weight.reshape(-1), t.indptr, t.rows, t.slots,
                                      layer.c_in, layer.c_out, batch, n,
                                      accumulate=not fresh_input,
                                      relu_x=xt.reshape(-1) if relu_input else None)
    return grad_input, grad_weight, grad_bias


def maxmin(out):
    """MaxMin in place on (units, channels, batch): channels (2i, 2i+1) -> (max, min)."""
    v = out.reshape(out.shape[0], -1, 2, out.shape[2])
    lo = np.minimum(v[:, :, 0], v[:, :, 1])
    np.maximum(v[:, :, 0], v[:, :, 1], out=v[:, :, 0])
    v[:, :, 1] = lo


def maxmin_backward(zt, dyt):
    """The gradient w.r.t. the pre-activation zt of MaxMin's output gradient dyt (a new
    array): the max's gradient goes to the larger of the pair (the first one at a tie)."""
    z = zt.reshape(zt.shape[0], -1, 2, zt.shape[2])
    d = dyt.reshape(z.shape)
    first = z[:, :, 0] >= z[:, :, 1]
    out = np.empty_like(zt)
    o = out.reshape(z.shape)
    o[:, :, 0] = np.where(first, d[:, :, 0], d[:, :, 1])
    o[:, :, 1] = np.where(first, d[:, :, 1], d[:, :, 0])
    return out


# -- fused plans and their scratch ----------------------------------------------------------------

# Scratch buffers up to this size are kept by a plan for its next call (fresh pages cost page
# faults at batch 1); larger ones are allocated per call and released with it.
SPARE_SCRATCH_BYTES = 2**20


class FusedPlan:
    """A chain of layers as one C call (``_kernels.NetworkPlan``) and its scratch policy.

    ``specs``: per layer ``(W, b, indptr, indices, n_in, n_out, c_in, c_out, relu)``, validated
    C-contiguous arrays (the plan points into them: in-place updates are seen, replaced arrays
    are not -- ``arrays`` lets the caches below tell)."""

    __slots__ = ("_c", "_n_layers", "_spare", "__weakref__")

    def __init__(self, specs):
        specs = list(specs)
        self._c = _kernels.NetworkPlan(specs)
        self._n_layers = len(specs)
        self._spare = None  # a small scratch buffer kept between calls

    @property
    def arrays(self):
        return self._c.arrays

    def forward(self, x, batch, n_threads, out=None, batch_major=False):
        """The layers on x (batch * n_in * c_in,), a row-major batch: the last layer's output
        (n_out * c_out * batch,) -- or with ``batch_major`` (batch * n_out * c_out,), NumPy's
        layout --, written into ``out`` if given, else returned.

        Small activation buffers are kept for the next call. Large ones are allocated per call,
        and without ``out`` the last layer writes into the buffer its input no longer needs, so
        that a forward pass holds two activation buffers, not three; the result is then a view
        of that buffer, or a copy of it when the buffer is much larger than the result. A
        batch-major result is always a new array (or ``out``); the last layer then needs no
        buffer of its own (it goes through small scratch blocks in C)."""
        c = self._c
        n_z = c.n_out * c.c_out * batch
        n_even, n_odd = c.buffer_sizes(batch, False)
        small = (n_even + n_odd + 32) * 4 <= SPARE_SCRATCH_BYTES
        if out is None and (small or batch_major):
            # on a cache line: threads writing neighbouring column blocks of a batch-major
            # result then never share a line at a block's edge
            out = empty_aligned(n_z)
        if batch == 0 or n_z == 0:
            return out if out is not None else np.empty(0, dtype=np.float32)
        if small:
            # take the kept buffer (under the GIL, so a concurrent call cannot share it)
            buf, self._spare = self._spare, None
            if buf is None or buf.shape[0] < n_even + n_odd + 32:
                buf = empty_aligned(n_even + n_odd + 32)
            try:
                c.run(x, batch, n_threads, out, buf, buf[(n_even + 15) // 16 * 16:], batch_major)
            finally:
                self._spare = buf
            return out
        if out is None:  # (never with batch_major: out was allocated above)
            n_even, n_odd = c.buffer_sizes(batch, True)
        even, odd = empty_aligned(n_even + 1), empty_aligned(n_odd + 1)
        c.run(x, batch, n_threads, out, even, odd, batch_major)
        if out is not None:
            return out
        last = odd if self._n_layers % 2 == 0 else even
        even = odd = None  # release the other buffer before a copy
        result = last[:n_z]
        return result.copy() if last.shape[0] > 1.25 * n_z else result


class Int8FusedPlan:
    """The int8 layers of a quantized network as one C call (``_kernels.Int8Plan``: weights
    repacked once) and its scratch policy (as :class:`FusedPlan`)."""

    __slots__ = ("_c", "_spare", "__weakref__")

    def __init__(self, specs, in_inv_scale, layouts=None):
        self._c = _kernels.Int8Plan(specs, in_inv_scale, layouts)
        self._spare = None

    n_out = property(lambda self: self._c.n_out)
    c_out = property(lambda self: self._c.c_out)
    layouts = property(lambda self: self._c.layouts, doc="per layer: 'wide' or 'dot'")
    packed_bytes = property(lambda self: self._c.packed_bytes)

    def forward(self, x, batch, n_threads, out):
        """The layers on x (batch * n_in,), a row-major float32 batch: the last layer's float
        outputs written into out (n_out * c_out * batch,), [unit][channel][example]."""
        if batch == 0:
            return out
        need = self._c.scratch_bytes(batch, n_threads)
        buf, self._spare = self._spare, None
        if buf is None or buf.shape[0] < need:
            buf = np.empty(need, dtype=np.uint8)
        try:
            self._c.run(x, batch, n_threads, out, buf)
        finally:
            if need <= SPARE_SCRATCH_BYTES:
                self._spare = buf
        return out


# -- one layer in NumPy's layout ---------------------------------------------------------------

_LAYER_PLANS = weakref.WeakKeyDictionary()  # layer -> (arrays, form, plan)


def layer_plan(layer):
    """The layer as one C call that reads and writes NumPy's ``(batch, ...)`` layout (the
    layout changes run inside the call, on its threads), or None for a GEMM or MaxMin layer.
    Cached per layer and rebuilt when its arrays are replaced (as ``fused_plan``)."""
    if uses_blas(layer) or layer.activation == "maxmin":
        return None
    conn = layer.connectivity
    arrays = (layer.weight, layer.bias, conn.indptr, conn.indices)
    form = (layer.activation, layer.c_in, layer.c_out)
    hit = _LAYER_PLANS.get(layer)
    if hit is not None and hit[1] == form and all(a is b for a, b in zip(hit[0], arrays)):
        return hit[2]
    plan = FusedPlan([(layer.weight, layer.bias, conn.indptr, conn.indices,
                       layer.n_in, layer.n_out, layer.c_in, layer.c_out,
                       layer.activation == "relu")])
    _LAYER_PLANS[layer] = (arrays, form, plan)
    return plan


def forward_public(layer, x, n):
    """The layer's output for x (batch, n_in[, c_in]): a new (batch, n_out * c_out) array."""
    plan = layer_plan(layer)
    if plan is None:
        return from_feature_major(forward(layer, to_feature_major(x, n), n), n)
    return plan.forward(x.reshape(-1), x.shape[0], n, batch_major=True)


def backward_public(layer, x, dy, y, n, need_input_grad):
    """``backward`` for arrays in NumPy's layout: x (batch, n_in[, c_in]), dy and y (batch,
    n_out[, c_out]; y is read for ReLU only). Returns (input gradient shaped like x or None,
    weight gradient, bias gradient), new arrays."""
    batch = x.shape[0]
    xt = to_feature_major(x, n)
    if layer.activation == "relu":  # the ReLU's backward and the layout change in one pass
        dzt = empty_aligned((layer.n_out, layer.c_out, batch))
        _kernels.relu_backward_transpose(dzt.reshape(-1), dy.reshape(-1), y.reshape(-1), batch,
                                         layer.n_out * layer.c_out, n)
        gi, gw, gb = backward(layer, xt, dzt, None, n, need_input_grad=need_input_grad, dz=True)
    else:
        dyt = to_feature_major(dy.reshape(batch, layer.n_out, layer.c_out), n)
        gi, gw, gb = backward(layer, xt, dyt, None, n, need_input_grad=need_input_grad,
                              overwrite_dyt=True)
    if gi is not None:
        gi = from_feature_major(gi, n).reshape(x.shape)
    return gi, gw, gb


# -- a chain of layers -------------------------------------------------------------------------

def forward_chain(layers, xt, n, keep=False, ws=None):
    """Every layer in turn on xt: the last output, or with ``keep`` every layer's input and the
    last output. ``ws``: the outputs go to a Workspace's buffers."""
    acts = [xt]
    for i, layer in enumerate(layers):
        out = None if ws is None else ws.get(("output", i), (layer.connectivity.n_out,
                                                              layer.c_out, xt.shape[2]))
        acts.append(forward(layer, acts[-1], n, out=out))
        if not keep:
            acts = acts[-1:]
    return acts if keep else acts[-1]


def backward_chain(layers, acts, dy, n, grads=None, ws=None):
    """Back through every layer from dy (ours: masked in place). ``grads`` [(weight, bias)]
    accumulate the parameter gradients; None: the input gradient alone. Returns it (a
    Workspace's buffer with ``ws``). A gradient that enters a ReLU layer from the layer above
    it is masked by that layer's kernel."""
    dz = False  # dy is already through layer i's activation
    for i in range(len(layers) - 1, -1, -1):
        through = i > 0 and layers[i - 1].activation == "relu"
        if grads is None:
            dy = backward(layers[i], acts[i], dy, acts[i + 1], n, need_param_grad=False,
                          overwrite_dyt=True, dz=dz, relu_input=through, ws=ws,
                          role=("grad", i))[0]
        else:
            dy = backward(layers[i], acts[i], dy, acts[i + 1], n, grad_weight=grads[i][0],
                          grad_bias=grads[i][1], need_input_grad=i > 0, overwrite_dyt=True,
                          dz=dz, relu_input=through, ws=ws, role=("grad", i))[0]
        dz = through
    return dy


_PLANS = weakref.WeakKeyDictionary()  # network -> (key, plan)


def fused_plan(network):
    """The network's layers as one C call (the inference path), or None when a layer runs as a
    GEMM or has a MaxMin activation.

    Cached per network; rebuilt when a layer's weight, bias or connectivity arrays are replaced
    or its activation or channels change (in-place updates, as the optimizers make, keep it
    valid: the plan points into the arrays). ``network.layers`` is a public list and the C call
    trusts the chain: a rebuild checks it."""
    layers = network.layers
    if any(uses_blas(layer) or layer.activation == "maxmin" for layer in layers):
        return None  # layer by layer: GEMM layers and MaxMin run outside the C chain
    arrays = [a for layer in layers for a in (layer.weight, layer.bias,
                                              layer.connectivity.indptr,
                                              layer.connectivity.indices)]
    form = [(layer.activation, layer.c_in, layer.c_out) for layer in layers]
    hit = _PLANS.get(network)
    if (hit is not None and hit[0][1] == form and len(hit[0][0]) == len(arrays)
            and all(a is b for a, b in zip(hit[0][0], arrays))):
        return hit[1]
    network._check_chain(layers)
    plan = FusedPlan([
        (layer.weight, layer.bias, layer.connectivity.indptr, layer.connectivity.indices,
         layer.n_in, layer.n_out, layer.c_in, layer.c_out, layer.activation == "relu")
        for layer in layers])
    _PLANS[network] = ((arrays, form), plan)
    return plan


def plan_forward(plan, x, n):
    """The plan on x (batch, n_in): (n_out * c_out * batch,) float32."""
    return plan.forward(x.reshape(-1), x.shape[0], n)


# -- small kernels -----------------------------------------------------------------------------

def mean_units(Z, out):
    """out (C * B,) float64 = the mean over units of Z (M, C * B) float32."""
    _kernels.mean_units(Z, out)


def certify_mean_logits(classes, l2, l0, S, K, cum):
    _kernels.certify_mean_logits(classes, l2, l0, S, K, cum)


def linear_backward_input(conn, weight, c_in, c_out, dyt, n):
    """(n_in, c_in, P) = W^T dyt for bare arrays (no bias, no activation): the certificates'
    passes through |W|."""
    out = empty_aligned((conn.n_in, c_in, dyt.shape[2]))
    t = conn.transpose()
    _kernels.fanin_backward_input(out.reshape(-1), dyt.reshape(-1), weight.reshape(-1),
                                  t.indptr, t.rows, t.slots, c_in, c_out, dyt.shape[2], n,
                                  accumulate=False)
    return out


def linear_forward(conn, weight, c_in, c_out, xt, n):
    """(n_out, c_out, P) = W xt for bare arrays (no bias, no activation)."""
    out = empty_aligned((conn.n_out, c_out, xt.shape[2]))
    bias = np.zeros(conn.n_out * c_out, np.float32)
    _kernels.fanin_forward(out.reshape(-1), xt.reshape(-1), weight.reshape(-1), bias,
                           conn.indptr, conn.indices, c_in, c_out, xt.shape[2], False, n)
    return out


def linear_weight_grad(conn, c_in, c_out, xt, dyt, n):
    """(nnz, c_in, c_out) = sum over the batch of xt x dyt along every connection."""
    gw = empty_aligned((conn.nnz, c_in, c_out), zero=True)
    gb = empty_aligned((conn.n_out, c_out), zero=True)
    _kernels.fanin_backward_params(gw.reshape(-1), gb.reshape(-1), dyt.reshape(-1),
                                   xt.reshape(-1), conn.indptr, conn.indices, c_in, c_out,
                                   xt.shape[2], n)
    return gw


# -- int8 inference ----------------------------------------------------------------------------

_INT8_PLANS = weakref.WeakKeyDictionary()  # QuantizedNetwork -> Int8FusedPlan


def int8_variant():
    """The int8 kernel variant in use ("generic" or "avx2"; it follows the float variant)."""
    return _kernels.int8_variant()


def int8_plan(qnet, layouts=None):
    """The quantized network's layers as one C call, weights repacked once (cached; the
    network's layers and arrays are read-only, so the plan never goes stale). ``layouts``
    forces each layer's packed layout ("wide" / "dot"; tests): a fresh plan, not cached."""
    plan = _INT8_PLANS.get(qnet) if layouts is None else None
    if plan is None:
        plan = Int8FusedPlan([
            (l.qweight, l.multiplier, l.bias, l.connectivity.indptr, l.connectivity.indices,
             l.n_in, l.n_out, l.c_in, l.c_out, l.activation == "relu", l.out_inv_scale)
            for l in qnet.layers], qnet.in_inv_scale, layouts)
        if layouts is None:
            _INT8_PLANS[qnet] = plan
    return plan


def int8_forward(plan, x, n):
    """The int8 plan on x (batch, n_in) float32: (n_out * c_out * batch,) float32 logits."""
    out = np.empty(plan.n_out * plan.c_out * x.shape[0], dtype=np.float32)
    plan.forward(x.reshape(-1), x.shape[0], n, out)
    return out
