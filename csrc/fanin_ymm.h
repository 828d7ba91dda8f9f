/*
 * sparsefan: 256-bit lane sums shared by the AVX2 and AVX-512 variants. Include after defining
 * SF_ATTR (the including variant's target attribute), with <immintrin.h> already included.
 *
 * Both sums use the same tree -- pairs, then pairs of pairs, then the two 128-bit halves -- so a
 * dot product comes out bit-identical whichever way a weight-gradient block is cut (work splits
 * must not change results).
 */
#ifndef SPARSEFAN_FANIN_YMM_H
#define SPARSEFAN_FANIN_YMM_H

/* the sum of the 8 lanes of v */
static inline SF_ATTR float sf_hsum_ymm(__m256 v)
{
    const __m256 t = _mm256_hadd_ps(v, v);
    const __m256 u = _mm256_hadd_ps(t, t); /* lane 0: (v0+v1)+(v2+v3); lane 4: (v4+v5)+(v6+v7) */
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}

/* dst[r] += sum of the lanes of h[r] for r < 8: three hadd levels and one 128-bit swap */
static inline SF_ATTR void sf_hsum8_add_ymm(float *dst, const __m256 h[8])
{
    const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
    const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    const __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                   _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), s));
}

#endif /* SPARSEFAN_FANIN_YMM_H */
