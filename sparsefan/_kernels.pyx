# Thin bindings over csrc/fanin.c. Private: the public API (sparsefan.layers, sparsefan.layout)
# validates every argument before calling here; these functions trust shapes, dtypes, bounds and
# contiguity, and only release the GIL around the C calls.
from libc.stdint cimport int32_t, int64_t

import os
import warnings

import numpy as np

from sparsefan._fanin cimport (
    sf_openmp_enabled, sf_openmp_max_threads, SF_PARALLEL_MIN_WORK, SF_CPU_N_VARIANTS, sf_cpu_variant, sf_cpu_variant_name,
    sf_cpu_variant_supported, sf_set_cpu_variant, sf_fanin_forward, sf_fanin_backward_input,
    sf_fanin_backward_input_relu,
    sf_fanin_backward_params, sf_relu_backward, sf_transpose, sf_relu_backward_transpose,
    sf_chain_layer, sf_network_buffer_sizes,
    sf_network_forward, sf_certify_mean_logits, sf_pool_spin_us, sf_pool_backend,
    SF_SPIN_WAIT, SF_SPIN_IDLE,
)
from libc.stdlib cimport malloc, free


# Multiply-adds below which a kernel call runs on the calling thread alone (csrc/fanin.h).
PARALLEL_MIN_WORK = SF_PARALLEL_MIN_WORK


def openmp_enabled():
    return bool(sf_openmp_enabled())


def openmp_max_threads():
    return sf_openmp_max_threads()


def thread_backend():
    """Where the kernels' threads come from: "pthreads" (sparsefan's own pool, csrc/pool.c),
    "openmp" (systems without POSIX threads) or "none" (a single-threaded build)."""
    return sf_pool_backend().decode()


def spin_microseconds(us=None, idle=False):
    """How long a kernel thread spins before it sleeps, waiting for work inside a call or, with
    ``idle``, for the next call (benchmarks; not thread-safe): returns the current value, and
    sets it to ``us`` when given."""
    which = SF_SPIN_IDLE if idle else SF_SPIN_WAIT
    if us is None:
        return sf_pool_spin_us(which, -1)
    if us < 0 or us > 1000000:
        raise ValueError(f"spin time must be within 0 .. 1000000 microseconds, got {us}")
    return sf_pool_spin_us(which, us)


# -- CPU variants ---------------------------------------------------------------------------------

CPU_VARIANTS = tuple(sf_cpu_variant_name(v).decode() for v in range(SF_CPU_N_VARIANTS))


def cpu_variant():
    """The kernel variant in use: "generic", "avx2" or "avx512"."""
    return sf_cpu_variant_name(sf_cpu_variant()).decode()


def supported_cpu_variants():
    """The variants this build has and this CPU can run, lowest first."""
    return tuple(name for v, name in enumerate(CPU_VARIANTS) if sf_cpu_variant_supported(v))


def set_cpu_variant(name):
    """Use the kernel variant ``name`` from now on (tests and benchmarks; not thread-safe).

    Returns the variant that was in use. Raises ValueError for an unknown name or a variant this
    CPU cannot run.
    """
    if name not in CPU_VARIANTS:
        raise ValueError(f"CPU variant must be one of {CPU_VARIANTS}, got {name!r}")
    if name not in supported_cpu_variants():
        raise ValueError(f"this CPU cannot run the {name!r} kernels; it supports "
                         f"{supported_cpu_variants()}")
    previous = cpu_variant()
    sf_set_cpu_variant(CPU_VARIANTS.index(name))
    return previous


def _init_cpu_variant():
    """Pick the variant once, at import (under the GIL): SPARSEFAN_CPU caps it, else the best."""
    wanted = os.environ.get("SPARSEFAN_CPU", "").strip().lower()
    best = sf_cpu_variant()  # detects the CPU
    if not wanted:
        return
    if wanted not in CPU_VARIANTS:
        warnings.warn(f"SPARSEFAN_CPU={wanted!r} is not one of {CPU_VARIANTS}; using "
                      f"{CPU_VARIANTS[best]!r}", RuntimeWarning, stacklevel=2)
        return
    v = CPU_VARIANTS.index(wanted)
    if v > best:
        warnings.warn(f"SPARSEFAN_CPU={wanted!r}: this CPU cannot run it; using "
                      f"{CPU_VARIANTS[best]!r}", RuntimeWarning, stacklevel=2)
        return
    sf_set_cpu_variant(v)


