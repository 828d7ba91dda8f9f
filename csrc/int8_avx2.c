/*
 * sparsefan: the AVX2 int8 kernel variant (x86-64 with GCC or clang; chosen at run time by
 * csrc/int8.c). Built without -mavx2: the target attribute enables AVX2 for these functions
 * only -- and not FMA, so nothing can fuse the requantization's multiply and add.
 *
 * Products: _mm256_maddubs_epi16(u8 a, s8 w) multiplies 32 byte pairs and adds neighbours into
 * 16 saturating int16 sums; _mm256_madd_epi16(., 1) adds neighbouring int16 into 8 int32. With
 * a and |w| <= 127 a neighbour sum is at most 2 * 127 * 127 = 32258 and never saturates, so
 * both steps are exact. Signed activations (a layer after a linear one, or a negative input)
 * go through |a| and sign(w, a) (_mm256_abs_epi8, _mm256_sign_epi8): a * w = |a| * (sign(a) w),
 * exact as well since -w never overflows for |w| <= 127. Layers whose inputs cannot be
 * negative (after a ReLU, or a checked network input) take the unsigned path.
 *
 */
#include "int8_kernels.h"

#ifdef SF_I8_X86

#include <immintrin.h>

SF_I8_NO_CONTRACT

#define SF_ATTR __attribute__((target("avx2")))
/* Software prefetch of the packed weights this many bytes ahead: a unit's gather and
 * requantization leave the hardware prefetchers behind (measured: 15-30% at batch 1, with the
 * weights in L3 or beyond). Prefetching past the end of the table is harmless. */
#ifndef SF_I8_PREFETCH
#define SF_I8_PREFETCH 4096
#endif
#define SF_INLINE static inline __attribute__((always_inline)) SF_ATTR

SF_INLINE __m256i mask8(int64_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* sum of the products of 32 byte pairs, in groups of 4, as 8 int32; a >= 0 */
SF_INLINE __m256i dot4_u(__m256i a, __m256i w)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, w), _mm256_set1_epi16(1));
}

/* the same for signed a: |a| * (w with the sign of a) */
SF_INLINE __m256i dot4_s(__m256i a, __m256i w)
{
    return dot4_u(_mm256_abs_epi8(a), _mm256_sign_epi8(w, a));
}

/* quantize(t) for 8 lanes: round half away from zero, clamp to [-127, 127], NaN -> 0 --
 * trunc(min(|t|, 127) + 0.5f) with the sign of t: the runtime's float operations (for t < 0
 * it computes 0.5f - t, the same float sum as |t| + 0.5f) */
SF_INLINE __m256i quantize8(__m256 t)
{
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), t);
    const __m256 c = _mm256_min_ps(a, _mm256_set1_ps(127.0f)); /* NaN -> 127, masked below */
    __m256i r = _mm256_cvttps_epi32(_mm256_add_ps(c, _mm256_set1_ps(0.5f)));
    r = _mm256_sign_epi32(r, _mm256_castps_si256(t)); /* -0.0 gives -0 = 0 */
    return _mm256_and_si256(r, _mm256_castps_si256(_mm256_cmp_ps(t, t, _CMP_ORD_Q)));
}

/* 8 int32 in [-127, 127] -> the first n (1..8) bytes at dst */
SF_INLINE void store_bytes(int8_t *dst, __m256i q, int64_t n)
{
    const __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i p8 = _mm_packs_epi16(p16, p16);
    if (n == 8) {
        _mm_storel_epi64((__m128i *)(void *)dst, p8);
    } else {
        int8_t tmp[16];
        _mm_storeu_si128((__m128i *)(void *)tmp, p8);
        memcpy(dst, tmp, (size_t)n);
    }
}

/* Output channels [o0, o0 + n) of unit j (n <= 8) from their sums: v = (float)acc * m,
 * v = v + b, ReLU, then the int8 activation or the float logit. */
