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
#include <stdlib.h>

#include "pool.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define PARALLEL_MIN_WORK SF_PARALLEL_MIN_WORK
/* Row ranges per thread: enough for the threads that run to take the share of one that does
 * not (a busy machine), claimed in order (csrc/pool.c). */
#define CHUNKS_PER_THREAD 8
#define MAX_CHUNKS 512
/* Cost of a row in units of connections, so that empty rows still count. */
#define ROW_COST 2
/* Software prefetch of the gathered rows pays when they do not fit in a core's L2 cache. */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES (1024 * 1024)
#endif
/* Rows of a last layer that writes NumPy's layout are transposed in blocks of this size, each
 * by the thread that computed it, right after. */
#ifndef EXIT_BLOCK_BYTES
#define EXIT_BLOCK_BYTES (128 * 1024)
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

/* Row ranges for n_threads (1: one range). */
static int64_t chunks_for(int n_threads)
{
    return n_threads > 1 ? (int64_t)n_threads * CHUNKS_PER_THREAD : 1;
}

/* bounds[0..n_chunks]: n_chunks row ranges (fewer for fewer rows) of about equal cost
 * (connections + ROW_COST per row), found by binary search in the row pointers (cost up to row r
 * is ptr[r] + ROW_COST * r). */
static int split_rows(const int64_t *ptr, int64_t n_rows, int64_t n_chunks, int64_t *bounds)
{
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

static int64_t n_slabs(int64_t B)
{
    return B > 0 ? (B + SLAB_MAX_COLUMNS - 1) / SLAB_MAX_COLUMNS : 0;
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

/* ------------------------------------------------------------------------------------------ */
/* work items (run by csrc/pool.c: claimed in order by whichever threads are running)          */

/* A gather pass: item = slab * n_chunks + chunk, the row range bounds[chunk] .. bounds[chunk + 1]
 * over the batch columns of the slab. */
typedef struct {
    const sf_kernel_table *k;
    sf_gather_args a;
    const int64_t *bounds;
    int n_chunks;
} gather_pass;

static void gather_pass_run(const gather_pass *p, int64_t item)
{
    const int64_t slab = slab_width(p->a.B);
    const int64_t s = item / p->n_chunks;
    const int c = (int)(item % p->n_chunks);
    const int64_t b0 = s * slab, b1 = b0 + slab < p->a.B ? b0 + slab : p->a.B;
    p->k->gather(&p->a, p->bounds[c], p->bounds[c + 1], b0, b1);
}

static void gather_item(void *ctx, int64_t item, sf_team *team)
{
    (void)team;
    gather_pass_run(ctx, item);
}

static void run_gather(const sf_gather_args *args, int64_t n_units, int64_t n_rows_in,
                       int n_threads)
{
    gather_pass p = {.k = kernels(), .a = *args};
    set_prefetch(&p.a, n_units, n_rows_in);
    const int par = use_threads(gather_work(&p.a, n_units), n_threads);
    int64_t bounds[MAX_CHUNKS + 1];
    p.n_chunks = split_rows(p.a.ptr, n_units, chunks_for(par ? n_threads : 1), bounds);
    p.bounds = bounds;
    sf_run(par ? n_threads : 1, n_slabs(p.a.B) * p.n_chunks, gather_item, &p);
}

/* The layout change in items of TRANSPOSE_ROWS input rows (whole 32 x 32 blocks). */
#define TRANSPOSE_ROWS 32
typedef struct {
    const sf_kernel_table *k;
    float *out;
    const float *in;
    const float *relu_y; /* not NULL: out = the ReLU backward of in given this output */
    int64_t rows, cols;
} transpose_pass;

static int64_t transpose_items(int64_t rows)
{
    return (rows + TRANSPOSE_ROWS - 1) / TRANSPOSE_ROWS;
}

static void transpose_pass_run(const transpose_pass *p, int64_t item)
{
    const int64_t r0 = item * TRANSPOSE_ROWS;
    const int64_t r1 = r0 + TRANSPOSE_ROWS < p->rows ? r0 + TRANSPOSE_ROWS : p->rows;
    if (p->relu_y != NULL)
        p->k->transpose_relu(p->out, p->rows, p->in, p->relu_y, p->cols, r0, r1, 0, p->cols);
    else
        p->k->transpose(p->out, p->rows, p->in, p->cols, r0, r1, 0, p->cols);
}

static void transpose_item(void *ctx, int64_t item, sf_team *team)
{
    (void)team;
    transpose_pass_run(ctx, item);
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
static sf_gather_args backward_input_args(float *dx, const float *dy, const float *W,
                                          const int64_t *t_indptr, const int32_t *t_rows,
                                          const int64_t *t_slots, int64_t c_in, int64_t c_out,
                                          int64_t B, int accumulate)
{
    const sf_gather_args a = {.out = dx, .in = dy, .W = W, .bias = NULL, .ptr = t_indptr,
                              .rows = t_rows, .slots = t_slots, .G = c_out, .H = c_in, .B = B,
                              .wslot = c_in * c_out, .wsg = 1, .wsh = c_out, .relu = 0,
                              .prefetch_end = 0, .zero_init = !accumulate, .mask = NULL};
    return a;
}

void sf_fanin_backward_input(float *dx, const float *dy, const float *W,
                             const int64_t *t_indptr, const int32_t *t_rows,
                             const int64_t *t_slots,
                             int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                             int accumulate, int n_threads)
{
    SF_REQUIRE_SHAPE(n_in, n_out, c_in, c_out, B, n_threads);
    SF_REQUIRE(dx && t_indptr && t_indptr[0] == 0 && dx != dy);
    SF_REQUIRE(t_indptr[n_in] == 0 || (dy && W && t_rows && t_slots));
    const sf_gather_args a = backward_input_args(dx, dy, W, t_indptr, t_rows, t_slots, c_in,
                                                 c_out, B, accumulate);
    run_gather(&a, n_in, n_out, n_threads);
}

void sf_fanin_backward_input_relu(float *dz, const float *dy, const float *W, const float *x,
                                  const int64_t *t_indptr, const int32_t *t_rows,
                                  const int64_t *t_slots, int64_t n_in, int64_t n_out,
                                  int64_t c_in, int64_t c_out, int64_t B, int n_threads)
{
    SF_REQUIRE_SHAPE(n_in, n_out, c_in, c_out, B, n_threads);
    SF_REQUIRE(dz && x && t_indptr && t_indptr[0] == 0 && dz != dy && dz != x);
    SF_REQUIRE(t_indptr[n_in] == 0 || (dy && W && t_rows && t_slots));
    sf_gather_args a = backward_input_args(dz, dy, W, t_indptr, t_rows, t_slots, c_in, c_out, B,
                                           0);
    if (B > 1) { /* the batch tiles apply the mask before their store */
        a.mask = x;
        run_gather(&a, n_in, n_out, n_threads);
    } else { /* the single-example paths do not: a second, small pass */
        run_gather(&a, n_in, n_out, n_threads);
        sf_relu_backward(dz, dz, x, n_in * c_in * B, n_threads);
    }
}

typedef struct {
    const sf_kernel_table *k;
    float *dW, *db;
    const float *dy, *x;
    const int64_t *indptr;
    const int32_t *indices;
    int64_t c_in, c_out, B;
    int prefetch;
    const int64_t *bounds;
} params_pass;

static void params_item(void *ctx, int64_t c, sf_team *team)
{
    const params_pass *p = ctx;
    (void)team;
    p->k->params(p->dW, p->db, p->dy, p->x, p->indptr, p->indices, p->bounds[c],
                 p->bounds[c + 1], p->c_in, p->c_out, p->B, p->prefetch);
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
    const int64_t work = indptr[n_out] * c_in * c_out * B;
    const int par = use_threads(work, n_threads);
    int64_t bounds[MAX_CHUNKS + 1];
    const int n_chunks = split_rows(indptr, n_out, chunks_for(par ? n_threads : 1), bounds);
    const params_pass p = {.k = kernels(), .dW = dW, .db = db, .dy = dy, .x = x,
                           .indptr = indptr, .indices = indices, .c_in = c_in, .c_out = c_out,
                           .B = B, .prefetch = n_in * c_in * B * (int64_t)sizeof(float) >
                                               PREFETCH_BYTES,
                           .bounds = bounds};
    sf_run(par ? n_threads : 1, n_chunks, params_item, (void *)&p);
}

#define RELU_ITEM (1 << 16)
typedef struct {
    float *dz;
    const float *dy, *y;
    int64_t n, step;
} relu_pass;

static void relu_item(void *ctx, int64_t item, sf_team *team)
{
    const relu_pass *p = ctx;
    (void)team;
    const int64_t i0 = item * p->step, i1 = i0 + p->step < p->n ? i0 + p->step : p->n;
    float *dz = p->dz;
    const float *dy = p->dy, *y = p->y;
    for (int64_t i = i0; i < i1; ++i) {
        const float d = dy[i]; /* loaded unconditionally: the loop vectorizes (a blend) */
        dz[i] = y[i] > 0.0f ? d : 0.0f;
    }
}

void sf_relu_backward(float *dz, const float *dy, const float *y, int64_t n, int n_threads)
{
    const int par = n_threads > 1 && n >= 8 * PARALLEL_MIN_WORK;
    const relu_pass p = {.dz = dz, .dy = dy, .y = y, .n = n, .step = par ? RELU_ITEM : n};
    if (n > 0)
        sf_run(par ? n_threads : 1, (n + p.step - 1) / p.step, relu_item, (void *)&p);
}

/* ------------------------------------------------------------------------------------------ */
/* layout change                                                                               */

static int transpose_par(int64_t rows, int64_t cols, int n_threads)
{
    return n_threads > 1 && rows * cols >= 4 * PARALLEL_MIN_WORK;
}

void sf_transpose(float *out, const float *in, int64_t rows, int64_t cols, int n_threads)
{
    const transpose_pass p = {.k = kernels(), .out = out, .in = in, .rows = rows, .cols = cols};
    sf_run(transpose_par(rows, cols, n_threads) ? n_threads : 1, transpose_items(rows),
           transpose_item, (void *)&p);
}

void sf_relu_backward_transpose(float *dzt, const float *dy, const float *y, int64_t rows,
                                int64_t cols, int n_threads)
{
    const transpose_pass p = {.k = kernels(), .out = dzt, .in = dy, .relu_y = y, .rows = rows,
                              .cols = cols};
    sf_run(transpose_par(rows, cols, n_threads) ? n_threads : 1, transpose_items(rows),
           transpose_item, (void *)&p);
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
    *odd = B > 1 && n_layers > 0 ? layers[0].n_in * layers[0].c_in * B : 0;
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

/* 1 when unit j of the layer reads unit j of the previous layer only (a per-unit layer). */
static int is_identity(const sf_chain_layer *L)
{
    if (L->n_in != L->n_out || L->indptr[L->n_out] != L->n_out)
        return 0;
    for (int64_t j = 0; j < L->n_out; ++j)
        if (L->indptr[j] != j || L->indices[j] != j)
            return 0;
    return 1;
}

/* The call is one list of items: the entry's layout change (B > 1), then every layer's gather
 * pass. An item waits only for the earlier items it needs (sf_team_wait), so threads run into the
 * next layer as soon as its inputs are there instead of meeting at a barrier; with one thread the
 * items run in order and wait for nothing. Stage s is the entry (s = 0) or layer s - 1. */
typedef struct {
    gather_pass pass;
    int64_t first;            /* its first item */
    int64_t in_rows;          /* rows of B floats it reads from its input buffer */
    int64_t n_out;
    int in_buf, out_buf;      /* 0 even, 1 odd, 2 x, 3 out */
    int identity;
} chain_stage;

typedef struct {
    transpose_pass entry;
    int64_t n_entry; /* items of the entry (0 at B == 1: layer 0 reads x itself) */
    const chain_stage *st;
    int n_layers;
    /* A batch-major out (B > 1): each item of the last layer computes its block of rows into
     * a scratch block of its thread's (stage_floats each), then transposes it into exit, so that
     * the last layer's output never leaves the cache. */
    float *exit;
    float *stage;
    int64_t stage_floats, n_z;
} chain_job;

/* The chunk of a pass holding unit u: the last c with bounds[c] <= u. */
static int chunk_of(const gather_pass *p, int64_t u)
{
    int lo = 0, hi = p->n_chunks - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (p->bounds[mid] <= u)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

static void wait_stage(sf_team *team, const chain_stage *S)
{
    const int64_t n = n_slabs(S->pass.a.B) * S->pass.n_chunks;
    if (n > 0)
        sf_team_wait(team, S->first, S->first + n - 1);
}

/* The items layer l's item (slab s, rows u0 .. u1) waits for:
 *   - what it reads: the entry's columns of the slab (layer 0), or the previous layer's row
 *     ranges in the slab -- only those holding units u0 .. u1 when the layer is per-unit;
 *   - the previous layer's items in the slab, when it writes rows of the buffer they read;
 *   - every item two and three stages back: the other accessors of the buffer it writes. Then,
 *     by induction, every earlier stage is done too. */
static void chain_wait(const chain_job *j, int l, int64_t s, int64_t u0, int64_t u1,
                       sf_team *team)
{
    if (team == NULL)
        return;
    const chain_stage *L = &j->st[l];
    const int64_t slab = slab_width(L->pass.a.B);
    if (l == 0) {
        if (j->n_entry > 0) {
            const int64_t b0 = s * slab;
            const int64_t b1 = b0 + slab < L->pass.a.B ? b0 + slab : L->pass.a.B;
            sf_team_wait(team, b0 / TRANSPOSE_ROWS, (b1 - 1) / TRANSPOSE_ROWS);
        }
        return;
    }
    const chain_stage *P = &j->st[l - 1];
    const int64_t base = P->first + s * P->pass.n_chunks;
    const int war = L->out_buf == P->in_buf && u0 * L->pass.a.H < P->in_rows;
    if (L->identity && !war) {
        if (u1 > u0) /* the previous layer's chunks holding units u0 .. u1 - 1 */
            sf_team_wait(team, base + chunk_of(&P->pass, u0), base + chunk_of(&P->pass, u1 - 1));
    } else {
        sf_team_wait(team, base, base + P->pass.n_chunks - 1);
    }
    for (int back = 2; back <= 3; ++back) {
        if (l - back >= 0)
            wait_stage(team, &j->st[l - back]);
        else if (l - back == -1 && j->n_entry > 0)
            sf_team_wait(team, 0, j->n_entry - 1);
    }
}

static void chain_item(void *ctx, int64_t item, sf_team *team)
{
    const chain_job *j = ctx;
    if (item < j->n_entry) {
        transpose_pass_run(&j->entry, item);
        return;
    }
    int l = 0;
    while (l + 1 < j->n_layers && item >= j->st[l + 1].first)
        ++l;
    const gather_pass *p = &j->st[l].pass;
    const int64_t k = item - j->st[l].first;
    const int64_t s = k / p->n_chunks;
    const int c = (int)(k % p->n_chunks);
    chain_wait(j, l, s, p->bounds[c], p->bounds[c + 1], team);
    if (j->exit == NULL || l + 1 < j->n_layers) {
        gather_pass_run(p, k);
        return;
    }
    /* units u0 .. u1 of the last layer, the slab's columns, through the thread's scratch */
    const int64_t u0 = p->bounds[c], u1 = p->bounds[c + 1];
    const int64_t B = p->a.B, H = p->a.H, slab = slab_width(B);
    const int64_t b0 = s * slab, b1 = b0 + slab < B ? b0 + slab : B;
    sf_gather_args a = p->a;
    a.out = j->stage + sf_team_thread() * j->stage_floats;
    a.out_unit0 = u0;
    p->k->gather(&a, u0, u1, b0, b1);
    p->k->transpose(j->exit + u0 * H, j->n_z, a.out, B, 0, (u1 - u0) * H, b0, b1);
}

int sf_network_forward(float *out, const float *x, const sf_chain_layer *layers, int n_layers,
                       int64_t B, float *even, float *odd, int batch_major_out, int n_threads)
{
    SF_REQUIRE(x && layers && B >= 0 && n_threads >= 1);  /* out NULL: the last buffer */
    SF_REQUIRE(out || !batch_major_out);
    for (int l = 1; l < n_layers; ++l)  /* the chain fits together */
        SF_REQUIRE(layers[l].n_in == layers[l - 1].n_out && layers[l].c_in == layers[l - 1].c_out);
    if (n_layers <= 0 || B <= 0)
        return 0;
    const sf_kernel_table *k = kernels();
    const int64_t n_in = layers[0].n_in * layers[0].c_in; /* rows of the entry's transpose */
    const int64_t n_z = layers[n_layers - 1].n_out * layers[n_layers - 1].c_out;
    const int exit_t = batch_major_out && B > 1; /* (B == 1: both layouts are the same) */
    int par = B > 1 && (transpose_par(B, n_in, n_threads) ||
                        (exit_t && transpose_par(n_z, B, n_threads)));
    for (int l = 0; l < n_layers; ++l) {
        const sf_gather_args a = layer_args(&layers[l], NULL, NULL, B);
        par |= use_threads(gather_work(&a, layers[l].n_out), n_threads);
    }
    /* the stages and their row ranges, in one allocation; a last layer that transposes its
     * output gets row ranges of at most EXIT_BLOCK_BYTES, which stay in cache until then */
    int64_t n_bounds = 0, exit_chunks = 1;
    if (exit_t) {
        const int64_t bytes = n_z * B * (int64_t)sizeof(float);
        exit_chunks = (bytes + EXIT_BLOCK_BYTES - 1) / EXIT_BLOCK_BYTES;
        exit_chunks = exit_chunks < MAX_CHUNKS ? exit_chunks : MAX_CHUNKS;
    }
    for (int l = 0; l < n_layers; ++l)
        n_bounds += (l + 1 == n_layers && exit_chunks > chunks_for(n_threads)
                         ? exit_chunks : chunks_for(n_threads)) + 1;
    chain_stage *st = malloc((size_t)n_layers * sizeof(chain_stage) +
                             (size_t)n_bounds * sizeof(int64_t));
    float *buf[4] = {even, odd, NULL, out};
    int last_buf = 3;
    if (out == NULL)
        last_buf = (n_layers - 1) % 2;
    if (st == NULL && exit_t)
        return -1;
    if (st == NULL) { /* layer by layer, through the single-layer entry points */
        const float *in = x;
        if (B > 1) {
            sf_transpose(odd, x, B, n_in, n_threads);
            in = odd;
        }
        for (int l = 0; l < n_layers; ++l) {
            const sf_chain_layer *L = &layers[l];
            float *y = buf[l + 1 == n_layers ? last_buf : l % 2];
            sf_fanin_forward(y, in, L->W, L->b, L->indptr, L->indices, L->n_in, L->n_out,
                             L->c_in, L->c_out, B, L->relu, n_threads);
            in = y;
        }
        return 0;
    }
    int64_t *bounds = (int64_t *)(st + n_layers);
    chain_job job = {.entry = {.k = k, .out = odd, .in = x, .rows = B, .cols = n_in},
                     .n_entry = B > 1 ? transpose_items(B) : 0, .st = st,
                     .n_layers = n_layers, .exit = exit_t ? out : NULL};
    int64_t next = job.n_entry;
    for (int l = 0; l < n_layers; ++l) {
        const sf_chain_layer *L = &layers[l];
        chain_stage *S = &st[l];
        const int in_buf = l == 0 ? (B > 1 ? 1 : 2) : (l - 1) % 2; /* 2: x itself */
        /* a last layer that transposes its output writes scratch blocks and out only */
        const int out_buf = l + 1 < n_layers ? l % 2 : last_buf;
        S->pass.k = k;
        S->pass.a = layer_args(L, exit_t && l + 1 == n_layers ? NULL : buf[out_buf],
                               in_buf == 2 ? x : buf[in_buf], B);
        const int lp = use_threads(gather_work(&S->pass.a, L->n_out), n_threads);
        int64_t want = chunks_for(lp ? n_threads : 1);
        if (l + 1 == n_layers && exit_chunks > want)
            want = exit_chunks;
        S->pass.bounds = bounds;
        S->pass.n_chunks = split_rows(L->indptr, L->n_out, want, bounds);
        bounds += S->pass.n_chunks + 1;
        S->first = next;
        next += n_slabs(B) * S->pass.n_chunks;
        S->in_rows = L->n_in * L->c_in;
        S->n_out = L->n_out;
        S->in_buf = in_buf;
        S->out_buf = out_buf;
        S->identity = l > 0 && is_identity(L);
    }
    float *stage = NULL;
    if (exit_t) { /* a scratch block per thread, as large as the last layer's largest */
        chain_stage *S = &st[n_layers - 1];
        int64_t rows = 0;
        for (int c = 0; c < S->pass.n_chunks; ++c)
            rows = S->pass.bounds[c + 1] - S->pass.bounds[c] > rows
                       ? S->pass.bounds[c + 1] - S->pass.bounds[c] : rows;
        job.stage_floats = (rows * S->pass.a.H * B + 15) / 16 * 16; /* 64-byte blocks */
        job.n_z = n_z;
        stage = malloc((size_t)(job.stage_floats * (par ? n_threads : 1) + 16) * sizeof(float));
        if (stage == NULL) {
            free(st);
            return -1;
        }
        job.stage = (float *)(((uintptr_t)stage + 63) / 64 * 64);
    }
    sf_run(par ? n_threads : 1, next, chain_item, &job);
    free(stage);
    free(st);
    return 0;
}
