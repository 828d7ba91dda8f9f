/*
 * sparsefan: the generic int8 kernel variant, plain C for any CPU, on the packed layouts of
 * int8.h. The float operations after each sum are written out one by one as in
 * csrc/runtime/sf_runtime.c.
 */
#include "int8_kernels.h"

SF_I8_NO_CONTRACT

/* v = (float)acc * m; v = v + b; ReLU; then the int8 output or the float logit. */
static void requant_store(const sf_i8_layer *L, const sf_i8_io *io, int64_t e, int64_t j,
                          int64_t o, int32_t acc)
{
    const int64_t jo = j * L->c_out + o;
    float v = (float)acc * L->multiplier[jo];
    v = v + L->bias[jo];
    if (L->relu && v < 0.0f)
        v = 0.0f;
    if (io->yq != NULL)
        io->yq[e * io->yq_stride + jo] = sf_i8_quantize1(v * L->out_inv_scale);
    else
        io->yf[e + jo * io->yf_stride] = v;
}

/* SF_I8_WIDE: acc[o] += sum_i w[group t][block b][o % 8][i] * xg[4 t + i] */
static void unit_wide(const sf_i8_layer *L, const sf_i8_io *io, int64_t e, int64_t j)
{
    const int64_t R4 = sf_i8_gather(L, j, io->x + e * io->x_stride, io->xg, 4);
    const int64_t G = R4 / 4, co = L->c_out, NB = (co + 7) / 8;
    const int8_t *wj = L->w + L->wofs[j];
    const int8_t *xg = io->xg;
    for (int64_t b0 = 0; b0 < NB; b0 += 4) {
        const int64_t nb = NB - b0 < 4 ? NB - b0 : 4;
        const int8_t *wt = wj + b0 * G * 32;
        int32_t acc[32] = {0};
        for (int64_t t = 0; t < G; ++t) {
            const int32_t x0 = xg[4 * t], x1 = xg[4 * t + 1], x2 = xg[4 * t + 2],
                          x3 = xg[4 * t + 3];
            const int8_t *w = wt + t * nb * 32;
            for (int64_t k = 0; k < nb * 8; ++k)
                acc[k] += w[4 * k] * x0 + w[4 * k + 1] * x1 + w[4 * k + 2] * x2
                          + w[4 * k + 3] * x3;
        }
        for (int64_t k = 0; k < nb * 8 && b0 * 8 + k < co; ++k)
            requant_store(L, io, e, j, b0 * 8 + k, acc[k]);
    }
}

/* SF_I8_DOT: acc[o] = sum_r w[o][r] * xg[r] */
static void unit_dot(const sf_i8_layer *L, const sf_i8_io *io, int64_t e, int64_t j)
{
    const int64_t R32 = sf_i8_gather(L, j, io->x + e * io->x_stride, io->xg, 32);
    const int8_t *wj = L->w + L->wofs[j];
    const int8_t *xg = io->xg;
    for (int64_t o = 0; o < L->c_out; ++o) {
        const int8_t *w = wj + o * R32;
        int32_t acc = 0;
        for (int64_t r = 0; r < R32; ++r)
            acc += (int32_t)w[r] * (int32_t)xg[r];
        requant_store(L, io, e, j, o, acc);
    }
}

static void units_generic(const sf_i8_layer *L, const sf_i8_io *io, int64_t j0, int64_t j1)
{
    for (int64_t j = j0; j < j1; ++j)
        for (int64_t e = 0; e < io->E; ++e) {
            if (L->layout == SF_I8_WIDE)
                unit_wide(L, io, e, j);
            else
                unit_dot(L, io, e, j);
        }
}

static void quantize_generic(int8_t *q, const float *x, int64_t n, float inv)
{
    for (int64_t i = 0; i < n; ++i)
        q[i] = sf_i8_quantize1(x[i] * inv);
}

const sf_i8_kernel_table sf_i8_kernels_generic = {"generic", units_generic, quantize_generic};