SF_INLINE void requant_store(const sf_i8_layer *L, const sf_i8_io *io, int64_t e, int64_t j,
                             int64_t o0, int64_t n, __m256i acc)
{
    const int64_t jo = j * L->c_out + o0;
    __m256 mult, bias;
    if (n == 8) {
        mult = _mm256_loadu_ps(L->multiplier + jo);
        bias = _mm256_loadu_ps(L->bias + jo);
    } else {
        const __m256i m = mask8(n);
        mult = _mm256_maskload_ps(L->multiplier + jo, m);
        bias = _mm256_maskload_ps(L->bias + jo, m);
    }
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), mult);
    v = _mm256_add_ps(v, bias);
    if (L->relu) /* v < 0 -> +0; -0 and NaN stay, as `if (v < 0.0f) v = 0.0f` */
        v = _mm256_and_ps(v, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NLT_UQ));
    if (io->yq != NULL) {
        const __m256i q = quantize8(_mm256_mul_ps(v, _mm256_set1_ps(L->out_inv_scale)));
        store_bytes(io->yq + e * io->yq_stride + jo, q, n);
    } else if (io->yf_stride == 1 && n == 8) { /* one example: the logits are contiguous */
        _mm256_storeu_ps(io->yf + jo, v);
    } else { /* (no masked store: slow on AMD processors) */
        float tmp[8];
        float *dst = io->yf + e + jo * io->yf_stride;
        _mm256_storeu_ps(tmp, v);
        for (int64_t k = 0; k < n; ++k)
            dst[k * io->yf_stride] = tmp[k];
    }
}

/* sf_i8_gather for x86 (little-endian): every 4-byte group of terms is written by one store
 * (or is part of one wider store), so that the kernels' loads of it are forwarded from the
 * store buffer -- a load that spans several smaller stores waits until they reach the cache. */
SF_INLINE int64_t gather_t(const sf_i8_layer *L, int64_t j, const int8_t *x, int8_t *xg,
                           int64_t pad, const int U16)
{
    const int64_t ci = L->c_in, p0 = L->indptr[j], p1 = L->indptr[j + 1];
    const int32_t *idx32 = L->indices;
    const uint16_t *idx16 = L->indices16;
    const uint8_t *u = (const uint8_t *)x;
#define IDX(p) (U16 ? (int64_t)idx16[p] : (int64_t)idx32[p])
    int64_t r = 0;
    if (ci == 1) {
        int64_t p = p0;
        for (; p + 4 <= p1; p += 4, r += 4) {
            const uint32_t w = (uint32_t)u[IDX(p)] | (uint32_t)u[IDX(p + 1)] << 8
                               | (uint32_t)u[IDX(p + 2)] << 16 | (uint32_t)u[IDX(p + 3)] << 24;
            memcpy(xg + r, &w, 4);
        }
        if (p < p1) {
            uint32_t w = 0;
            for (int s = 0; p < p1; ++p, ++r, s += 8)
                w |= (uint32_t)u[IDX(p)] << s;
            memcpy(xg + (r & ~(int64_t)3), &w, 4);
        }
    } else if (ci % 4 == 0) {
#define SF_COPY_ROWS(N)                                                                        \
    for (int64_t p = p0; p < p1; ++p, r += (N))                                                \
        memcpy(xg + r, x + IDX(p) * (N), (N))
        switch (ci) {
        case 4: SF_COPY_ROWS(4); break;
        case 8: SF_COPY_ROWS(8); break;
        case 16: SF_COPY_ROWS(16); break;
        case 32: SF_COPY_ROWS(32); break;
#undef SF_COPY_ROWS
        default:
            for (int64_t p = p0; p < p1; ++p)
                for (int64_t c = 0; c < ci; c += 4, r += 4)
                    memcpy(xg + r, x + IDX(p) * ci + c, 4);
            break;
        }
    } else { /* channels that do not fill whole groups: assemble each group in a register */
        uint32_t w = 0;
        int s = 0;
        for (int64_t p = p0; p < p1; ++p) {
            const uint8_t *src = u + IDX(p) * ci;
            for (int64_t c = 0; c < ci; ++c) {
                w |= (uint32_t)src[c] << s;
                s += 8;
                if (s == 32) {
                    memcpy(xg + r, &w, 4);
                    r += 4;
                    w = 0;
                    s = 0;
                }
            }
        }
        if (s) {
            memcpy(xg + r, &w, 4);
            r += s / 8;
        }
    }
    const int64_t r4 = (r + 3) & ~(int64_t)3, padded = (r + pad - 1) & ~(pad - 1);
    const uint32_t zero = 0;
    for (int64_t q = r4; q < padded; q += 4)
        memcpy(xg + q, &zero, 4);
    return padded;
#undef IDX
}

