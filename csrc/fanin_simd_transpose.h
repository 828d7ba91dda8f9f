/*
 * sparsefan: the layout change (blocked transpose).
 * Part of the kernel template: included by fanin_simd.h only, once per CPU variant.
 */
/* ------------------------------------------------------------------------------------------ */
/* layout change                                                                               */

#ifndef SF_TRANSPOSE_BLOCK
#define SF_TRANSPOSE_BLOCK 32
#endif

#ifdef SF_HAVE_AVX
/* out[k][i] = in[i][k] for an 8 x 8 block -- with RELU, y[i][k] > 0 ? in[i][k] : 0 (the backward
 * of a ReLU whose output is y, NaN in y giving 0). Rows i and i + 4 are loaded into the two
 * 128-bit halves of one register (a load and an insert from memory), so that the transpose needs
 * only in-lane shuffles -- no lane-crossing permutes, which cost several micro-ops each on some
 * cores (Zen 1 splits 256-bit operations) -- two stages of them, then eight stores. */
SF_INLINE void SF_FN(transpose8)(float *out, int64_t ld_out, const float *in, const float *y,
                                 int64_t ld_in, const int RELU)
{
#define SF_T8_HALVES(p, i, c)                                                                   \
    _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps((p) + (i) * ld_in + (c))),        \
                         _mm_loadu_ps((p) + ((i) + 4) * ld_in + (c)), 1)
#define SF_T8_ROWS(i, c)                                                                        \
    (RELU ? _mm256_and_ps(SF_T8_HALVES(in, i, c),                                              \
                          _mm256_cmp_ps(SF_T8_HALVES(y, i, c), _mm256_setzero_ps(), _CMP_GT_OQ)) \
          : SF_T8_HALVES(in, i, c))
    for (int c = 0; c < 8; c += 4) { /* columns c .. c + 3 of rows 0..7: output rows c .. c + 3 */
        const __m256 r0 = SF_T8_ROWS(0, c), r1 = SF_T8_ROWS(1, c);
        const __m256 r2 = SF_T8_ROWS(2, c), r3 = SF_T8_ROWS(3, c);
        const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        _mm256_storeu_ps(out + (c + 0) * ld_out, _mm256_shuffle_ps(t0, t2, 0x44));
        _mm256_storeu_ps(out + (c + 1) * ld_out, _mm256_shuffle_ps(t0, t2, 0xEE));
        _mm256_storeu_ps(out + (c + 2) * ld_out, _mm256_shuffle_ps(t1, t3, 0x44));
        _mm256_storeu_ps(out + (c + 3) * ld_out, _mm256_shuffle_ps(t1, t3, 0xEE));
    }
#undef SF_T8_ROWS
#undef SF_T8_HALVES
}
#define SF_TRANSPOSE8 SF_FN(transpose8)
#endif

/* out[c * ld_out + r] = f(in[r * ld_in + c]) for r in [r0, r1), c in [c0, c1), f the identity or
 * (RELU) the ReLU mask of y (same layout as in): blocks of SF_TRANSPOSE_BLOCK^2, each through the
 * variant's small in-register transpose when it has one (SF_TRANSPOSE8). */
SF_INLINE void SF_FN(transpose_body)(float *out, int64_t ld_out, const float *in, const float *y,
                                     int64_t ld_in, int64_t r0, int64_t r1, int64_t c0,
                                     int64_t c1, const int RELU)
{
#define SF_TR1(i, c) (RELU ? (y[(i) * ld_in + (c)] > 0.0f ? in[(i) * ld_in + (c)] : 0.0f)    \
                          : in[(i) * ld_in + (c)])
    const int64_t TB = SF_TRANSPOSE_BLOCK;
    for (int64_t rb = r0; rb < r1; rb += TB) {
        const int64_t re = rb + TB < r1 ? rb + TB : r1;
        for (int64_t cb = c0; cb < c1; cb += TB) {
            const int64_t ce = cb + TB < c1 ? cb + TB : c1;
            int64_t r = rb;
#ifdef SF_TRANSPOSE8
            for (; r + 8 <= re; r += 8) {
                int64_t c = cb;
                for (; c + 8 <= ce; c += 8)
                    SF_TRANSPOSE8(out + c * ld_out + r, ld_out, in + r * ld_in + c,
                                  RELU ? y + r * ld_in + c : NULL, ld_in, RELU);
                for (; c < ce; ++c)
                    for (int64_t i = r; i < r + 8; ++i)
                        out[c * ld_out + i] = SF_TR1(i, c);
            }
#endif
            for (int64_t c = cb; c < ce; ++c)
                for (int64_t i = r; i < re; ++i)
                    out[c * ld_out + i] = SF_TR1(i, c);
        }
    }
#undef SF_TR1
}

SF_STATIC void SF_FN(transpose)(float *out, int64_t ld_out, const float *in, int64_t ld_in,
                                int64_t r0, int64_t r1, int64_t c0, int64_t c1)
{
    SF_FN(transpose_body)(out, ld_out, in, NULL, ld_in, r0, r1, c0, c1, 0);
}

SF_STATIC void SF_FN(transpose_relu)(float *out, int64_t ld_out, const float *dy, const float *y,
                                     int64_t ld_in, int64_t r0, int64_t r1, int64_t c0,
                                     int64_t c1)
{
    SF_FN(transpose_body)(out, ld_out, dy, y, ld_in, r0, r1, c0, c1, 1);
}
