/*
 * sparsefan: the AVX2 + FMA kernel variant (x86-64 with GCC or clang; chosen at run time by
 * csrc/fanin.c when the CPU has these features). Built without -mavx2: the target attribute
 * enables the instructions for these functions only.
 */
#include "fanin_kernels.h"

#ifdef SF_X86_DISPATCH

#include <immintrin.h>

#define SF_VARIANT avx2
#define SF_VARIANT_NAME "avx2"
#define SF_ATTR __attribute__((target("avx2,fma")))
#define SF_HAVE_AVX 1

typedef __m256 vf;
#define VL 8

static inline SF_ATTR __m256i sf_mask8(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* The lane sum in the order of sf_hsum8_add_ymm's tree, so that a dot product comes out bit-identical
 * whichever way a weight-gradient block is cut (work splits must not change results). */
static inline SF_ATTR float sf_hsum8(__m256 v)
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
#define SF_HSUM8_ADD(dst, v) sf_hsum8_add_ymm(dst, v)

#define V_ZERO() _mm256_setzero_ps()
#define V_SET1(a) _mm256_set1_ps(a)
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_STORE(p, v) _mm256_storeu_ps(p, v)
#define V_LOADN(p, n) _mm256_maskload_ps(p, sf_mask8(n))
#define V_STOREN(p, v, n) _mm256_maskstore_ps(p, sf_mask8(n), v)
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm256_add_ps(a, b)
#define V_RELU(v) _mm256_max_ps(_mm256_setzero_ps(), v) /* NaN in v is returned */
#define V_HSUM(v) sf_hsum8(v)

#define SF_T1 8
#define SF_TC 2
#define SF_OC 4
#define SF_R1 8
#define SF_RC 2
#define SF_PC 4

#include "fanin_simd.h"

#else
typedef int sf_no_avx2_variant; /* not x86-64 with GCC/clang: only the generic variant */
#endif
