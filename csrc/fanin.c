/*
 * sparsefan: fixed fan-in layer kernels — the public entry points of fanin.h.
 *
 * This file owns threading and CPU dispatch; the arithmetic lives in the kernel template
 * fanin_simd.h, compiled once per instruction set (fanin_generic.c, fanin_avx2.c,
 * fanin_avx512.c). The best variant the CPU supports is picked at the first call (or forced with
 * sf_set_cpu_variant). Work is split into ranges of whole output rows balanced by their number of
 * connections, so uneven fan-in or out-degree does not leave a thread idle, and every output
 * element is still computed by one thread in a fixed order: results are bit-identical for any
 * n_threads.
 */
#include "fanin.h"
#include "fanin_kernels.h"

/* Preconditions of the entry points, checked in debug builds (-DSF_DEBUG, as the sanitizer
 * stage of .ci/run builds): the Python boundary validates everything once, so these can only
 * fire on a bug in that boundary. Free in release builds. */
#ifdef SF_DEBUG
#undef NDEBUG
#include <assert.h>
#define SF_REQUIRE(cond) assert(cond)
#else
#define SF_REQUIRE(cond) ((void)0)
#endif
#define SF_REQUIRE_SHAPE(n_in, n_out, c_in, c_out, B, n_threads)                               \
    SF_REQUIRE((n_in) >= 1 && (n_out) >= 0 && (c_in) >= 1 && (c_out) >= 1 && (B) >= 0 &&       \
               (n_threads) >= 1)

#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define PARALLEL_MIN_WORK SF_PARALLEL_MIN_WORK
/* Work ranges per thread: enough for dynamic scheduling to even out noisy neighbours. */
#define CHUNKS_PER_THREAD 8
#define MAX_CHUNKS 512
/* Cost of a row in units of connections, so that empty rows still count. */
#define ROW_COST 2
/* Software prefetch of the gathered rows pays when they do not fit in a core's L2 cache. */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES (1024 * 1024)
#endif
#ifndef SLAB_MAX_COLUMNS
#define SLAB_MAX_COLUMNS 1024
#endif

int sf_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int sf_openmp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* CPU dispatch                                                                                */

static const sf_kernel_table *const variants[SF_CPU_N_VARIANTS] = {
    &sf_kernels_generic,
#ifdef SF_X86_DISPATCH
    &sf_kernels_avx2,
    &sf_kernels_avx512,
#else
    NULL,
    NULL,
#endif
};

static int active_variant = -1;

