/*
 * sparsefan: the per-CPU int8 kernel variants behind csrc/int8.c (internal header).
 *
 * A variant computes whole units of one layer for a few examples; int8.c splits the units
 * over OpenMP threads and picks the variant. Every output element is computed by one thread,
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
    int8_t *xg;           /* this thread's gather buffer: max_terms rounded up to 32, + 32 */
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

/* The unit's terms, xg[r] = x[indices[p]][c] for r = (p - indptr[j]) * c_in + c, zero-padded
 * to a multiple of pad (a power of two). Returns the padded count. */
static inline int64_t sf_i8_gather(const sf_i8_layer *L, int64_t j, const int8_t *x, int8_t *xg,
                                   int64_t pad)
{
    const int64_t p0 = L->indptr[j], p1 = L->indptr[j + 1], ci = L->c_in;
    const int32_t *idx = L->indices;
    int64_t r = 0;
    if (ci == 1) {
        for (int64_t p = p0; p < p1; ++p)
            xg[r++] = x[idx[p]];
    } else if (ci == 8) {
        for (int64_t p = p0; p < p1; ++p, r += 8)
            memcpy(xg + r, x + (int64_t)idx[p] * 8, 8);
    } else if (ci == 16) {
        for (int64_t p = p0; p < p1; ++p, r += 16)
            memcpy(xg + r, x + (int64_t)idx[p] * 16, 16);
    } else {
        for (int64_t p = p0; p < p1; ++p, r += ci)
            memcpy(xg + r, x + (int64_t)idx[p] * ci, (size_t)ci);
    }
    const int64_t padded = (r + pad - 1) & ~(pad - 1);
    if (padded > r)
        memset(xg + r, 0, (size_t)(padded - r));
    return padded;
}

#endif /* SPARSEFAN_INT8_KERNELS_H */
