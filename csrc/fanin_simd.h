/*
 * sparsefan: the kernel template, compiled once per CPU variant (see fanin_kernels.h). One
 * file per operation: fanin_simd_gather.h (forward and input gradient), fanin_simd_params.h
 * (weight and bias gradients), fanin_simd_transpose.h (layout change); this file holds what
 * they share and the variant's kernel table.
 *
 * The including file defines, for its instruction set:
 *   SF_VARIANT        name suffix (generic, avx2, avx512)
 *   SF_ATTR           attributes of every function here (the target ISA)
 *   vf, VL            the vector type and its float lanes
 *   V_ZERO() V_SET1(a) V_LOAD(p) V_STORE(p, v) V_FMA(a, b, c) (= a * b + c) V_ADD(a, b)
 *   V_LOADN(p, n) V_STOREN(p, v, n)   the first n lanes (1 <= n <= VL); V_LOADN zero-fills
 *   V_RELU(v)         max(v, 0) keeping NaN;  V_HSUM(v) the sum of the lanes, in a fixed order
 *   V_WHERE_POS(m, v) m > 0 ? v : 0 per lane (the backward of a ReLU with output m)
 *   SF_HSUM8_ADD(dst, v)  optional: dst[r] += the lane sum of v[r], r < 8, in a fixed order
 *   SF_T1             batch vectors per register tile of the gather pass when H == 1
 *   SF_TC, SF_OC      batch vectors x output channels per tile when H > 1
 *   SF_R1             weight-gradient rows (connection, channel) per tile when c_out == 1
 *   SF_RC, SF_PC      rows x output channels per weight-gradient tile when c_out > 1
 *
 * Register tiles: T x O accumulators live in registers across all the inputs of a unit and are
 * stored once (bias and ReLU fused). T, O and the masking of the last vector are compile-time
 * constants of each tile function (the SF_INLINE helpers are instantiated through switches), so
 * the accumulator arrays become registers. The batch tail (B not a multiple of VL) is the last
 * vector of a tile, loaded and stored with a lane mask.
 */
#include <stddef.h>
#include <stdint.h>

#define SF_CAT2(a, b) a##_##b
#define SF_CAT(a, b) SF_CAT2(a, b)
#define SF_FN(name) SF_CAT(name, SF_VARIANT)

#if defined(__GNUC__) || defined(__clang__)
#define SF_INLINE static inline __attribute__((always_inline)) SF_ATTR
#else
#define SF_INLINE static
#endif
#define SF_STATIC static SF_ATTR

/* batch vectors per 64-byte cache line: one software prefetch each */
#define SF_PF_STEP (VL >= 16 ? 1 : 16 / VL)
#ifndef SF_PREFETCH_AHEAD
#define SF_PREFETCH_AHEAD 8
#endif
#if defined(__GNUC__) || defined(__clang__)
#define V_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define V_PREFETCH(p) ((void)(p))
#endif

#define SF_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define SF_TMAX SF_MAX2(SF_T1, SF_TC)
#define SF_RMAX SF_MAX2(SF_R1, SF_RC)
/* The masked-tile switches are written out to 8 vectors, the widest tile of every variant (the
 * check below keeps it so); clipping keeps the cases a narrower tile cannot reach in bounds. */
typedef char sf_tiles_fit_the_switches[(SF_T1 <= 8 && SF_TC <= 8) ? 1 : -1];
#define SF_TCLIP(n) ((n) <= SF_TMAX ? (n) : SF_TMAX)
#define SF_RCLIP(n) ((n) <= SF_RMAX ? (n) : SF_RMAX)

#include "fanin_simd_gather.h"
#include "fanin_simd_params.h"
#include "fanin_simd_transpose.h"

const sf_kernel_table SF_CAT(sf_kernels, SF_VARIANT) = {
    SF_VARIANT_NAME,
    SF_FN(gather),
    SF_FN(params),
    SF_FN(transpose),
    SF_FN(transpose_relu),
};
