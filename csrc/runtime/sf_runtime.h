/*
 * sparsefan standalone runtime: runs an exported fan-in network on one example.
 *
 * Pure C99 for microcontrollers: no malloc, no stdio, no OpenMP, no threads. The caller owns all
 * memory (input, output and a scratch area). The only libm functions used are expf and logf, by
 * the mean_prob aggregation alone; they are referenced in any case, so link with -lm.
 *
 * `sparsefan export --format c` writes NAME.h / NAME.c holding a model's tables as const arrays
 * and one sf_model descriptor; NAME_predict() and friends call the functions below. This file
 * and sf_runtime.c ship inside the Python package, and the export copies them next to NAME.c, so
 * the code a device runs is the code the tests compile.
 *
 * Why not csrc/fanin.c: those kernels run batches in the feature-major layout with OpenMP and
 * 64-bit index tables; here a model is one example at a time, with index tables stored in the
 * smallest integer type that holds them, and with an int8 path.
 *
 * Shape legend
 *   n_in   input units,  c_in  input channels   (the first layer has c_in = 1)
 *   n_out  output units, c_out output channels
 *   nnz    connections = indptr[n_out]
 *   M      output units of the last layer, C classes (= the last layer's c_out)
 *
 * Layouts (row-major, contiguous)
 *   activations  [unit][channel]
 *   weight       [nnz][c_in][c_out]   the block of connection p (row j owns p in
 *                                      indptr[j] .. indptr[j+1])
 *   bias         [n_out][c_out]
 *   logits       [M][C]               every output unit's class scores
 *   scores       [C]                  the aggregate: mean logits, log mean probability, or vote
 *                                      fraction; the prediction is its argmax (ties -> lowest)
 *
 * int8 models: weights are symmetric int8 with one scale per (output unit, output channel);
 * activations are int8 with one scale per layer input, calibrated in Python. A layer
 * accumulates int8 x int8 products in int32, then
 *     y = (float)acc * multiplier[j][o] + bias[j][o]     (multiplier = input scale x weight scale)
 * applies the activation, and quantizes y for the next layer with round-half-away-from-zero,
 * clamped to [-127, 127]. The last layer's y are the float logits.
 */
#ifndef SF_RUNTIME_H
#define SF_RUNTIME_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes (class-returning functions return a class >= 0 or one of these).
 *
 * Every entry point makes all its checks before any work, in this order: NULL arguments,
 * scratch alignment, the descriptor (and the certificates), then the input's values. On an
 * error nothing is written to the outputs or the scratch area.
 *
 * Non-finite inputs: an input value that is NaN (any payload or sign), +Inf or -Inf makes every
 * entry point (sf_logits, sf_predict, sf_classify, sf_predict_certified; float32 and int8
 * models alike) return SF_ERR_NONFINITE, as sparsefan's Python engine raises ValueError. The
 * test reads the float's bits, so it holds under -ffast-math too. Finite inputs are accepted
 * whatever their magnitude: a huge one may still overflow to infinite scores, as in the engine.
 *
 * Descriptors: the runtime checks the descriptor's shapes, index widths and every pointer it
 * dereferences (SF_ERR_MODEL), and computes every size in size_t with overflow checks
 * (SF_ERR_SIZE: a size overflows size_t, or the scratch exceeds UINT32_MAX bytes). It trusts
 * the tables' contents, as it cannot see their lengths: indptr has n_out + 1 entries,
 * non-decreasing from 0; every index is below n_in; a weight table holds indptr[n_out] blocks
 * of [c_in][c_out]. */
#define SF_OK 0
#define SF_ERR_NULL (-1)      /* a pointer argument is NULL */
#define SF_ERR_ALIGN (-2)     /* scratch is not aligned for float (4 bytes) */
#define SF_ERR_MODEL (-3)     /* the model descriptor (or certificates) is inconsistent,
                                 or one of its table pointers is NULL */
#define SF_ERR_NONFINITE (-4) /* an input value is NaN, +Inf or -Inf */
#define SF_ERR_SIZE (-5)      /* a size the descriptor implies overflows (see above) */

/* Aggregations (sparsefan.aggregate). */
#define SF_MEAN_LOGITS 0
#define SF_MEAN_PROB 1
#define SF_VOTE 2