_init_cpu_variant()


def float_offset_to(float[::1] a, int64_t alignment):
    """How many floats from a's start to the next multiple of ``alignment`` bytes (a non-empty
    array; a quarter of the cost of ``a.ctypes.data``)."""
    cdef size_t p = <size_t>&a[0], m = <size_t>alignment
    return <int64_t>(((m - p % m) % m) // 4)


def fanin_forward(float[::1] y, const float[::1] x, const float[::1] W, const float[::1] b,
                  const int64_t[::1] indptr, const int32_t[::1] indices,
                  int64_t c_in, int64_t c_out, int64_t batch, bint relu, int n_threads):
    cdef int64_t n_out = indptr.shape[0] - 1
    cdef int64_t n_in = x.shape[0] // (c_in * batch) if batch > 0 else 0
    cdef const int32_t *idx = &indices[0] if indices.shape[0] > 0 else NULL
    cdef const float *w = &W[0] if W.shape[0] > 0 else NULL
    cdef const float *xp = &x[0] if x.shape[0] > 0 else NULL
    if y.shape[0] == 0:
        return
    with nogil:
        sf_fanin_forward(&y[0], xp, w, &b[0], &indptr[0], idx,
                         n_in, n_out, c_in, c_out, batch, relu, n_threads)


def fanin_backward_input(float[::1] dx, const float[::1] dy, const float[::1] W,
                         const int64_t[::1] t_indptr, const int32_t[::1] t_rows,
                         const int64_t[::1] t_slots,
                         int64_t c_in, int64_t c_out, int64_t batch, int n_threads,
                         bint accumulate=True, const float[::1] relu_x=None):
    """relu_x (the layer's input, output of a ReLU): dx = relu_x > 0 ? the gradient : 0,
    overwriting (accumulate is ignored)."""
    cdef int64_t n_in = t_indptr.shape[0] - 1
    cdef int64_t n_out = dy.shape[0] // (c_out * batch) if batch > 0 else 0
    cdef const int32_t *rows = &t_rows[0] if t_rows.shape[0] > 0 else NULL
    cdef const int64_t *slots = &t_slots[0] if t_slots.shape[0] > 0 else NULL
    cdef const float *w = &W[0] if W.shape[0] > 0 else NULL
    cdef const float *dyp = &dy[0] if dy.shape[0] > 0 else NULL
    if dx.shape[0] == 0:
        return
    if relu_x is not None:
        with nogil:
            sf_fanin_backward_input_relu(&dx[0], dyp, w, &relu_x[0], &t_indptr[0], rows, slots,
                                         n_in, n_out, c_in, c_out, batch, n_threads)
        return
    with nogil:
        sf_fanin_backward_input(&dx[0], dyp, w, &t_indptr[0], rows, slots,
                                n_in, n_out, c_in, c_out, batch, accumulate, n_threads)


def fanin_backward_params(float[::1] dW, float[::1] db, const float[::1] dy, const float[::1] x,
                          const int64_t[::1] indptr, const int32_t[::1] indices,
                          int64_t c_in, int64_t c_out, int64_t batch, int n_threads):
    cdef int64_t n_out = indptr.shape[0] - 1
    cdef int64_t n_in = x.shape[0] // (c_in * batch) if batch > 0 else 0
    cdef const int32_t *idx = &indices[0] if indices.shape[0] > 0 else NULL
    cdef float *dw = &dW[0] if dW.shape[0] > 0 else NULL
    cdef float *dbp = &db[0] if db is not None and db.shape[0] > 0 else NULL
    cdef const float *xp = &x[0] if x.shape[0] > 0 else NULL
    cdef const float *dyp = &dy[0] if dy.shape[0] > 0 else NULL
    if n_out == 0 or batch == 0:
        return
    with nogil:
        sf_fanin_backward_params(dw, dbp, dyp, xp, &indptr[0], idx,
                                 n_in, n_out, c_in, c_out, batch, n_threads)


def relu_backward(float[::1] dz, const float[::1] dy, const float[::1] y, int n_threads):
    if dz.shape[0] == 0:
        return
    with nogil:
        sf_relu_backward(&dz[0], &dy[0], &y[0], dz.shape[0], n_threads)


def transpose(float[::1] out, const float[::1] inp, int64_t rows, int64_t cols, int n_threads):
    if out.shape[0] == 0:
        return
    with nogil:
        sf_transpose(&out[0], &inp[0], rows, cols, n_threads)


def relu_backward_transpose(float[::1] dzt, const float[::1] dy, const float[::1] y,
                            int64_t rows, int64_t cols, int n_threads):
    """dzt (cols, rows) = where(y > 0, dy, 0).T for (rows, cols) dy and y."""
    if dzt.shape[0] == 0:
        return
    with nogil:
        sf_relu_backward_transpose(&dzt[0], &dy[0], &y[0], rows, cols, n_threads)


cdef class NetworkPlan:
    """The layers of a network as one C call (sf_network_forward).

    Built from a list of ``(W, b, indptr, indices, n_in, n_out, c_in, c_out, relu)`` with W, b
    float32 and indptr int64 / indices int32, all C-contiguous (validated by the caller). The plan
    holds the arrays, so the pointers it keeps stay valid; ``arrays`` lists them, so that the
    caller can tell when a layer's parameters were replaced. Buffers are the caller's
    (``sparsefan._engine.FusedPlan`` decides which to keep between calls).
    """
    cdef sf_chain_layer *layers
    cdef int n_layers
    cdef readonly tuple arrays
    cdef readonly int64_t n_in, c_in, n_out, c_out

    def __cinit__(self, specs):
        specs = list(specs)
        self.n_layers = len(specs)
        self.layers = <sf_chain_layer *>malloc(max(1, self.n_layers) * sizeof(sf_chain_layer))
        if self.layers == NULL:
            raise MemoryError()
        keep = []
        cdef const float[::1] W
        cdef const float[::1] b
        cdef const int64_t[::1] ptr
        cdef const int32_t[::1] idx
        for l, (w_, b_, ptr_, idx_, n_in, n_out, c_in, c_out, relu) in enumerate(specs):
            W = w_.reshape(-1)
            b = b_.reshape(-1)
            ptr = ptr_
            idx = idx_
            self.layers[l].W = &W[0] if W.shape[0] > 0 else NULL
            self.layers[l].b = &b[0] if b.shape[0] > 0 else NULL
            self.layers[l].indptr = &ptr[0]
            self.layers[l].indices = &idx[0] if idx.shape[0] > 0 else NULL
            self.layers[l].n_in = n_in
            self.layers[l].n_out = n_out
            self.layers[l].c_in = c_in
            self.layers[l].c_out = c_out
            self.layers[l].relu = 1 if relu else 0
            keep.extend((w_, b_, ptr_, idx_))
        self.arrays = tuple(keep)
        self.n_in = specs[0][4]
        self.c_in = specs[0][6]
        self.n_out = specs[len(specs) - 1][5]
        self.c_out = specs[len(specs) - 1][7]

    def __dealloc__(self):
        free(self.layers)

    def buffer_sizes(self, int64_t batch, bint last_in_buffer):
        """(even, odd): the floats of the two activation buffers that ``run`` needs (fanin.h)."""
        cdef int64_t n_even = 0, n_odd = 0
        sf_network_buffer_sizes(self.layers, self.n_layers, batch, 1 if last_in_buffer else 0,
                                &n_even, &n_odd)
        return n_even, n_odd

    def run(self, const float[::1] x, int64_t batch, int n_threads, out, float[::1] even,
            float[::1] odd, bint batch_major):
        """sf_network_forward on x (batch * n_in * c_in,) with the given activation buffers
        (sized by ``buffer_sizes(batch, out is None)``, 64-byte aligned). ``out``: the last
        layer's (n_out * c_out * batch,) -- (batch * n_out * c_out,) with ``batch_major`` --, or
        None to leave it at the start of its own parity buffer. batch >= 1."""
        cdef float[::1] z
        cdef float *zp = NULL
        cdef int64_t n_z = self.n_out * self.c_out * batch
        cdef int major = 1 if batch_major else 0
        cdef int rc
        if x.shape[0] != self.n_in * self.c_in * batch:
            raise ValueError(f"x must hold {self.n_in * self.c_in * batch} floats, got "
                             f"{x.shape[0]}")
        if out is not None:
            z = out
            if z.shape[0] != n_z:
                raise ValueError(f"out must hold {n_z} floats, got {z.shape[0]}")
            zp = &z[0]
        with nogil:
            rc = sf_network_forward(zp, &x[0], self.layers, self.n_layers, batch, &even[0],
                                    &odd[0], major, n_threads)
        if rc != 0:
            raise MemoryError("no memory for the layout change's scratch blocks")


def mean_units(const float[:, ::1] Z, double[::1] out):
    """out[i] = mean over rows r of Z[r, i], summed in float64 in row order."""
    cdef Py_ssize_t M = Z.shape[0], n = Z.shape[1], r, i
    cdef double *o
    if n == 0:
        return
    o = &out[0]
    with nogil:
        for i in range(n):
            o[i] = 0.0
        for r in range(M):
            for i in range(n):
                o[i] += Z[r, i]
        if M > 0:
            for i in range(n):
                o[i] /= M


def certify_mean_logits(int64_t[::1] pred, double[::1] r2, int64_t[::1] r0,
                        const double[:, ::1] S, const double[:, ::1] K,
                        const double[:, :, ::1] cum):
    """Per example: predicted class, certified L2 and L0 radii (csrc/certify.h). S (C, B)
    mean logits, K (C, C), cum (C, C, R + 1); the caller checked every shape."""
    cdef int64_t C = S.shape[0], B = S.shape[1], R = cum.shape[2] - 1
    if B == 0:
        return
    with nogil:
        sf_certify_mean_logits(&pred[0], &r2[0], &r0[0], &S[0, 0], C, B, &K[0, 0],
                               &cum[0, 0, 0], R)


# -- int8 inference (csrc/int8.h) -----------------------------------------------------------------

from libc.stdint cimport int8_t, uint16_t
from sparsefan._fanin cimport (
    SF_I8_WIDE, sf_i8_variant, sf_i8_variant_name, sf_i8_layer, sf_i8_choose_layout,
    sf_i8_pack_offsets, sf_i8_pack, sf_i8_scratch_bytes, sf_i8_network_forward,
)

INT8_LAYOUTS = ("wide", "dot")


def int8_variant():
    """The int8 kernel variant in use: "generic" or "avx2" (it follows cpu_variant())."""
    return sf_i8_variant_name(sf_i8_variant()).decode()


cdef class Int8Plan:
    """The int8 layers of a quantized network as one C call (sf_i8_network_forward).

    Built from a list of ``(qweight, multiplier, bias, indptr, indices, n_in, n_out, c_in,
    c_out, relu, out_inv_scale)`` -- qweight int8 (nnz, c_in, c_out) with values in [-127, 127]
    and int32 sums that cannot overflow, multiplier and bias float32 (n_out, c_out), indptr int64,
    indices int32, all C-contiguous (validated by the caller) -- and the input's 1 / scale. The
    weights are repacked (int8.h) into arrays the plan owns; it holds the other arrays.
    ``layouts``: per layer "wide", "dot" or None (the smaller; tests force each).
    """
    cdef sf_i8_layer *layers
    cdef int n_layers
    cdef float in_inv_scale
    cdef readonly tuple arrays
    cdef readonly tuple layouts
    cdef readonly int64_t packed_bytes, n_in, n_out, c_out

    def __cinit__(self, specs, float in_inv_scale, layouts=None):
        specs = list(specs)
        forced = [None] * len(specs) if layouts is None else list(layouts)
        if len(forced) != len(specs) or any(f not in (None,) + INT8_LAYOUTS for f in forced):
            raise ValueError(f"layouts must hold one of {INT8_LAYOUTS} or None per layer")
        self.n_layers = len(specs)
        self.in_inv_scale = in_inv_scale
        self.layers = <sf_i8_layer *>malloc(max(1, self.n_layers) * sizeof(sf_i8_layer))
        if self.layers == NULL:
            raise MemoryError()
        keep, layouts = [], []
        cdef const int8_t[::1] qw
        cdef int8_t[::1] packed
        cdef const float[::1] m
        cdef const float[::1] b
        cdef const int64_t[::1] ptr
        cdef int64_t[::1] wofs
        cdef const int32_t[::1] idx
        cdef const uint16_t[::1] idx16
        cdef int64_t total = 0, n_bytes, max_terms
        cdef int layout
        for l, (qw_, m_, b_, ptr_, idx_, n_in, n_out, c_in, c_out, relu, out_inv) in \
                enumerate(specs):
            qw = qw_.reshape(-1)
            m = m_.reshape(-1)
            b = b_.reshape(-1)
            ptr = ptr_
            idx = idx_
            if forced[l] is None:
                layout = sf_i8_choose_layout(&ptr[0], n_out, c_in, c_out)
            else:
                layout = INT8_LAYOUTS.index(forced[l])
            wofs_ = np.empty(n_out + 1, dtype=np.int64)
            wofs = wofs_
            n_bytes = sf_i8_pack_offsets(&ptr[0], n_out, c_in, c_out, layout, &wofs[0])
            packed_ = np.zeros(n_bytes + 64, dtype=np.int8)
            packed = packed_
            if n_bytes > 0:
                sf_i8_pack(&packed[0], &wofs[0], &qw[0], &ptr[0], n_out, c_in, c_out, layout)
            max_terms = int(np.diff(ptr_).max(initial=0)) * c_in
            self.layers[l].w = &packed[0]
            self.layers[l].wofs = &wofs[0]
            self.layers[l].indptr = &ptr[0]
            self.layers[l].indices = &idx[0] if idx.shape[0] > 0 else NULL
            self.layers[l].indices16 = NULL
            idx16_ = None
            if n_in <= 65536 and idx.shape[0] > 0:
                idx16_ = np.asarray(idx_).astype(np.uint16)
                idx16 = idx16_
                self.layers[l].indices16 = &idx16[0]
            self.layers[l].multiplier = &m[0]
            self.layers[l].bias = &b[0]
            self.layers[l].n_in = n_in
            self.layers[l].n_out = n_out
            self.layers[l].c_in = c_in
            self.layers[l].c_out = c_out
            self.layers[l].relu = 1 if relu else 0
            self.layers[l].layout = layout
            self.layers[l].out_inv_scale = out_inv
            self.layers[l].max_terms = max_terms
            keep.extend((packed_, wofs_, m_, b_, ptr_, idx_, idx16_))
            layouts.append(INT8_LAYOUTS[layout])
            total += n_bytes
        self.arrays = tuple(keep)
        self.layouts = tuple(layouts)
        self.packed_bytes = total
        self.n_in = specs[0][5]
        self.n_out = specs[len(specs) - 1][6]
        self.c_out = specs[len(specs) - 1][8]

    def __dealloc__(self):
        free(self.layers)

    def scratch_bytes(self, int64_t batch, int n_threads):
        """The bytes of scratch ``run`` needs for ``batch`` examples on ``n_threads``."""
        return sf_i8_scratch_bytes(self.layers, self.n_layers, batch, n_threads)

    def run(self, const float[::1] x, int64_t batch, int n_threads, float[::1] out,
            unsigned char[::1] scratch):
        """The layers on x (batch * n_in,), a row-major float32 batch: the last layer's
        float outputs written into out (n_out * c_out * batch,), [unit][channel][example].
        ``scratch``: at least ``scratch_bytes(batch, n_threads)`` bytes. batch >= 1."""
        if x.shape[0] != self.n_in * batch:
            raise ValueError(f"x must hold {self.n_in * batch} floats, got {x.shape[0]}")
        if out.shape[0] != self.n_out * self.c_out * batch:
            raise ValueError(f"out must hold {self.n_out * self.c_out * batch} floats, got "
                             f"{out.shape[0]}")
        if scratch.shape[0] < sf_i8_scratch_bytes(self.layers, self.n_layers, batch, n_threads):
            raise ValueError("scratch is too small")
        with nogil:
            sf_i8_network_forward(&out[0], &x[0], self.layers, self.n_layers,
                                  self.in_inv_scale, batch, &scratch[0], n_threads)
