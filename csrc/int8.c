/*
 * sparsefan: int8 inference -- the entry points of int8.h: weight packing, the scratch plan,
 * threading and the choice of the kernel variant (int8_generic.c, int8_avx2.c).
 *
 * Threads split each layer's units into ranges of about equal packed size; each output element
 * is computed by one thread, in integers, then by the same float operations whatever the
 * split: results are bit-identical for any n_threads.
 */
#include "int8.h"
#include "int8_kernels.h"

#include "fanin.h" /* sf_cpu_variant: the int8 variant follows the float kernels' */

#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#endif

SF_I8_NO_CONTRACT

/* Packed bytes x examples below which one pass stays on the calling thread. */
#define SF_I8_PARALLEL_MIN_BYTES (64 * 1024)
#define SF_I8_CHUNKS_PER_THREAD 8
/* Cost of a unit beyond its packed bytes (gather, requantization), in bytes. */
#define SF_I8_UNIT_COST 64

int sf_i8_variant(void)
{
#ifdef SF_I8_X86
    return sf_cpu_variant() >= SF_CPU_AVX2 ? SF_I8_AVX2 : SF_I8_GENERIC;
#else
    return SF_I8_GENERIC;
#endif
}

const char *sf_i8_variant_name(int variant)
{
    if (variant == SF_I8_GENERIC)
        return "generic";
    if (variant == SF_I8_AVX2)
        return "avx2";
    return "unknown";
}

static const sf_i8_kernel_table *kernels(void)
{
#ifdef SF_I8_X86
    if (sf_i8_variant() == SF_I8_AVX2)
        return &sf_i8_kernels_avx2;
#endif
    return &sf_i8_kernels_generic;
}

/* ------------------------------------------------------------------------------------------ */
/* packing                                                                                     */

static int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* packed bytes of one unit with R terms */
static int64_t unit_bytes(int64_t R, int64_t c_out, int layout)
{
    if (layout == SF_I8_WIDE)
        return round_up(R, 4) * round_up(c_out, 8);
    return round_up(R, 32) * c_out;
}

int sf_i8_choose_layout(const int64_t *indptr, int64_t n_out, int64_t c_in, int64_t c_out)
{
    int64_t wide = 0, dot = 0;
    for (int64_t j = 0; j < n_out; ++j) {
        const int64_t R = (indptr[j + 1] - indptr[j]) * c_in;
        wide += unit_bytes(R, c_out, SF_I8_WIDE);
        dot += unit_bytes(R, c_out, SF_I8_DOT);
    }
    return dot < wide ? SF_I8_DOT : SF_I8_WIDE;
}

int64_t sf_i8_pack_offsets(const int64_t *indptr, int64_t n_out, int64_t c_in, int64_t c_out,
                           int layout, int64_t *wofs)
{
    wofs[0] = 0;
    for (int64_t j = 0; j < n_out; ++j)
        wofs[j + 1] = wofs[j] + unit_bytes((indptr[j + 1] - indptr[j]) * c_in, c_out, layout);
    return wofs[n_out];
}

