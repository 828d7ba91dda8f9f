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

#include "fanin_ymm.h"

/* the two 256-bit halves of v, added lane by lane */
static inline SF_ATTR __m256 sf_fold_zmm(__m512 v)
{
    return _mm256_add_ps(_mm512_castps512_ps256(v),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* dst[r] += sum of the lanes of v[r] for r < 8: fold each 512-bit vector to 256 bits first */
static inline SF_ATTR void sf_hsum8_add_zmm(float *dst, const __m512 v[8])
{
    __m256 h[8];
    for (int r = 0; r < 8; ++r)
        h[r] = sf_fold_zmm(v[r]);
    sf_hsum8_add_ymm(dst, h);
}
#define SF_HSUM8_ADD(dst, v) sf_hsum8_add_zmm(dst, v)

/* The lane sum in the order of sf_hsum8_add_zmm's tree: fold to 256 bits, then the shared sum */
static inline SF_ATTR float sf_hsum16(__m512 v)
{
    return sf_hsum_ymm(sf_fold_zmm(v));
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
#define V_WHERE_POS(m, v)                                                                      \
    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_GT_OQ), v)
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
