/*
 * sparsefan: int8 inference kernels (C99, optional OpenMP, no Python headers).
 *
 * The arithmetic of the exported C runtime's int8 path (csrc/runtime/sf_runtime.c), for a
 * batch of examples, with every layer in one call:
 *
 *   a_0       = quantize(x * in_inv_scale)                             the network's input
 *   acc[j][o] = sum_{p in row j} sum_c qW[p][c][o] * a[indices[p]][c]    int32, exact
 *   v         = (float)acc * multiplier[j][o];   v = v + bias[j][o];   ReLU: v < 0 -> 0
 *   a_next    = quantize(v * out_inv_scale), or, after the last layer, v itself (the logits)
 *
 * quantize(t): round half away from zero with float32 arithmetic ((int)(t + 0.5f), or
 * -(int)(0.5f - t) below zero), clamped to [-127, 127], NaN -> 0. Every float operation above
 * is one IEEE float32 operation, as in the runtime: int8*.c are compiled without contraction
 * into fused multiply-adds, so the logits are bit-identical to the exported C code's (and to
 * the NumPy reference, sparsefan.reference.int8_network_unit_logits), for any n_threads.
 *
 * Exactness of the SIMD products: weights and activations lie in [-127, 127], so a pair of
 * int8 products fits int16 (2 * 127 * 127 = 32258 < 32767: the AVX2 path's
 * _mm256_maddubs_epi16 never saturates), and the caller guarantees 127 * sum |qW| <= INT32_MAX
 * for every (unit, output channel) -- sparsefan.quantize refuses other layers, the model
 * reader refuses other files -- so no partial sum overflows, whatever the summation order.
 *
 * Weights are repacked once (sf_i8_pack) into one of two layouts, chosen per layer by size:
 *   SF_I8_WIDE  per unit, groups of 4 consecutive terms (term r = (connection, input channel))
 *               x blocks of 8 output channels: 32 bytes [o][4 terms] per (group, block); blocks
 *               in tiles of up to 4 (32 channels), [tile][group][block in tile][8][4].
 *   SF_I8_DOT   per unit, one row per output channel: the unit's terms padded to a multiple
 *               of 32, [o][terms] (layers with few output channels: heads, c_out = 1).
 * Padding holds zero weights (and the gathered activations are zero-padded too).
 *
 * Contract: as fanin.h, the arguments are trusted (checked once, in Python).
 */
#ifndef SPARSEFAN_INT8_H
#define SPARSEFAN_INT8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { SF_I8_WIDE = 0, SF_I8_DOT = 1 };

/* int8 kernel variants: "generic" (any CPU) and "avx2". They follow the float kernels'
 * variant (sf_cpu_variant, SPARSEFAN_CPU): generic -> generic, avx2 and avx512 -> avx2. */
enum { SF_I8_GENERIC = 0, SF_I8_AVX2 = 1, SF_I8_N_VARIANTS = 2 };
int sf_i8_variant(void);
const char *sf_i8_variant_name(int variant);

/* One layer, its weights packed by sf_i8_pack. */
typedef struct {
    const int8_t *w;          /* packed weights */
    const int64_t *wofs;      /* [n_out + 1]: where unit j's packed block starts in w */
    const int64_t *indptr;    /* [n_out + 1] */
    const int32_t *indices;   /* [nnz], each in [0, n_in) */
    const uint16_t *indices16; /* the same table as uint16 (n_in <= 65536: half the bytes to
                                  read per example), or NULL */
    const float *multiplier;  /* [n_out][c_out] = input scale x weight scale */
    const float *bias;        /* [n_out][c_out] */
    int64_t n_in, n_out, c_in, c_out;
    int relu;                 /* 1: v < 0 -> 0 after the bias */
    int layout;               /* SF_I8_WIDE or SF_I8_DOT */
    float out_inv_scale;      /* 1 / the next layer's input scale (unused by the last layer) */
    int64_t max_terms;        /* the largest (indptr[j + 1] - indptr[j]) * c_in */
} sf_i8_layer;

/* The smaller of the two layouts for this layer (SF_I8_WIDE on a tie). */
int sf_i8_choose_layout(const int64_t *indptr, int64_t n_out, int64_t c_in, int64_t c_out);

/* wofs[0..n_out] for the layout; returns the packed size in bytes (= wofs[n_out]). */
int64_t sf_i8_pack_offsets(const int64_t *indptr, int64_t n_out, int64_t c_in, int64_t c_out,
                           int layout, int64_t *wofs);

/* w[0 .. wofs[n_out]) = qweight [nnz][c_in][c_out] in the layout (zeros in the padding). */
void sf_i8_pack(int8_t *w, const int64_t *wofs, const int8_t *qweight, const int64_t *indptr,
                int64_t n_out, int64_t c_in, int64_t c_out, int layout);

/* Bytes of scratch sf_i8_network_forward needs for a batch of B on n_threads threads. */
int64_t sf_i8_scratch_bytes(const sf_i8_layer *layers, int n_layers, int64_t B, int n_threads);

/* The layers in order on x (B, n_in) row-major float32: out [n_units][n_classes][B] float32,
 * the last layer's v (the logits, in the layout of the float engine's unit logits).
 * Consecutive layers must agree (n_out, c_out = the next n_in, c_in; layers[0].c_in == 1).
 * scratch: sf_i8_scratch_bytes(layers, n_layers, B, n_threads) bytes, any alignment. */
void sf_i8_network_forward(float *out, const float *x, const sf_i8_layer *layers, int n_layers,
                           float in_inv_scale, int64_t B, void *scratch, int n_threads);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEFAN_INT8_H */
