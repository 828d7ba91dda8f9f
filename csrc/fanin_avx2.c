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
#include "fanin_ymm.h"
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
#define V_WHERE_POS(m, v) _mm256_and_ps(_mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_GT_OQ), v)
#define V_HSUM(v) sf_hsum_ymm(v)

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
