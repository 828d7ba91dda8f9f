/*
 * sparsefan: the generic kernel variant, for any CPU. With GCC or clang it uses 4-lane vector
 * extensions (SSE2 on x86-64, NEON on ARM); other compilers get plain scalar C.
 */
#include "fanin_kernels.h"

#include <string.h>

#define SF_VARIANT generic
#define SF_VARIANT_NAME "generic"
#define SF_ATTR

#if defined(__GNUC__) || defined(__clang__)

typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
#define VL 4

static inline vf v_loadn(const float *p, int n)
{
    vf v = {0.0f, 0.0f, 0.0f, 0.0f};
    memcpy(&v, p, (size_t)n * sizeof(float));
    return v;
}
static inline vf v_load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof(v));
    return v;
}
static inline void v_storen(float *p, vf v, int n) { memcpy(p, &v, (size_t)n * sizeof(float)); }
static inline void v_store(float *p, vf v) { memcpy(p, &v, sizeof(v)); }
static inline vf v_relu(vf v)
{
    const vf zero = {0.0f, 0.0f, 0.0f, 0.0f};
    return (vf)((vi)v & ~(vi)(v < zero)); /* keeps NaN: NaN < 0 is false */
}
static inline float v_hsum(vf v) { return (v[0] + v[2]) + (v[1] + v[3]); }
static inline vf v_where_pos(vf m, vf v)
{
    const vf zero = {0.0f, 0.0f, 0.0f, 0.0f};
    return (vf)((vi)v & (vi)(m > zero)); /* NaN > 0 is false: 0 */
}

#define V_ZERO() ((vf){0.0f, 0.0f, 0.0f, 0.0f})
#define V_SET1(a) ((vf){(a), (a), (a), (a)})
#define V_LOAD(p) v_load(p)
#define V_LOADN(p, n) v_loadn(p, n)
#define V_STORE(p, v) v_store(p, v)
#define V_STOREN(p, v, n) v_storen(p, v, n)

#else /* plain C: one lane */

typedef float vf;
#define VL 1
#define V_ZERO() 0.0f
#define V_SET1(a) (a)
#define V_LOAD(p) (*(p))
#define V_LOADN(p, n) (*(p))
#define V_STORE(p, v) (*(p) = (v))
#define V_STOREN(p, v, n) (*(p) = (v))
#define V_RELU_SCALAR 1
static float v_relu(float v) { return v < 0.0f ? 0.0f : v; }
static float v_hsum(float v) { return v; }
static float v_where_pos(float m, float v) { return m > 0.0f ? v : 0.0f; }

#endif

#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_ADD(a, b) ((a) + (b))
#define V_RELU(v) v_relu(v)
#define V_HSUM(v) v_hsum(v)
#define V_WHERE_POS(m, v) v_where_pos(m, v)

#define SF_T1 8
#define SF_TC 2
#define SF_OC 4
#define SF_R1 8
#define SF_RC 2
#define SF_PC 4

#include "fanin_simd.h"
