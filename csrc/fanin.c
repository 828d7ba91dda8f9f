/*
 * sparsefan: fixed fan-in layer kernels. See fanin.h for the shape legend and layouts.
 *
 * These are the straightforward, correct kernels: a batch tile of accumulators per output row,
 * gather-form backward passes, no atomics. They are written so that the data layout
 * (feature-major, batch contiguous) already suits register-blocked fast paths.
 */
#include "fanin.h"

#include <stddef.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Batch tile: the accumulators of one output (unit, channel) for TILE examples stay in a local
 * array (registers / L1) across all inputs of the unit, and are stored once. */
#define TILE 64
/* Lanes of the reductions over the batch: independent partial sums that vectorize without
 * -ffast-math, combined in a fixed order (so the result never depends on threads). */
#define LANES 16
/* Below this many multiply-adds a parallel region costs more than it saves. */
#define PARALLEL_MIN_WORK 32768

int sf_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static float sum_lanes(float s[LANES])
{
    for (int w = LANES / 2; w > 0; w >>= 1)
        for (int t = 0; t < w; ++t)
            s[t] += s[t + w];
    return s[0];
}

static float dot(const float *a, const float *b, int64_t n)
{
    float s[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int t = 0; t < LANES; ++t)
            s[t] += a[i + t] * b[i + t];
    float tail = 0.0f;
    for (; i < n; ++i)
        tail += a[i] * b[i];
    return sum_lanes(s) + tail;
}

static float sum(const float *a, int64_t n)
{
    float s[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int t = 0; t < LANES; ++t)
            s[t] += a[i + t];
    float tail = 0.0f;
    for (; i < n; ++i)
        tail += a[i];
    return sum_lanes(s) + tail;
}

/* ------------------------------------------------------------------------------------------ */
/* forward                                                                                      */

