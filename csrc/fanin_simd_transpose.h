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
/* out[k][i] = in[i][k] for an 8 x 8 block: eight row loads, three shuffle stages, eight stores */
SF_INLINE void SF_FN(transpose8)(float *out, int64_t ld_out, const float *in, int64_t ld_in)
{
    const __m256 r0 = _mm256_loadu_ps(in + 0 * ld_in), r1 = _mm256_loadu_ps(in + 1 * ld_in);
    const __m256 r2 = _mm256_loadu_ps(in + 2 * ld_in), r3 = _mm256_loadu_ps(in + 3 * ld_in);
    const __m256 r4 = _mm256_loadu_ps(in + 4 * ld_in), r5 = _mm256_loadu_ps(in + 5 * ld_in);
    const __m256 r6 = _mm256_loadu_ps(in + 6 * ld_in), r7 = _mm256_loadu_ps(in + 7 * ld_in);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(out + 0 * ld_out, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(out + 1 * ld_out, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(out + 2 * ld_out, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(out + 3 * ld_out, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(out + 4 * ld_out, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(out + 5 * ld_out, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(out + 6 * ld_out, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(out + 7 * ld_out, _mm256_permute2f128_ps(s3, s7, 0x31));
}
#define SF_TRANSPOSE8 SF_FN(transpose8)
#endif

/* out[c][r] = in[r][c] for r in [r0, r1): blocks of SF_TRANSPOSE_BLOCK^2, each through the
 * variant's small in-register transpose when it has one (SF_TRANSPOSE8). */
SF_STATIC void SF_FN(transpose)(float *out, const float *in, int64_t rows, int64_t cols,
                                int64_t r0, int64_t r1)
{
    const int64_t TB = SF_TRANSPOSE_BLOCK;
    for (int64_t rb = r0; rb < r1; rb += TB) {
        const int64_t re = rb + TB < r1 ? rb + TB : r1;
        for (int64_t cb = 0; cb < cols; cb += TB) {
            const int64_t ce = cb + TB < cols ? cb + TB : cols;
            int64_t r = rb;
#ifdef SF_TRANSPOSE8
            for (; r + 8 <= re; r += 8) {
                int64_t c = cb;
                for (; c + 8 <= ce; c += 8)
                    SF_TRANSPOSE8(out + c * rows + r, rows, in + r * cols + c, cols);
                for (; c < ce; ++c)
                    for (int64_t i = r; i < r + 8; ++i)
                        out[c * rows + i] = in[i * cols + c];
            }
#endif
            for (int64_t c = cb; c < ce; ++c)
                for (int64_t i = r; i < re; ++i)
                    out[c * rows + i] = in[i * cols + c];
        }
    }
}