SF_INLINE int64_t gather(const sf_i8_layer *L, int64_t j, const int8_t *x, int8_t *xg,
                         int64_t pad)
{
    return L->indices16 != NULL ? gather_t(L, j, x, xg, pad, 1) : gather_t(L, j, x, xg, pad, 0);
}

/* acc[b] += the products of one group of 4 activations (xb, broadcast) with its NB blocks of
 * packed weights at w */
SF_INLINE void wide_group(__m256i acc[4], __m256i xb, const int8_t *w, const int NB,
                          const int SIGNED)
{
    _mm_prefetch((const char *)(w + SF_I8_PREFETCH), _MM_HINT_T0);
    if (NB > 2)
        _mm_prefetch((const char *)(w + SF_I8_PREFETCH + 64), _MM_HINT_T0);
    for (int b = 0; b < NB; ++b) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(const void *)(w + b * 32));
        acc[b] = _mm256_add_epi32(acc[b], SIGNED ? dot4_s(xb, wv) : dot4_u(xb, wv));
    }
}

/* SF_I8_WIDE, one tile of NB blocks (8 output channels each) over G groups of 4 terms */
SF_INLINE void wide_tile(const int8_t *wt, const int8_t *xg, int64_t G, const int NB,
                         const int SIGNED, __m256i acc[4])
{
    for (int b = 0; b < NB; ++b)
        acc[b] = _mm256_setzero_si256();
    for (int64_t t = 0; t < G; ++t) {
        int32_t x4;
        memcpy(&x4, xg + 4 * t, 4);
        const __m256i xb = _mm256_set1_epi32(x4);
        wide_group(acc, xb, wt + t * NB * 32, NB, SIGNED);
    }
}

/* The same tile for one input channel (c_in == 1), with no gather buffer: each group's 4
 * activations are read through the index table and assembled in a register, in the loop that
 * uses them, so that the index and byte loads overlap the multiplies (the gather pass before
 * the loop took a fifth of a layer's time at batch 1, measured). n terms; zeros past them. */
SF_INLINE void wide_tile_c1(const int8_t *wt, const uint8_t *u, const int32_t *idx32,
                            const uint16_t *idx16, int64_t n, const int NB, const int SIGNED,
                            const int U16, __m256i acc[4])
{
#define IDX(p) (U16 ? (int64_t)idx16[p] : (int64_t)idx32[p])
    for (int b = 0; b < NB; ++b)
        acc[b] = _mm256_setzero_si256();
    const int64_t G = (n + 3) / 4;
    for (int64_t t = 0; t < G; ++t) {
        const int64_t p = 4 * t;
        uint32_t x4;
        if (p + 4 <= n) {
            x4 = (uint32_t)u[IDX(p)] | (uint32_t)u[IDX(p + 1)] << 8
                 | (uint32_t)u[IDX(p + 2)] << 16 | (uint32_t)u[IDX(p + 3)] << 24;
        } else {
            x4 = 0;
            for (int64_t q = p; q < n; ++q)
                x4 |= (uint32_t)u[IDX(q)] << (8 * (q - p));
        }
        const __m256i xb = _mm256_set1_epi32((int32_t)x4);
        wide_group(acc, xb, wt + t * NB * 32, NB, SIGNED);
    }
#undef IDX
}

#define SF_WIDE_TILE_C1(NB, U16)                                                               \
    (neg ? wide_tile_c1(wt, u, i32, i16, n, NB, 1, U16, acc)                                   \
         : wide_tile_c1(wt, u, i32, i16, n, NB, 0, U16, acc))
