/*
 * sparsefan: fixed fan-in layer kernels (C99, optional OpenMP, no Python headers).
 *
 * Shape legend
 *   B      batch size
 *   n_in   input units,  c_in  input channels
 *   n_out  output units, c_out output channels
 *   nnz    total number of (output unit, input unit) connections = indptr[n_out]
 *
 * Layouts (all row-major, all contiguous)
 *   x    [n_in ][c_in ][B]   feature-major: each (unit, channel) is a contiguous batch vector
 *   y    [n_out][c_out][B]
 *   W    [nnz][c_in][c_out]  the weight block of connection p = (unit j, slot t)
 *   b    [n_out][c_out]
 *   indptr  int64 [n_out + 1], indices int32 [nnz]: the CSR connectivity (row j reads
 *           indices[indptr[j] .. indptr[j+1]) )
 *   t_indptr int64 [n_in + 1], t_rows int32 [nnz], t_slots int64 [nnz]: the transposed table
 *           (input i is read by connection t_slots[q] of output row t_rows[q], for q in
 *           t_indptr[i] .. t_indptr[i+1])
 *
 * CPU variants: the kernels are compiled for several instruction sets (generic C, AVX2+FMA,
 *   AVX-512F on x86-64) and the best one the CPU supports is used, chosen at the first call.
 *
 * Contract: these functions trust their arguments. Every shape, bound and dtype is checked once,
 * at the Python boundary (sparsefan/_validation.py). Each output element is written by exactly one
 * thread, summing in a fixed order, so results are bit-identical for any n_threads.
 * Parameter gradients accumulate (+=) into the caller's buffers, as in llm.c; the input
 * gradient accumulates or overwrites, as its accumulate flag says.
 */
#ifndef SPARSEFAN_FANIN_H
#define SPARSEFAN_FANIN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Below this many multiply-adds a kernel call stays on the calling thread (a parallel region
 * costs more than it saves; the single-example path of a small network). */
#define SF_PARALLEL_MIN_WORK 65536

/* 1 when this build uses OpenMP, 0 when it runs single-threaded. */
int sf_openmp_enabled(void);
/* The OpenMP runtime's current thread limit (omp_get_max_threads: OMP_NUM_THREADS, or what
 * omp_set_num_threads / threadpoolctl last set); 1 without OpenMP. */
int sf_openmp_max_threads(void);

/* Kernel variants, in increasing order of capability. */
enum { SF_CPU_GENERIC = 0, SF_CPU_AVX2 = 1, SF_CPU_AVX512 = 2, SF_CPU_N_VARIANTS = 3 };

/* The variant in use: the best one this CPU supports, unless set by sf_set_cpu_variant. */
int sf_cpu_variant(void);
/* "generic", "avx2", "avx512" (or "unknown" for an out-of-range number). */
const char *sf_cpu_variant_name(int variant);
/* 1 when this build has the variant and this CPU (and OS) can run it. */
int sf_cpu_variant_supported(int variant);
/* Use this variant from now on (for tests and benchmarks). Returns 0, or -1 if unsupported.
 * Not thread-safe: call it while no kernel runs. */
int sf_set_cpu_variant(int variant);

/* y = act(b + sum_{p in row j} sum_c W[p, c, :] * x[indices[p], c, :]); relu != 0 fuses max(0, .). */
void sf_fanin_forward(float *y, const float *x, const float *W, const float *b,
                      const int64_t *indptr, const int32_t *indices,
                      int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                      int relu, int n_threads);

/* dx[i, c, :] += sum_{q in t_indptr[i]..} sum_o W[t_slots[q], c, o] * dy[t_rows[q], o, :]
 * (accumulate != 0), or dx[i, c, :] = that sum (accumulate == 0: dx need not be initialized) */
void sf_fanin_backward_input(float *dx, const float *dy, const float *W,
                             const int64_t *t_indptr, const int32_t *t_rows,
                             const int64_t *t_slots,
                             int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                             int accumulate, int n_threads);

