/*
 * sparsefan: the per-CPU int8 kernel variants behind csrc/int8.c (internal header).
 *
 * A variant computes whole units of one layer for a few examples; int8.c splits the units
 * over the kernels' threads (csrc/pool.h) and picks the variant. Every output element is computed by one thread,
 * so results do not depend on the split (and int32 sums do not depend on their order).
 *
 * Include after setting the floating-point contraction off (see SF_I8_NO_CONTRACT): the
 * requantization must be one multiply, then one add, as in csrc/runtime/sf_runtime.c.
 */
#ifndef SPARSEFAN_INT8_KERNELS_H
#define SPARSEFAN_INT8_KERNELS_H

#include <stdint.h>
#include <string.h>

#include "int8.h"

/* The runtime rounds v * multiplier and then adds the bias: two roundings. A compiler that
 * fused them into one multiply-add (GCC does in its default GNU mode when FMA is enabled, e.g.
 * by -march=native) would move a logit by an ulp and an activation by one step now and then. */
#if defined(__clang__)
#define SF_I8_NO_CONTRACT _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define SF_I8_NO_CONTRACT _Pragma("GCC optimize(\"fp-contract=off\")")
#else
#define SF_I8_NO_CONTRACT _Pragma("STDC FP_CONTRACT OFF")
#endif

/* Examples per pass over a layer's weights: a unit's packed block stays in L1 while it serves
 * each of them. */
#define SF_I8_BLOCK 8

/* Where one pass reads and writes. Example e (< E) reads x + e * x_stride and writes yq +
 * e * yq_stride (int8 layers), or yf[e + (j * c_out + o) * yf_stride] (the last layer). */
typedef struct {
    const int8_t *x;
    int64_t x_stride;
    int8_t *yq;           /* NULL for the last layer */
    int64_t yq_stride;
    float *yf;            /* the last layer's logits */
    int64_t yf_stride;
    int64_t E;
    int8_t *xg;           /* this thread's gather buffer: max_terms rounded up to 32, + 64 */
    int signed_x;         /* 0: every input activation is >= 0 (after a ReLU, or checked) */
} sf_i8_io;

typedef struct {
    const char *name;
    /* units [j0, j1) of L for the io's E examples */
    void (*units)(const sf_i8_layer *L, const sf_i8_io *io, int64_t j0, int64_t j1);
    /* q[i] = quantize(x[i] * inv) for i < n */
    void (*quantize)(int8_t *q, const float *x, int64_t n, float inv);
} sf_i8_kernel_table;

extern const sf_i8_kernel_table sf_i8_kernels_generic;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SF_I8_X86 1
extern const sf_i8_kernel_table sf_i8_kernels_avx2;
#endif

/* Round half away from zero and clamp to [-127, 127] (NaN -> 0): the runtime's quantize(). */
static inline int8_t sf_i8_quantize1(float v)
{
    if (v >= 127.0f)
        return 127;
    if (v <= -127.0f)
        return -127;
    if (v >= 0.0f)
        return (int8_t)(int32_t)(v + 0.5f);
    if (v < 0.0f)
        return (int8_t)(-(int32_t)(0.5f - v));
    return 0;
}

/* Copies of a connection's c_in activations: fixed sizes become plain moves. */
#define SF_I8_COPY_ROWS(N)                                                                     \
    for (int64_t p = p0; p < p1; ++p, r += (N))                                                \
        memcpy(xg + r, x + (int64_t)idx[p] * (N), (size_t)(N))

/* xg[r] = x[indices[p]][c] for the terms r = (p - indptr[j]) * c_in + c of unit j from term
 * `done` on (the caller may have gathered the first ones: r = done at connection p0), then
 * zeros up to a multiple of pad (4 or 32). Returns the padded count. xg has 32 bytes to spare. */
static inline int64_t sf_i8_gather_from(const sf_i8_layer *L, int64_t j, const int8_t *x,
                                        int8_t *xg, int64_t pad, int64_t done)
{
    static const int8_t zeros[32] = {0};
    const int64_t ci = L->c_in, p1 = L->indptr[j + 1];
    const int64_t p0 = L->indptr[j] + done / ci;
    const int32_t *idx = L->indices;
    int64_t r = done;
    switch (ci) {
    case 1: SF_I8_COPY_ROWS(1); break;
    case 2: SF_I8_COPY_ROWS(2); break;
    case 4: SF_I8_COPY_ROWS(4); break;
    case 8: SF_I8_COPY_ROWS(8); break;
    case 16: SF_I8_COPY_ROWS(16); break;
    case 32: SF_I8_COPY_ROWS(32); break;
    default:
        for (int64_t p = p0; p < p1; ++p, r += ci) {
            const int8_t *src = x + (int64_t)idx[p] * ci;
            int64_t c = 0;
            for (; c + 8 <= ci; c += 8)
                memcpy(xg + r + c, src + c, 8);
            for (; c < ci; ++c)
                xg[r + c] = src[c];
        }
        break;
    }
    memcpy(xg + r, zeros, 32); /* the padding (< 32 bytes), and beyond it, zero */
    return (r + pad - 1) & ~(pad - 1);
}
#undef SF_I8_COPY_ROWS

static inline int64_t sf_i8_gather(const sf_i8_layer *L, int64_t j, const int8_t *x, int8_t *xg,
                                   int64_t pad)
{
    return sf_i8_gather_from(L, j, x, xg, pad, 0);
}

#endif /* SPARSEFAN_INT8_KERNELS_H */