#define SF_WIDE_TILE(NB)                                                                       \
    do {                                                                                       \
        if (c1 && i16 != NULL)                                                                 \
            SF_WIDE_TILE_C1(NB, 1);                                                            \
        else if (c1)                                                                           \
            SF_WIDE_TILE_C1(NB, 0);                                                            \
        else if (neg)                                                                          \
            wide_tile(wt, xg, G, NB, 1, acc);                                                  \
        else                                                                                   \
            wide_tile(wt, xg, G, NB, 0, acc);                                                  \
    } while (0)

static SF_ATTR void unit_wide(const sf_i8_layer *L, const sf_i8_io *io, int64_t e, int64_t j)
{
    const int c1 = L->c_in == 1;
    const int64_t p0 = L->indptr[j], n = L->indptr[j + 1] - p0;
    const int64_t R4 = c1 ? (n + 3) & ~(int64_t)3
                          : gather(L, j, io->x + e * io->x_stride, io->xg, 4);
    const int64_t G = R4 / 4, co = L->c_out, NB = (co + 7) / 8;
    const int8_t *wj = L->w + L->wofs[j];
    const int8_t *xg = io->xg;
    const uint8_t *u = (const uint8_t *)(io->x + e * io->x_stride);
    const int32_t *i32 = L->indices + p0;
    const uint16_t *i16 = L->indices16 != NULL ? L->indices16 + p0 : NULL;
    const int neg = io->signed_x;
    for (int64_t b0 = 0; b0 < NB; b0 += 4) {
        const int64_t nb = NB - b0 < 4 ? NB - b0 : 4;
        const int8_t *wt = wj + b0 * G * 32;
        __m256i acc[4];
        switch (nb) {
        case 1: SF_WIDE_TILE(1); break;
        case 2: SF_WIDE_TILE(2); break;
        case 3: SF_WIDE_TILE(3); break;
        default: SF_WIDE_TILE(4); break;
        }
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t o0 = (b0 + b) * 8;
            requant_store(L, io, e, j, o0, co - o0 < 8 ? co - o0 : 8, acc[b]);
        }
    }
}

/* the 8 lane sums of acc[0..7], in order, as one vector */
SF_INLINE __m256i hsum8(const __m256i acc[8])
{
    const __m256i t0 = _mm256_hadd_epi32(acc[0], acc[1]), t1 = _mm256_hadd_epi32(acc[2], acc[3]);
    const __m256i t2 = _mm256_hadd_epi32(acc[4], acc[5]), t3 = _mm256_hadd_epi32(acc[6], acc[7]);
    const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                            _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* the 4 lane sums of acc[0..3], in order, in the low lanes (the others zero) */
SF_INLINE __m256i hsum4(const __m256i acc[4])
{
    const __m256i t0 = _mm256_hadd_epi32(acc[0], acc[1]), t1 = _mm256_hadd_epi32(acc[2], acc[3]);
    const __m256i u = _mm256_hadd_epi32(t0, t1);
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
    return _mm256_inserti128_si256(_mm256_setzero_si256(), s, 0);
}

/* SF_I8_DOT, NO (<= 8) output rows of R32 bytes from w */
SF_INLINE __m256i dot_rows(const int8_t *w, const int8_t *xg, int64_t R32, const int NO,
                           const int SIGNED)
{
    __m256i acc[8];
    for (int o = 0; o < 8; ++o)
        acc[o] = _mm256_setzero_si256();
    for (int64_t r = 0; r < R32; r += 32) {
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)(xg + r));
        for (int o = 0; o < NO; o += R32 >= 64 ? 1 : 2)
            _mm_prefetch((const char *)(w + o * R32 + r + SF_I8_PREFETCH), _MM_HINT_T0);
        for (int o = 0; o < NO; ++o) {
            const __m256i wv =
                _mm256_loadu_si256((const __m256i *)(const void *)(w + o * R32 + r));
            acc[o] = _mm256_add_epi32(acc[o], SIGNED ? dot4_s(xv, wv) : dot4_u(xv, wv));
        }
    }
    return NO <= 4 ? hsum4(acc) : hsum8(acc);
}