int sf_cpu_variant_supported(int variant)
{
    if (variant == SF_CPU_GENERIC)
        return 1;
#ifdef SF_X86_DISPATCH
    __builtin_cpu_init();
    if (variant == SF_CPU_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (variant == SF_CPU_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    return 0;
}

int sf_cpu_variant(void)
{
    if (active_variant < 0) {
        int v = SF_CPU_N_VARIANTS - 1;
        while (v > SF_CPU_GENERIC && !sf_cpu_variant_supported(v))
            --v;
        active_variant = v;
    }
    return active_variant;
}

const char *sf_cpu_variant_name(int variant)
{
    if (variant < 0 || variant >= SF_CPU_N_VARIANTS)
        return "unknown";
    static const char *const names[SF_CPU_N_VARIANTS] = {"generic", "avx2", "avx512"};
    return names[variant];
}

int sf_set_cpu_variant(int variant)
{
    if (variant < 0 || variant >= SF_CPU_N_VARIANTS || !sf_cpu_variant_supported(variant))
        return -1;
    active_variant = variant;
    return 0;
}

static const sf_kernel_table *kernels(void) { return variants[sf_cpu_variant()]; }

/* ------------------------------------------------------------------------------------------ */
/* work split                                                                                  */

static int use_threads(int64_t work, int n_threads)
{
    return n_threads > 1 && work >= PARALLEL_MIN_WORK;
}

/* bounds[0..n_chunks]: row ranges of about equal cost (connections + ROW_COST per row), found by
 * binary search in the row pointers (cost up to row r is ptr[r] + ROW_COST * r). */
static int split_rows(const int64_t *ptr, int64_t n_rows, int n_threads, int64_t *bounds)
{
    int64_t n_chunks = n_threads > 1 ? (int64_t)n_threads * CHUNKS_PER_THREAD : 1;
    if (n_chunks > MAX_CHUNKS)
        n_chunks = MAX_CHUNKS;
    if (n_chunks > n_rows)
        n_chunks = n_rows > 0 ? n_rows : 1;
    const int64_t total = ptr[n_rows] - ptr[0] + ROW_COST * n_rows;
    bounds[0] = 0;
    for (int64_t c = 1; c < n_chunks; ++c) {
        const int64_t target = total / n_chunks * c + total % n_chunks * c / n_chunks;
        int64_t lo = bounds[c - 1], hi = n_rows;
        while (lo < hi) { /* first row r with cost(r) >= target */
            const int64_t mid = lo + (hi - lo) / 2;
            if (ptr[mid] - ptr[0] + ROW_COST * mid < target)
                lo = mid + 1;
            else
                hi = mid;
        }
        bounds[c] = lo;
    }
    bounds[n_chunks] = n_rows;
    return (int)n_chunks;
}

/* Batch columns per slab. Each unit reads whole gathered rows, batch-contiguous, tile after tile:
 * long sequential runs per row are what the hardware prefetchers follow, and they beat narrow
 * L2-sized slabs (measured). Only very large batches are cut, so a row piece stays a few KB. */
static int64_t slab_width(int64_t B)
{
    return B <= SLAB_MAX_COLUMNS ? B : SLAB_MAX_COLUMNS;
}

/* Prefetch the gathered rows when they do not fit in L2. */
static void set_prefetch(sf_gather_args *a, int64_t n_units, int64_t n_rows_in)
{
    a->prefetch_end = n_rows_in * a->G * a->B * (int64_t)sizeof(float) > PREFETCH_BYTES
                          ? a->ptr[n_units] : 0;
}

static int64_t gather_work(const sf_gather_args *a, int64_t n_units)
{
    return (a->ptr[n_units] - a->ptr[0]) * a->G * a->H * a->B;
}

/* The gather pass over the row ranges bounds[0..n_chunks], run by every thread of the enclosing
 * parallel region (or by the caller alone outside one). No barrier at the end. */
static void gather_team(const sf_kernel_table *k, const sf_gather_args *a, const int64_t *bounds,
                        int n_chunks)
{
    const int64_t slab = slab_width(a->B);
    for (int64_t b0 = 0; b0 < a->B; b0 += slab) {
        const int64_t b1 = b0 + slab < a->B ? b0 + slab : a->B;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1) nowait
#endif
        for (int c = 0; c < n_chunks; ++c)
            k->gather(a, bounds[c], bounds[c + 1], b0, b1);
    }
}

static void run_gather(const sf_gather_args *args, int64_t n_units, int64_t n_rows_in,
                       int n_threads)
{
    sf_gather_args a = *args;
    set_prefetch(&a, n_units, n_rows_in);
    const sf_kernel_table *k = kernels();
    const int par = use_threads(gather_work(&a, n_units), n_threads);
    int64_t bounds[MAX_CHUNKS + 1];
    const int n_chunks = split_rows(a.ptr, n_units, par ? n_threads : 1, bounds);
    (void)par;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads) if (par)
#endif
    gather_team(k, &a, bounds, n_chunks);
}

/* ------------------------------------------------------------------------------------------ */
/* forward and backward                                                                        */

/* y[j, o, :] = act(b[j, o] + sum_{p, c} W[p, c, o] * x[indices[p], c, :]) */
static sf_gather_args forward_args(float *y, const float *x, const float *W, const float *b,
                                   const int64_t *indptr, const int32_t *indices, int64_t c_in,
                                   int64_t c_out, int64_t B, int relu)
{
    const sf_gather_args a = {.out = y, .in = x, .W = W, .bias = b, .ptr = indptr,
                              .rows = indices, .slots = NULL, .G = c_in, .H = c_out, .B = B,
                              .wslot = c_in * c_out, .wsg = c_out, .wsh = 1, .relu = relu,
                              .prefetch_end = 0, .zero_init = 0};
    return a;
}

