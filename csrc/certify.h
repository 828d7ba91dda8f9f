/* Certificates of mean-logits predictions from precomputed constants (sparsefan.certify).
 *
 *   C = classes, B = batch, R = the largest L0 radius tabulated
 *   S    (C, B)        mean logits, class-major: S[c * B + b] (float64)
 *   K    (C, C)        K[y * C + c] bounds the L2 Lipschitz constant of S_y - S_c
 *   cum  (C, C, R + 1) cum[(y * C + c) * (R + 1) + r] = the sum of the r largest per-input
 *                      influence bounds of S_y - S_c (cum[..., 0] = 0, nondecreasing in r)
 *
 * For each example: pred = argmax_c S_c (ties to the lowest class);
 * r2 = min_{c != pred} (S_pred - S_c) / K[pred, c] (INFINITY with one class; 0 at a tie);
 * r0 = the largest r <= R with S_pred - S_c - cum[pred, c, r] > 0 for every c != pred
 *      (>= 0 suffices when pred < c, as ties go to the lower class).
 * Work is O(C log R) per example; the caller validated every shape. */
#ifndef SPARSEFAN_CERTIFY_H
#define SPARSEFAN_CERTIFY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void sf_certify_mean_logits(int64_t *pred, double *r2, int64_t *r0, const double *S,
                            int64_t C, int64_t B, const double *K, const double *cum,
                            int64_t R);

#ifdef __cplusplus
}
#endif

#endif /* SPARSEFAN_CERTIFY_H */