#define SF_DOT_ROWS(NO) (neg ? dot_rows(w, xg, R32, NO, 1) : dot_rows(w, xg, R32, NO, 0))

/* The terms of a unit with one connection and at most 32 channels, read as one vector with the
 * bytes past them zeroed and stored as one: dot_rows' load of it is then forwarded from that
 * store. (A vector load spanning the gather's several small stores waits for them to reach the
 * cache: a per-unit layer's head took twice as long, measured.) 0 when the 32 bytes from the
 * row's start are not all inside the activations (the last units): then the gather. */
SF_INLINE int64_t gather_one_row(const sf_i8_layer *L, int64_t j, const int8_t *x, int8_t *xg)
{
    static const int8_t keep[64] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                    -1, -1}; /* then 32 zeros */
    const int64_t ci = L->c_in, p = L->indptr[j];
    if (L->indptr[j + 1] - p != 1 || ci > 32) /* (an empty row has no index to read) */
        return 0;
    const int64_t at = (L->indices16 != NULL ? (int64_t)L->indices16[p] : (int64_t)L->indices[p])
                       * ci;
    if (at + 32 > L->n_in * ci)
        return 0;
    const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(x + at));
    const __m256i m = _mm256_loadu_si256((const __m256i *)(const void *)(keep + 32 - ci));
    _mm256_storeu_si256((__m256i *)(void *)xg, _mm256_and_si256(v, m));
    return 32;
}

static SF_ATTR void unit_dot(const sf_i8_layer *L, const sf_i8_io *io, int64_t e, int64_t j)
{
    const int8_t *x = io->x + e * io->x_stride;
    int64_t R32 = gather_one_row(L, j, x, io->xg);
    if (R32 == 0)
        R32 = gather(L, j, x, io->xg, 32);
    const int8_t *wj = L->w + L->wofs[j];
    const int8_t *xg = io->xg;
    const int neg = io->signed_x;
    const int64_t co = L->c_out;
    for (int64_t o0 = 0; o0 < co; o0 += 8) {
        const int64_t n = co - o0 < 8 ? co - o0 : 8;
        const int8_t *w = wj + o0 * R32;
        __m256i s;
        switch (n) {
        case 1: s = SF_DOT_ROWS(1); break;
        case 2: s = SF_DOT_ROWS(2); break;
        case 3: s = SF_DOT_ROWS(3); break;
        case 4: s = SF_DOT_ROWS(4); break;
        case 5: s = SF_DOT_ROWS(5); break;
        case 6: s = SF_DOT_ROWS(6); break;
        case 7: s = SF_DOT_ROWS(7); break;
        default: s = SF_DOT_ROWS(8); break;
        }
        requant_store(L, io, e, j, o0, n, s);
    }
}

static SF_ATTR void units_avx2(const sf_i8_layer *L, const sf_i8_io *io, int64_t j0, int64_t j1)
{
    for (int64_t j = j0; j < j1; ++j)
        for (int64_t e = 0; e < io->E; ++e) {
            if (L->layout == SF_I8_WIDE)
                unit_wide(L, io, e, j);
            else
                unit_dot(L, io, e, j);
        }
}

static SF_ATTR void quantize_avx2(int8_t *q, const float *x, int64_t n, float inv)
{
    const __m256 s = _mm256_set1_ps(inv);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        store_bytes(q + i, quantize8(_mm256_mul_ps(_mm256_loadu_ps(x + i), s)), 8);
    for (; i < n; ++i)
        q[i] = sf_i8_quantize1(x[i] * inv);
}

const sf_i8_kernel_table sf_i8_kernels_avx2 = {"avx2", units_avx2, quantize_avx2};

#else
typedef int sf_no_int8_avx2_variant; /* not x86-64 with GCC/clang: only the generic variant */
#endif
