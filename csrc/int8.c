/*
 * sparsefan: int8 inference -- the entry points of int8.h: weight packing, the scratch plan,
 * threading and the choice of the kernel variant (int8_generic.c, int8_avx2.c).
 *
 * Threads (csrc/pool.h) split each layer's units into ranges of about equal packed size; each
 * output element is computed by one thread, in integers, then by the same float operations
 * whatever the split: results are bit-identical for any n_threads.
 */
#include "int8.h"
#include "int8_kernels.h"

#include "fanin.h" /* sf_cpu_variant: the int8 variant follows the float kernels' */

#include "pool.h"

#include <stddef.h>

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

/* Units per layer chunk: a thread claims chunks in order (csrc/pool.h), so the share of a thread
 * the OS has not scheduled is taken by the others. */
static int64_t n_chunks_of(const sf_i8_layer *L, int nt)
{
    const int64_t n = nt > 1 ? (int64_t)nt * SF_I8_CHUNKS_PER_THREAD : 1;
    return n > L->n_out ? (L->n_out > 0 ? L->n_out : 1) : n;
}

/* One call as a list of items, block by block of up to p.E examples: item 0 of a block quantizes
 * its input, then come the chunks of layer 0, layer 1, ... An item waits for the items whose
 * outputs it reads (all of the previous stage); a block's first item waits for the whole
 * previous block, whose buffers it overwrites. */
typedef struct {
    const sf_i8_kernel_table *k;
    const sf_i8_layer *layers;
    int n_layers;
    int nt;            /* threads the chunks are sized for */
    float *out;
    const float *x;
    float in_inv_scale;
    int64_t B;
    i8_plan p;
    int8_t *buf[2];
    int8_t *gather;
    int64_t per_block; /* items per block */
    int negative;      /* the current block's quantized input has negative values */
} i8_job;

static void i8_quantize_block(i8_job *j, int64_t b0, int64_t E)
{
    const int64_t n_in = j->layers[0].n_in;
    int negative = 0;
    for (int64_t e = 0; e < E; ++e) {
        int8_t *a = j->buf[0] + e * j->p.act;
        j->k->quantize(a, j->x + (b0 + e) * n_in, n_in, j->in_inv_scale);
        int8_t lowest = 0;
        for (int64_t i = 0; i < n_in; ++i)
            lowest = a[i] < lowest ? a[i] : lowest;
        negative |= lowest < 0;
    }
    j->negative = negative;
}

static void i8_item(void *ctx, int64_t item, sf_team *team)
{
    i8_job *j = ctx;
    const int64_t block = item / j->per_block, base = block * j->per_block;
    const int64_t b0 = block * j->p.E, E = j->B - b0 < j->p.E ? j->B - b0 : j->p.E;
    int64_t r = item - base;
    if (r == 0) {
        if (block > 0)
            sf_team_wait(team, base - j->per_block, base - 1);
        i8_quantize_block(j, b0, E);
        return;
    }
    r -= 1;
    int64_t prev = base, prev_n = 1; /* the items of the previous stage */
    for (int l = 0; l < j->n_layers; ++l) {
        const sf_i8_layer *L = &j->layers[l];
        const int64_t n = n_chunks_of(L, j->nt);
        if (r >= n) {
            r -= n;
            prev += prev_n;
            prev_n = n;
            continue;
        }
        sf_team_wait(team, prev, prev + prev_n - 1);
        sf_i8_io io;
        io.x = j->buf[l % 2];
        io.x_stride = j->p.act;
        io.yq = l + 1 == j->n_layers ? NULL : j->buf[(l + 1) % 2];
        io.yq_stride = j->p.act;
        io.yf = j->out + b0;
        io.yf_stride = j->B;
        io.E = E;
        io.xg = j->gather + (int64_t)sf_team_thread() * j->p.gslot;
        io.signed_x = l == 0 ? j->negative : !j->layers[l - 1].relu;
        j->k->units(L, &io, split(L, r, n), split(L, r + 1, n));
        return;
    }
}

void sf_i8_network_forward(float *out, const float *x, const sf_i8_layer *layers, int n_layers,
                           float in_inv_scale, int64_t B, void *scratch, int n_threads)
{
    if (n_layers <= 0 || B <= 0)
        return;
    i8_job j = {.k = kernels(), .layers = layers, .n_layers = n_layers, .out = out, .x = x,
                .in_inv_scale = in_inv_scale, .B = B,
                .p = plan_scratch(layers, n_layers, B, n_threads)};
    unsigned char *base = (unsigned char *)scratch;
    base += (64 - (uintptr_t)base % 64) % 64;
    j.buf[0] = (int8_t *)(void *)base;
    j.buf[1] = j.buf[0] + j.p.E * j.p.act;
    j.gather = j.buf[1] + j.p.E * j.p.act;
    int64_t work = 0;
    for (int l = 0; l < n_layers; ++l)
        work += (layers[l].wofs[layers[l].n_out] + SF_I8_UNIT_COST * layers[l].n_out) * j.p.E;
    j.nt = n_threads > 1 && work >= SF_I8_PARALLEL_MIN_BYTES ? n_threads : 1;
    j.per_block = 1;
    for (int l = 0; l < n_layers; ++l)
        j.per_block += n_chunks_of(&layers[l], j.nt);
    const int64_t n_blocks = (B + j.p.E - 1) / j.p.E;
    sf_run(j.nt, n_blocks * j.per_block, i8_item, &j);
}