/* dz[i, c, :] = x[i, c, :] > 0 ? sum_{q in t_indptr[i]..} sum_o W[t_slots[q], c, o] * dy[t_rows[q], o, :]
 * : 0 -- the input gradient carried through the ReLU whose output is this layer's input x:
 * sf_fanin_backward_input (overwriting) then sf_relu_backward given x, in one pass over dz (each
 * tile is masked in registers before its store). Bit-identical to the two calls. */
void sf_fanin_backward_input_relu(float *dz, const float *dy, const float *W, const float *x,
                                  const int64_t *t_indptr, const int32_t *t_rows,
                                  const int64_t *t_slots, int64_t n_in, int64_t n_out,
                                  int64_t c_in, int64_t c_out, int64_t B, int n_threads);

/* dW[p, c, o] += sum_b x[indices[p], c, b] * dy[j, o, b]   for every connection p of row j
 * db[j, o]    += sum_b dy[j, o, b]                           (skipped when db is NULL) */
void sf_fanin_backward_params(float *dW, float *db, const float *dy, const float *x,
                              const int64_t *indptr, const int32_t *indices,
                              int64_t n_in, int64_t n_out, int64_t c_in, int64_t c_out, int64_t B,
                              int n_threads);

/* dz[i] = y[i] > 0 ? dy[i] : 0   (the backward of a fused ReLU, given its output y) */
void sf_relu_backward(float *dz, const float *dy, const float *y, int64_t n, int n_threads);

/* out[c][r] = in[r][c] for an (rows x cols) float32 matrix: the layout change at a network's
 * entry and exit, (batch, features) <-> (features, batch). */
void sf_transpose(float *out, const float *in, int64_t rows, int64_t cols, int n_threads);

/* dzt[c][r] = y[r][c] > 0 ? dy[r][c] : 0 for (rows x cols) dy and y: the backward of a fused
 * ReLU and the layout change of its gradient, (batch, features) -> (features, batch), in one
 * pass. */
void sf_relu_backward_transpose(float *dzt, const float *dy, const float *y, int64_t rows,
                                int64_t cols, int n_threads);

/* One layer of a network: the arguments of sf_fanin_forward without the activations. */
typedef struct {
    const float *W, *b;
    const int64_t *indptr;
    const int32_t *indices;
    int64_t n_in, n_out, c_in, c_out;
    int relu;
} sf_chain_layer;

/* Floats sf_network_forward needs in its two activation buffers for this batch size (*even for
 * the outputs of layers 0, 2, ..., *odd for the input's layout change and layers 1, 3, ...);
 * last_in_buffer: the last layer writes to its buffer too (out == NULL), not to out. */
void sf_network_buffer_sizes(const sf_chain_layer *layers, int n_layers, int64_t B, int last_in_buffer,
                             int64_t *even, int64_t *odd);

/* The layers in order, in one call: x is (B, n_in, c_in) row-major -- the NumPy layout of a
 * batch --, out is the last layer's [n_out][c_out][B], or NULL to write it at the start of its
 * own buffer (even if the number of layers is odd, else odd), so that no third activation buffer
 * is needed. With batch_major_out, out is (B, n_out, c_out) row-major, the NumPy layout again:
 * the last layer's rows go through small per-thread scratch blocks (malloc'ed here) and are
 * transposed into out while in cache, so its parity buffer is not used (size the buffers with
 * last_in_buffer = 0). Consecutive layers must agree (n_out, c_out of one = n_in, c_in of the
 * next). One call to the thread pool covers the layout changes and all the layers: each work
 * item waits only for the earlier items whose results it reads or whose inputs it overwrites (no
 * barrier between layers). The same per-layer kernels as sf_fanin_forward, so the result is
 * bit-identical to calling it layer by layer, for any n_threads. Returns 0, or -1 (nothing
 * written) when the scratch of a batch-major out cannot be allocated. */
int sf_network_forward(float *out, const float *x, const sf_chain_layer *layers, int n_layers,
                       int64_t B, float *even, float *odd, int batch_major_out, int n_threads);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEFAN_FANIN_H */