/* One FanIn layer. Index tables hold index_bytes-wide unsigned integers (1, 2 or 4). */
typedef struct {
    uint32_t n_in, n_out, c_in, c_out;
    uint32_t relu;              /* 1: max(0, .) after the bias */
    uint32_t indptr_bytes;      /* width of indptr entries: 1, 2 or 4 */
    uint32_t index_bytes;       /* width of indices entries: 1, 2 or 4 */
    const void *indptr;         /* [n_out + 1] */
    const void *indices;        /* [nnz], each in [0, n_in) */
    const float *bias;          /* [n_out][c_out] */
    const float *weight;        /* float32 models: [nnz][c_in][c_out]; NULL in int8 models */
    const int8_t *qweight;      /* int8 models: [nnz][c_in][c_out]; NULL in float32 models */
    const float *multiplier;    /* int8 models: [n_out][c_out] */
    float out_inv_scale;        /* int8 models: 1 / scale of this layer's output (not the last) */
} sf_layer;

typedef struct {
    uint32_t n_layers;
    uint32_t n_in;              /* inputs per example (floats) */
    uint32_t n_units;           /* M */
    uint32_t n_classes;         /* C */
    uint32_t aggregate;         /* SF_MEAN_LOGITS, SF_MEAN_PROB or SF_VOTE */
    uint32_t quantized;         /* 0: float32, 1: int8 */
    float in_inv_scale;         /* int8 models: 1 / scale of the input */
    uint32_t scratch_bytes;     /* what sf_scratch_bytes() computes, kept for checking */
    const sf_layer *layers;     /* [n_layers] */
} sf_model;

/* Bytes of scratch memory the model needs; 0 if the descriptor is inconsistent or its sizes
 * overflow (the entry points below then return SF_ERR_MODEL or SF_ERR_SIZE, telling which):
 *   float32 models: two activation buffers used in turn, then C floats for the scores;
 *   int8 models:    the float logits [M][C], C floats for the scores, then two int8 buffers.
 * The scratch pointer passed below must be aligned for float (4 bytes). */
uint32_t sf_scratch_bytes(const sf_model *model);

/* logits[M][C] = every output unit's class scores for one example input[n_in].
 * Returns SF_OK or SF_ERR_* (SF_ERR_NONFINITE for a NaN or infinite input value). */
int sf_logits(const sf_model *model, const float *input, float *logits, void *scratch);

/* scores[C] = the aggregate of the logits for one example input[n_in].
 * Returns SF_OK or SF_ERR_* (SF_ERR_NONFINITE for a NaN or infinite input value). */
int sf_predict(const sf_model *model, const float *input, float *scores, void *scratch);

/* The predicted class (argmax of the scores, ties -> lowest), or a negative SF_ERR_* code
 * (SF_ERR_NONFINITE for a NaN or infinite input value). */
int sf_classify(const sf_model *model, const float *input, void *scratch);

/* The constants of the certificates of a float32 mean_logits model, computed by sparsefan from
 * its weights at export time (sparsefan.certify.certificate_tables) and rounded up:
 *   K[y][c]       bounds the L2 Lipschitz constant of the margin S_y - S_c of mean logits;
 *   cum[y][c][r]  the sum of the r largest per-pixel influence bounds of that margin, r = 0..R. */
typedef struct {
    uint32_t n_classes;         /* C, as the model's */
    uint32_t max_l0;            /* R, at most INT32_MAX */
    const float *K;             /* [C][C] */
    const float *cum;           /* [C][C][R + 1] */
} sf_certificates;

/* The predicted class of input[n_in] with its certificates: no perturbation of L2 norm below
 * *l2_radius, and no change of at most *l0_radius pixels (inputs in [0, 1]), changes the class.
 * As sparsefan's Network.predict_certified, to float32 rounding. Returns SF_OK or SF_ERR_*
 * (SF_ERR_MODEL for an int8 or non-mean_logits model, or certificates of another shape;
 * SF_ERR_NONFINITE for a NaN or infinite input value). */
int sf_predict_certified(const sf_model *model, const sf_certificates *cert, const float *input,
                         int32_t *label, float *l2_radius, int32_t *l0_radius, void *scratch);

#ifdef __cplusplus
}
#endif

#endif /* SF_RUNTIME_H */
