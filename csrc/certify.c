/* Certificates of mean-logits predictions: see certify.h. Readable twin:
 * sparsefan.certify.radius_from_margins (L2) and _radius_from_costs (L0). */
#include "certify.h"

#include <math.h>

/* The largest r in 0..R with cum[r] < m (cum[r] <= m when ties count as wins). cum[0] = 0. */
static int64_t last_below(const double *cum, int64_t R, double m, int tie_wins)
{
    int64_t lo = 0, hi = R; /* invariant: cum[lo] passes; the answer lies in lo..hi */
    if (!(tie_wins ? cum[0] <= m : cum[0] < m))
        return -1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        int pass = tie_wins ? cum[mid] <= m : cum[mid] < m;
        if (pass)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

void sf_certify_mean_logits(int64_t *pred, double *r2, int64_t *r0, const double *S,
                            int64_t C, int64_t B, const double *K, const double *cum,
                            int64_t R)
{
    for (int64_t b = 0; b < B; b++) {
        int64_t y = 0;
        for (int64_t c = 1; c < C; c++)
            if (S[c * B + b] > S[y * B + b])
                y = c;
        double sy = S[y * B + b], best2 = INFINITY;
        int64_t best0 = R;
        for (int64_t c = 0; c < C; c++) {
            if (c == y)
                continue;
            double m = sy - S[c * B + b]; /* >= 0; 0 only at a tie lost by c (y < c) */
            double k = K[y * C + c];
            double r = k > 0 ? m / k : (m > 0 || y < c ? INFINITY : 0.0);
            if (r < best2)
                best2 = r;
            int64_t l0 = last_below(cum + (y * C + c) * (R + 1), R, m, y < c);
            if (l0 < best0)
                best0 = l0;
        }
        pred[b] = y;
        r2[b] = best2 > 0 ? best2 : 0.0;
        r0[b] = best0 > 0 ? best0 : 0;
    }
}