void sf_i8_pack(int8_t *w, const int64_t *wofs, const int8_t *qweight, const int64_t *indptr,
                int64_t n_out, int64_t c_in, int64_t c_out, int layout)
{
    memset(w, 0, (size_t)wofs[n_out]);
    for (int64_t j = 0; j < n_out; ++j) {
        /* term r of unit j is (connection indptr[j] + r / c_in, channel r % c_in): the weights
         * of its row are the contiguous block qweight[indptr[j] * c_in + r][o] */
        const int8_t *src = qweight + indptr[j] * c_in * c_out;
        const int64_t R = (indptr[j + 1] - indptr[j]) * c_in;
        int8_t *dst = w + wofs[j];
        if (layout == SF_I8_WIDE) {
            const int64_t G = round_up(R, 4) / 4, NB = round_up(c_out, 8) / 8;
            for (int64_t r = 0; r < R; ++r)
                for (int64_t o = 0; o < c_out; ++o) {
                    const int64_t t = r / 4, i = r % 4, b = o / 8, ol = o % 8;
                    const int64_t b0 = b / 4 * 4, nb = NB - b0 < 4 ? NB - b0 : 4;
                    dst[b0 * G * 32 + t * nb * 32 + (b - b0) * 32 + ol * 4 + i] =
                        src[r * c_out + o];
                }
        } else {
            const int64_t R32 = round_up(R, 32);
            for (int64_t r = 0; r < R; ++r)
                for (int64_t o = 0; o < c_out; ++o)
                    dst[o * R32 + r] = src[r * c_out + o];
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* scratch: [two activation buffers][gather buffer per thread], each part 64-byte aligned. An   */
/* activation buffer holds up to SF_I8_BLOCK examples (layer l reads buffer l % 2, the input   */
/* being quantized into buffer 0).                                                              */

typedef struct {
    int64_t E;         /* examples per pass */
    int64_t act;       /* bytes per example in an activation buffer */
    int64_t gslot;     /* bytes of one thread's gather buffer */
    int64_t total;
} i8_plan;

static i8_plan plan_scratch(const sf_i8_layer *layers, int n_layers, int64_t B, int n_threads)
{
    i8_plan p;
    int64_t act = n_layers > 0 ? layers[0].n_in : 0, terms = 0;
    for (int l = 0; l < n_layers; ++l) {
        if (l + 1 < n_layers && layers[l].n_out * layers[l].c_out > act)
            act = layers[l].n_out * layers[l].c_out;
        if (layers[l].max_terms > terms)
            terms = layers[l].max_terms;
    }
    p.E = B < SF_I8_BLOCK ? (B > 0 ? B : 1) : SF_I8_BLOCK;
    p.act = round_up(act, 64);
    p.gslot = round_up(terms, 32) + 64;
    p.total = 64 + 2 * p.E * p.act + (int64_t)(n_threads > 0 ? n_threads : 1) * p.gslot;
    return p;
}

int64_t sf_i8_scratch_bytes(const sf_i8_layer *layers, int n_layers, int64_t B, int n_threads)
{
    return plan_scratch(layers, n_layers, B, n_threads).total;
}

/* ------------------------------------------------------------------------------------------ */
/* forward                                                                                     */

/* The first unit of chunk c of n: the first j whose cost (packed bytes + SF_I8_UNIT_COST per
 * unit before it) reaches c / n of the layer's. */
static int64_t split(const sf_i8_layer *L, int64_t c, int64_t n)
{
    const int64_t total = L->wofs[L->n_out] + SF_I8_UNIT_COST * L->n_out;
    const int64_t target = total / n * c + total % n * c / n;
    int64_t lo = 0, hi = L->n_out;
    if (c >= n)
        return L->n_out;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (L->wofs[mid] + SF_I8_UNIT_COST * mid < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void sf_i8_network_forward(float *out, const float *x, const sf_i8_layer *layers, int n_layers,
                           float in_inv_scale, int64_t B, void *scratch, int n_threads)
{
    if (n_layers <= 0 || B <= 0)
        return;
    const sf_i8_kernel_table *k = kernels();
    const i8_plan p = plan_scratch(layers, n_layers, B, n_threads);
    unsigned char *base = (unsigned char *)scratch;
    base += (64 - (uintptr_t)base % 64) % 64;
    int8_t *buf[2];
    buf[0] = (int8_t *)(void *)base;
    buf[1] = buf[0] + p.E * p.act;
    int8_t *gather = buf[1] + p.E * p.act;
    const int64_t n_in = layers[0].n_in;
    int64_t work = 0;
    for (int l = 0; l < n_layers; ++l)
        work += (layers[l].wofs[layers[l].n_out] + SF_I8_UNIT_COST * layers[l].n_out) * p.E;
    const int par = n_threads > 1 && work >= SF_I8_PARALLEL_MIN_BYTES;
    (void)par;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads) if (par)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int tid = 0, nt = 1;
#endif
        int8_t *xg = gather + (int64_t)tid * p.gslot;
        for (int64_t b0 = 0; b0 < B; b0 += p.E) {
            const int64_t E = B - b0 < p.E ? B - b0 : p.E;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t e = 0; e < E; ++e)
                k->quantize(buf[0] + e * p.act, x + (b0 + e) * n_in, n_in, in_inv_scale);
            /* negative inputs? (every thread looks, after the barrier: no shared flag) */
            int negative = 0;
            for (int64_t e = 0; e < E; ++e) {
                const int8_t *a = buf[0] + e * p.act;
                int8_t lowest = 0;
                for (int64_t i = 0; i < n_in; ++i)
                    lowest = a[i] < lowest ? a[i] : lowest;
                negative |= lowest < 0;
            }
            for (int l = 0; l < n_layers; ++l) {
                const sf_i8_layer *L = &layers[l];
                const int last = l + 1 == n_layers;
                sf_i8_io io;
                io.x = buf[l % 2];
                io.x_stride = p.act;
                io.yq = last ? NULL : buf[(l + 1) % 2];
                io.yq_stride = p.act;
                io.yf = out + b0;
                io.yf_stride = B;
                io.E = E;
                io.xg = xg;
                io.signed_x = l == 0 ? negative : !layers[l - 1].relu;
                int64_t n_chunks = nt > 1 ? (int64_t)nt * SF_I8_CHUNKS_PER_THREAD : 1;
                if (n_chunks > L->n_out)
                    n_chunks = L->n_out > 0 ? L->n_out : 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
                for (int64_t c = 0; c < n_chunks; ++c)
                    k->units(L, &io, split(L, c, n_chunks), split(L, c + 1, n_chunks));
                /* implicit barrier: the next layer reads this one's outputs */
            }
        }
    }
}
