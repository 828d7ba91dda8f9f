/*
 * The arithmetic rates behind the int8 kernels, against float32 FMA, on this core.
 *
 *     cc -O2 -o /tmp/simd_rates bench/simd_rates.c && /tmp/simd_rates
 *
 * Independent chains, registers only (no memory): the throughput of
 *   - the AVX2 int8 dot product of csrc/int8_avx2.c: _mm256_maddubs_epi16, _mm256_madd_epi16
 *     with ones, _mm256_add_epi32 -- 32 multiply-adds;
 *   - the float32 FMA of the float kernels: _mm256_fmadd_ps -- 8 multiply-adds;
 * and prints multiply-adds per nanosecond for both and their ratio. An int8 kernel can only beat
 * the float one by that ratio when both are bound by arithmetic (large batches); at batch 1 the
 * float kernels stream four times the bytes. Medians of 7 runs.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 50000000L

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static volatile int sink;

__attribute__((target("avx2"))) static double int8_dot(void)
{
    __m256i x = _mm256_set1_epi8(5), ones = _mm256_set1_epi16(1);
    __m256i w0 = _mm256_set1_epi8(3), w1 = _mm256_set1_epi8(4), w2 = _mm256_set1_epi8(6),
            w3 = _mm256_set1_epi8(7), w4 = _mm256_set1_epi8(8), w5 = _mm256_set1_epi8(9);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    const double t = now();
    for (long i = 0; i < ITERS; ++i) {
        __asm__ volatile("" : "+x"(x)); /* the loop is not folded away */
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w2), ones));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w3), ones));
        a4 = _mm256_add_epi32(a4, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w4), ones));
        a5 = _mm256_add_epi32(a5, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w5), ones));
    }
    const double s = now() - t;
    __m256i r = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));
    r = _mm256_add_epi32(r, _mm256_add_epi32(a4, a5));
    sink = _mm256_extract_epi32(r, 0);
    return (double)ITERS * 6 * 32 / s * 1e-9;
}

__attribute__((target("avx2,fma"))) static double float_fma(void)
{
    __m256 f = _mm256_set1_ps(1.0001f), g0 = _mm256_setzero_ps(), g1 = g0, g2 = g0, g3 = g0,
           g4 = g0, g5 = g0, g6 = g0, g7 = g0, g8 = g0, g9 = g0;
    const double t = now();
    for (long i = 0; i < ITERS; ++i) {
        __asm__ volatile("" : "+x"(f));
        g0 = _mm256_fmadd_ps(f, f, g0); g1 = _mm256_fmadd_ps(f, f, g1);
        g2 = _mm256_fmadd_ps(f, f, g2); g3 = _mm256_fmadd_ps(f, f, g3);
        g4 = _mm256_fmadd_ps(f, f, g4); g5 = _mm256_fmadd_ps(f, f, g5);
        g6 = _mm256_fmadd_ps(f, f, g6); g7 = _mm256_fmadd_ps(f, f, g7);
        g8 = _mm256_fmadd_ps(f, f, g8); g9 = _mm256_fmadd_ps(f, f, g9);
    }
    const double s = now() - t;
    __m256 r = _mm256_add_ps(_mm256_add_ps(g0, g1), _mm256_add_ps(g2, g3));
    r = _mm256_add_ps(r, _mm256_add_ps(_mm256_add_ps(g4, g5), _mm256_add_ps(g6, g7)));
    r = _mm256_add_ps(r, _mm256_add_ps(g8, g9));
    sink = (int)_mm256_cvtss_f32(r);
    return (double)ITERS * 10 * 8 / s * 1e-9;
}

int main(void)
{
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        printf("this CPU has no AVX2 / FMA\n");
        return 0;
    }
    enum { RUNS = 7 };
    double i8[RUNS], f32[RUNS], ratio[RUNS];
    for (int r = 0; r < RUNS; ++r) { /* alternating, so that drift hits both */
        i8[r] = int8_dot();
        f32[r] = float_fma();
        ratio[r] = i8[r] / f32[r];
    }
    qsort(i8, RUNS, sizeof(double), cmp);
    qsort(f32, RUNS, sizeof(double), cmp);
    qsort(ratio, RUNS, sizeof(double), cmp);
    printf("int8 maddubs+madd+add: %.1f multiply-adds / ns\n", i8[RUNS / 2]);
    printf("float32 FMA:           %.1f multiply-adds / ns\n", f32[RUNS / 2]);
    printf("int8 / float32:        %.2f (median of the per-run ratios)\n", ratio[RUNS / 2]);
    return 0;
}