void sf_fanin_forward(float *y, const float *x, const float *W, const float *b,
                      const int64_t *indptr, const int32_t *indices,
                      int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                      int relu, int n_threads)
{
    SF_REQUIRE_SHAPE(n_in, n_out, c_in, c_out, B, n_threads);
    SF_REQUIRE(y && x && indptr && (indptr[n_out] == 0 || (W && indices)) && y != x);
    SF_REQUIRE(indptr[0] == 0);
    const sf_gather_args a = forward_args(y, x, W, b, indptr, indices, c_in, c_out, B, relu);
    run_gather(&a, n_out, n_in, n_threads);
}

/* forward: y[j, o, :] += W[p, c, o] * x[indices[p], c, :]
 * so:      dx[i, c, :] += W[p, c, o] * dy[j, o, :] for every connection (j, p) that reads i,
 * gathered per input i through the transposed table: each dx row has one writer, no atomics. */
void sf_fanin_backward_input(float *dx, const float *dy, const float *W,
                             const int64_t *t_indptr, const int32_t *t_rows,
                             const int64_t *t_slots,
                             int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                             int accumulate, int n_threads)
{
    SF_REQUIRE_SHAPE(n_in, n_out, c_in, c_out, B, n_threads);
    SF_REQUIRE(dx && t_indptr && t_indptr[0] == 0 && dx != dy);
    SF_REQUIRE(t_indptr[n_in] == 0 || (dy && W && t_rows && t_slots));
    const sf_gather_args a = {.out = dx, .in = dy, .W = W, .bias = NULL, .ptr = t_indptr,
                              .rows = t_rows, .slots = t_slots, .G = c_out, .H = c_in, .B = B,
                              .wslot = c_in * c_out, .wsg = 1, .wsh = c_out, .relu = 0,
                              .prefetch_end = 0, .zero_init = !accumulate};
    run_gather(&a, n_in, n_out, n_threads);
}

/* forward: y[j, o, b] += W[p, c, o] * x[indices[p], c, b] + b[j, o]
 * so:      dW[p, c, o] += sum_b x[indices[p], c, b] * dy[j, o, b],  db[j, o] += sum_b dy[j, o, b].
 * Parallel over rows j: row j owns its connections' dW blocks and its db entries. */
void sf_fanin_backward_params(float *dW, float *db, const float *dy, const float *x,
                              const int64_t *indptr, const int32_t *indices,
                              int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                              int n_threads)
{
    SF_REQUIRE_SHAPE(n_in, n_out, c_in, c_out, B, n_threads);
    SF_REQUIRE(dy && x && indptr && indptr[0] == 0);  /* db may be NULL */
    SF_REQUIRE(indptr[n_out] == 0 || (dW && indices));
    const sf_kernel_table *k = kernels();
    const int64_t work = indptr[n_out] * c_in * c_out * B;
    const int par = use_threads(work, n_threads);
    int64_t bounds[MAX_CHUNKS + 1];
    const int n_chunks = split_rows(indptr, n_out, par ? n_threads : 1, bounds);
    const int prefetch = n_in * c_in * B * (int64_t)sizeof(float) > PREFETCH_BYTES;
    (void)par;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads) if (par)
#endif
    for (int c = 0; c < n_chunks; ++c)
        k->params(dW, db, dy, x, indptr, indices, bounds[c], bounds[c + 1], c_in, c_out, B,
                  prefetch);
}

void sf_relu_backward(float *dz, const float *dy, const float *y, int64_t n, int n_threads)
{
    (void)n_threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n >= 8 * PARALLEL_MIN_WORK)
#endif
    for (int64_t i = 0; i < n; ++i) {
        const float d = dy[i]; /* loaded unconditionally: the loop vectorizes (a blend) */
        dz[i] = y[i] > 0.0f ? d : 0.0f;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* layout change                                                                               */

static int transpose_par(int64_t rows, int64_t cols, int n_threads)
{
    return n_threads > 1 && rows * cols >= 4 * PARALLEL_MIN_WORK;
}

/* The transpose in work items of 32 rows (whole 32 x 32 blocks), run by every thread of the
 * enclosing parallel region (or by the caller alone outside one); a barrier at the end. */
static void transpose_team(const sf_kernel_table *k, float *out, const float *in, int64_t rows,
                           int64_t cols)
{
    const int64_t step = 32;
    const int64_t n_items = (rows + step - 1) / step;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
    for (int64_t it = 0; it < n_items; ++it) {
        const int64_t r0 = it * step;
        k->transpose(out, in, rows, cols, r0, r0 + step < rows ? r0 + step : rows);
    }
}

void sf_transpose(float *out, const float *in, int64_t rows, int64_t cols, int n_threads)
{
    const sf_kernel_table *k = kernels();
    const int par = transpose_par(rows, cols, n_threads);
    (void)par;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads) if (par)
#endif
    transpose_team(k, out, in, rows, cols);
}

