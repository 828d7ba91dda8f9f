/*
 * sparsefan: the AVX-512F kernel variant (x86-64 with GCC or clang; chosen at run time by
 * csrc/fanin.c when the CPU and OS support AVX-512F). Built without -mavx512f: the target
 * attribute enables the instructions for these functions only.
 */
#include "fanin_kernels.h"

#ifdef SF_X86_DISPATCH

#include <immintrin.h>

#define SF_VARIANT avx512
#define SF_VARIANT_NAME "avx512"
#define SF_ATTR __attribute__((target("avx512f,avx2,fma")))
#define SF_HAVE_AVX 1

typedef __m512 vf;
#define VL 16

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
/* dst[r] += sum of the lanes of v[r] for r < 8: fold each 512-bit vector to 256 bits first */
static inline SF_ATTR void sf_hsum8_add_zmm(float *dst, const __m512 v[8])
{
    __m256 h[8];
    for (int r = 0; r < 8; ++r)
        h[r] = _mm256_add_ps(_mm512_castps512_ps256(v[r]),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[r]), 1)));
    sf_hsum8_add_ymm(dst, h);
}
#define SF_HSUM8_ADD(dst, v) sf_hsum8_add_zmm(dst, v)

/* The lane sum in the order of sf_hsum8_add_zmm's tree (see the AVX2 variant) */
static inline SF_ATTR float sf_hsum16(__m512 v)
{
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    const __m256 t = _mm256_hadd_ps(h, h);
    const __m256 u = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)));
}

#define SF_MASK16(n) ((__mmask16)((1u << (n)) - 1u))
#define V_ZERO() _mm512_setzero_ps()
#define V_SET1(a) _mm512_set1_ps(a)
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_STORE(p, v) _mm512_storeu_ps(p, v)
#define V_LOADN(p, n) _mm512_maskz_loadu_ps(SF_MASK16(n), p)
#define V_STOREN(p, v, n) _mm512_mask_storeu_ps(p, SF_MASK16(n), v)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_ADD(a, b) _mm512_add_ps(a, b)
#define V_RELU(v) _mm512_max_ps(_mm512_setzero_ps(), v) /* NaN in v is returned */
#define V_HSUM(v) sf_hsum16(v)

#define SF_T1 8
#define SF_TC 4
#define SF_OC 4
#define SF_R1 8
#define SF_RC 4
#define SF_PC 4

#include "fanin_simd.h"

#else
typedef int sf_no_avx512_variant; /* not x86-64 with GCC/clang: only the generic variant */
#endif