void sf_fanin_forward(float *y, const float *x, const float *W, const float *b,
                      const int64_t *indptr, const int32_t *indices,
                      int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                      int relu, int n_threads)
{
    const int64_t work = indptr[n_out] * c_in * c_out * B;
    (void)work;
    (void)n_threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(n_threads) if (work >= PARALLEL_MIN_WORK)
#endif
    for (int64_t j = 0; j < n_out; ++j) {
        const int64_t p0 = indptr[j], p1 = indptr[j + 1];
        for (int64_t b0 = 0; b0 < B; b0 += TILE) {
            const int64_t nb = B - b0 < TILE ? B - b0 : TILE;
            for (int64_t o = 0; o < c_out; ++o) {
                float acc[TILE];
                const float bias = b[j * c_out + o];
                for (int64_t t = 0; t < nb; ++t)
                    acc[t] = bias;
                for (int64_t p = p0; p < p1; ++p) {
                    const float *xi = x + (int64_t)indices[p] * c_in * B + b0;
                    const float *wp = W + p * c_in * c_out + o;
                    for (int64_t c = 0; c < c_in; ++c) {
                        const float w = wp[c * c_out];
                        const float *xc = xi + c * B;
                        for (int64_t t = 0; t < nb; ++t)
                            acc[t] += w * xc[t];
                    }
                }
                float *yo = y + (j * c_out + o) * B + b0;
                if (relu) {
                    for (int64_t t = 0; t < nb; ++t)
                        yo[t] = acc[t] < 0.0f ? 0.0f : acc[t]; /* NaN propagates */
                } else {
                    memcpy(yo, acc, (size_t)nb * sizeof(float));
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* backward                                                                                     */

/* forward: y[j, o, :] += W[p, c, o] * x[indices[p], c, :]
 * so:      dx[i, c, :] += W[p, c, o] * dy[j, o, :] for every (j, p) that reads i.
 * Gathered per input i through the transposed table: each dx row has one writer, no atomics. */
void sf_fanin_backward_input(float *dx, const float *dy, const float *W,
                             const int64_t *t_indptr, const int32_t *t_rows,
                             const int64_t *t_slots,
                             int64_t n_in, int64_t c_in, int64_t c_out, int64_t B,
                             int n_threads)
{
    const int64_t work = t_indptr[n_in] * c_in * c_out * B;
    (void)work;
    (void)n_threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(n_threads) if (work >= PARALLEL_MIN_WORK)
#endif
    for (int64_t i = 0; i < n_in; ++i) {
        const int64_t q0 = t_indptr[i], q1 = t_indptr[i + 1];
        for (int64_t b0 = 0; b0 < B; b0 += TILE) {
            const int64_t nb = B - b0 < TILE ? B - b0 : TILE;
            for (int64_t c = 0; c < c_in; ++c) {
                float acc[TILE];
                float *dxc = dx + (i * c_in + c) * B + b0;
                for (int64_t t = 0; t < nb; ++t)
                    acc[t] = dxc[t];
                for (int64_t q = q0; q < q1; ++q) {
                    const float *dyj = dy + (int64_t)t_rows[q] * c_out * B + b0;
                    const float *wp = W + (t_slots[q] * c_in + c) * c_out;
                    for (int64_t o = 0; o < c_out; ++o) {
                        const float w = wp[o];
                        const float *dyo = dyj + o * B;
                        for (int64_t t = 0; t < nb; ++t)
                            acc[t] += w * dyo[t];
                    }
                }
                memcpy(dxc, acc, (size_t)nb * sizeof(float));
            }
        }
    }
}

/* forward: y[j, o, b] += W[p, c, o] * x[indices[p], c, b] + b[j, o]
 * so:      dW[p, c, o] += sum_b x[indices[p], c, b] * dy[j, o, b],  db[j, o] += sum_b dy[j, o, b].
 * Parallel over rows j: row j owns its connections' dW blocks and its db entries. */
void sf_fanin_backward_params(float *dW, float *db, const float *dy, const float *x,
                              const int64_t *indptr, const int32_t *indices,
                              int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                              int n_threads)
{
    const int64_t work = indptr[n_out] * c_in * c_out * B;
    (void)work;
    (void)n_threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 4) num_threads(n_threads) if (work >= PARALLEL_MIN_WORK)
#endif
    for (int64_t j = 0; j < n_out; ++j) {
        const float *dyj = dy + j * c_out * B;
        if (db != NULL)
            for (int64_t o = 0; o < c_out; ++o)
                db[j * c_out + o] += sum(dyj + o * B, B);
        for (int64_t p = indptr[j]; p < indptr[j + 1]; ++p) {
            const float *xi = x + (int64_t)indices[p] * c_in * B;
            float *dwp = dW + p * c_in * c_out;
            for (int64_t c = 0; c < c_in; ++c)
                for (int64_t o = 0; o < c_out; ++o)
                    dwp[c * c_out + o] += dot(xi + c * B, dyj + o * B, B);
        }
    }
}

void sf_relu_backward(float *dz, const float *dy, const float *y, int64_t n, int n_threads)
{
    (void)n_threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n >= 8 * PARALLEL_MIN_WORK)
#endif
    for (int64_t i = 0; i < n; ++i)
        dz[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* ------------------------------------------------------------------------------------------ */
/* layout change                                                                                */

#define TBLOCK 32

void sf_transpose(float *out, const float *in, int64_t rows, int64_t cols, int n_threads)
{
    (void)n_threads;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(n_threads) if (rows * cols >= 8 * PARALLEL_MIN_WORK)
#endif
    for (int64_t c0 = 0; c0 < cols; c0 += TBLOCK) {
        const int64_t c1 = c0 + TBLOCK < cols ? c0 + TBLOCK : cols;
        for (int64_t r0 = 0; r0 < rows; r0 += TBLOCK) {
            const int64_t r1 = r0 + TBLOCK < rows ? r0 + TBLOCK : rows;
            for (int64_t c = c0; c < c1; ++c)
                for (int64_t r = r0; r < r1; ++r)
                    out[c * rows + r] = in[r * cols + c];
        }
    }
}