/* ------------------------------------------------------------------------------------------ */
/* whole-network forward                                                                       */

/* Activations between layers alternate between two buffers: "even" holds the outputs of layers
 * 0, 2, 4, ..., "odd" those of layers 1, 3, ... A batch of more than one example is first
 * transposed into the odd buffer, which layer 0 reads and layer 1, the first to write there, no
 * longer needs. Each buffer is sized for its own layers, the last one included unless it writes
 * to a separate out. */
void sf_network_buffer_sizes(const sf_chain_layer *layers, int n_layers, int64_t B, int last_in_buffer,
                             int64_t *even, int64_t *odd)
{
    *even = 0;
    *odd = B > 1 && n_layers > 0 ? layers[0].n_in * B : 0;
    for (int l = 0; l + (last_in_buffer ? 0 : 1) < n_layers; ++l) {
        const int64_t n = layers[l].n_out * layers[l].c_out * B;
        int64_t *size = l % 2 == 0 ? even : odd;
        *size = n > *size ? n : *size;
    }
}

/* The forward arguments of one layer of a network, prefetch decided. */
static sf_gather_args layer_args(const sf_chain_layer *L, float *y, const float *in, int64_t B)
{
    sf_gather_args a = forward_args(y, in, L->W, L->b, L->indptr, L->indices, L->c_in, L->c_out,
                                    B, L->relu);
    set_prefetch(&a, L->n_out, L->n_in);
    return a;
}

void sf_network_forward(float *out, const float *x, const sf_chain_layer *layers, int n_layers,
                        int64_t B, float *even, float *odd, int n_threads)
{
    SF_REQUIRE(x && layers && B >= 0 && n_threads >= 1);  /* out NULL: the last buffer */
    for (int l = 1; l < n_layers; ++l)  /* the chain fits together */
        SF_REQUIRE(layers[l].n_in == layers[l - 1].n_out && layers[l].c_in == layers[l - 1].c_out);
    if (n_layers <= 0)
        return;
    const sf_kernel_table *k = kernels();
    const int64_t n_in = layers[0].n_in;
    int par = B > 1 && transpose_par(B, n_in, n_threads);
    for (int l = 0; l < n_layers; ++l) {
        const sf_gather_args a = layer_args(&layers[l], NULL, NULL, B);
        par |= use_threads(gather_work(&a, layers[l].n_out), n_threads);
    }
    float *buf[2];
    buf[0] = even;
    buf[1] = odd;
    if (out == NULL)
        out = buf[(n_layers - 1) % 2];
    const float *entry = B > 1 ? odd : x; /* (n_in, 1, B) */
    /* shared by the team: the current layer's arguments and row ranges */
    sf_gather_args args;
    int64_t bounds[MAX_CHUNKS + 1];
    int n_chunks = 0;
    (void)par;
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads) if (par)
#endif
    {
        if (B > 1) /* the layout change, (B, n_in) -> (n_in, B) */
            transpose_team(k, buf[1], x, B, n_in);
        for (int l = 0; l < n_layers; ++l) {
#ifdef _OPENMP
#pragma omp single
#endif
            {
                const sf_chain_layer *L = &layers[l];
                const float *in = l == 0 ? entry : buf[(l - 1) % 2];
                float *y = l + 1 == n_layers ? out : buf[l % 2];
                args = layer_args(L, y, in, B);
                const int lp = use_threads(gather_work(&args, L->n_out), n_threads);
                n_chunks = split_rows(L->indptr, L->n_out, lp ? n_threads : 1, bounds);
            } /* implicit barrier: every thread sees args and bounds */
            gather_team(k, &args, bounds, n_chunks);
#ifdef _OPENMP
#pragma omp barrier
#endif
        }
    }
}
