/*
 * sparsefan: the per-CPU kernel variants behind csrc/fanin.c (internal header).
 *
 * Each variant (generic, AVX2+FMA, AVX-512F) is the same template, csrc/fanin_simd.h, compiled
 * for one instruction set. A variant only computes; fanin.c splits the work into ranges of rows,
 * runs them on OpenMP threads and picks the variant once, by CPU features (ggml style: the kernels
 * do not know about threads).
 *
 * Shape legend as in fanin.h. Every range function computes whole output rows, so each output
 * element has one writer and a summation order that does not depend on how rows are split.
 */
#ifndef SPARSEFAN_FANIN_KERNELS_H
#define SPARSEFAN_FANIN_KERNELS_H

#include <stdint.h>

/* A gather-accumulate pass, the common shape of the forward pass and the input gradient:
 *
 *   out[u, h, b] = init(u, h, b) + sum_{q in ptr[u]..ptr[u+1]} sum_g
 *                      W[slot(q) * wslot + g * wsg + h * wsh] * in[rows[q], g, b]
 *
 *   forward:        u = output unit, rows = indices, slot(q) = q, g = c_in channel, h = c_out
 *                   channel, init = bias, optional ReLU on the result.
 *   input gradient: u = input unit, rows/slots = the transposed table, g = c_out channel,
 *                   h = c_in channel, init = the current out (gradients accumulate), or zero
 *                   (zero_init: out is overwritten).
 */
typedef struct {
    float *out;            /* [n_units][H][B]: unit u at out + (u - out_unit0) * H * B */
    const float *in;       /* [n_rows_in][G][B] */
    const float *W;
    const float *bias;     /* [n_units][H], or NULL: start from out (accumulate) */
    const int64_t *ptr;    /* [n_units + 1] */
    const int32_t *rows;   /* [nnz] */
    const int64_t *slots;  /* [nnz], or NULL: slot(q) = q */
    int64_t G, H, B;
    int64_t wslot, wsg, wsh;
    int relu;
    int64_t prefetch_end; /* software-prefetch gathered rows for connections q < this (0: none) */
    int zero_init;        /* with bias NULL: start from zero instead of out (overwrite out) */
    int64_t out_unit0;    /* the unit at the start of out (0; a block of units in scratch) */
    const float *mask;    /* laid out as out, or NULL: out = mask > 0 ? sum : 0, the backward of
                           * the ReLU whose output is mask (batch tiles only: B > 1) */
} sf_gather_args;

typedef struct {
    const char *name;
    /* the gather pass for units [u0, u1) and batch columns [b0, b1) */
    void (*gather)(const sf_gather_args *a, int64_t u0, int64_t u1, int64_t b0, int64_t b1);
    /* dW[p, c, o] += sum_b x[indices[p], c, b] * dy[j, o, b] and db[j, o] += sum_b dy[j, o, b]
     * (db may be NULL) for the rows j in [j0, j1); prefetch: fetch gathered rows early */
    void (*params)(float *dW, float *db, const float *dy, const float *x,
                   const int64_t *indptr, const int32_t *indices, int64_t j0, int64_t j1,
                   int64_t c_in, int64_t c_out, int64_t B, int prefetch);
    /* out[c * ld_out + r] = in[r * ld_in + c] for the rows [r0, r1) and columns [c0, c1) of
     * in (ld_in = its number of columns for a whole matrix, ld_out its number of rows) */
    void (*transpose)(float *out, int64_t ld_out, const float *in, int64_t ld_in,
                      int64_t r0, int64_t r1, int64_t c0, int64_t c1);
    /* the same for y > 0 ? dy : 0 (the backward of a ReLU with output y; y laid out as dy) */
    void (*transpose_relu)(float *out, int64_t ld_out, const float *dy, const float *y,
                           int64_t ld_in, int64_t r0, int64_t r1, int64_t c0, int64_t c1);
} sf_kernel_table;

extern const sf_kernel_table sf_kernels_generic;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SF_X86_DISPATCH 1
extern const sf_kernel_table sf_kernels_avx2;
extern const sf_kernel_table sf_kernels_avx512;
#endif

#endif /* SPARSEFAN_FANIN_KERNELS_H */
