/*
 * sparsefan: the kernel template, compiled once per CPU variant (see fanin_kernels.h).
 *
 * The including file defines, for its instruction set:
 *   SF_VARIANT        name suffix (generic, avx2, avx512)
 *   SF_ATTR           attributes of every function here (the target ISA)
 *   vf, VL            the vector type and its float lanes
 *   V_ZERO() V_SET1(a) V_LOAD(p) V_STORE(p, v) V_FMA(a, b, c) (= a * b + c) V_ADD(a, b)
 *   V_LOADN(p, n) V_STOREN(p, v, n)   the first n lanes (1 <= n <= VL); V_LOADN zero-fills
 *   V_RELU(v)         max(v, 0) keeping NaN;  V_HSUM(v) the sum of the lanes, in a fixed order
 *   SF_HSUM8_ADD(dst, v)  optional: dst[r] += the lane sum of v[r], r < 8, in a fixed order
 *   SF_T1             batch vectors per register tile of the gather pass when H == 1
 *   SF_TC, SF_OC      batch vectors x output channels per tile when H > 1
 *   SF_R1             weight-gradient rows (connection, channel) per tile when c_out == 1
 *   SF_RC, SF_PC      rows x output channels per weight-gradient tile when c_out > 1
 *
 * Register tiles: T x O accumulators live in registers across all the inputs of a unit and are
 * stored once (bias and ReLU fused). T, O and the masking of the last vector are compile-time
 * constants of each tile function (the SF_INLINE helpers are instantiated through switches), so
 * the accumulator arrays become registers. The batch tail (B not a multiple of VL) is the last
 * vector of a tile, loaded and stored with a lane mask.
 */
#include <stddef.h>
#include <stdint.h>

#define SF_CAT2(a, b) a##_##b
#define SF_CAT(a, b) SF_CAT2(a, b)
#define SF_FN(name) SF_CAT(name, SF_VARIANT)

#if defined(__GNUC__) || defined(__clang__)
#define SF_INLINE static inline __attribute__((always_inline)) SF_ATTR
#else
#define SF_INLINE static
#endif
#define SF_STATIC static SF_ATTR

#ifndef SF_PREFETCH_AHEAD
#define SF_PREFETCH_AHEAD 8
#endif
#if defined(__GNUC__) || defined(__clang__)
#define V_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define V_PREFETCH(p) ((void)(p))
#endif

#define SF_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define SF_TMAX SF_MAX2(SF_T1, SF_TC)
#define SF_RMAX SF_MAX2(SF_R1, SF_RC)
/* The masked-tile switches are written out to 8 vectors, the widest tile of every variant (the
 * check below keeps it so); clipping keeps the cases a narrower tile cannot reach in bounds. */
typedef char sf_tiles_fit_the_switches[(SF_T1 <= 8 && SF_TC <= 8) ? 1 : -1];
#define SF_TCLIP(n) ((n) <= SF_TMAX ? (n) : SF_TMAX)
#define SF_RCLIP(n) ((n) <= SF_RMAX ? (n) : SF_RMAX)

/* ------------------------------------------------------------------------------------------ */
/* gather-accumulate: forward pass and input gradient                                          */

/* One register tile: unit u, output channels [h0, h0 + O), batch [b0, b0 + T * VL) (the last
 * vector holding only nlast lanes when M). S: the table has slots (else slot(q) = q); G1: one
 * gathered channel. T, O, M, S and G1 are compile-time constants at every call. */
SF_INLINE void SF_FN(gather_tile)(const sf_gather_args *a, int64_t u, int64_t h0, int64_t b0,
                                  const int T, const int O, const int M, const int S,
                                  const int G1, int nlast)
{
    const int64_t G = G1 ? 1 : a->G, B = a->B, H = a->H;
    const int64_t wslot = a->wslot, wsg = a->wsg, wsh = a->wsh;
    const int64_t row_stride = G * B;
    const float *in = a->in + b0;
    const float *W = a->W + h0 * wsh;
    const int64_t *slots = a->slots;
    const int32_t *rows = a->rows;
    float *out = a->out + (u * H + h0) * B + b0;
    vf acc[SF_OC > 1 ? SF_OC : 1][SF_TMAX];

    if (a->bias != NULL) {
        for (int o = 0; o < O; ++o) {
            const vf bv = V_SET1(a->bias[u * H + h0 + o]);
            for (int t = 0; t < T; ++t)
                acc[o][t] = bv;
        }
    } else if (a->zero_init) {
        for (int o = 0; o < O; ++o)
            for (int t = 0; t < T; ++t)
                acc[o][t] = V_ZERO();
    } else {
        for (int o = 0; o < O; ++o)
            for (int t = 0; t < T; ++t)
                acc[o][t] = (M && t == T - 1) ? V_LOADN(out + o * B + t * VL, nlast)
                                              : V_LOAD(out + o * B + t * VL);
    }
    const int64_t q1 = a->ptr[u + 1];
    const int64_t q_pf = a->prefetch_end;
    for (int64_t q = a->ptr[u]; q < q1; ++q) {
        const float *xr = in + (int64_t)rows[q] * row_stride;
        const float *wq = W + (S ? slots[q] : q) * wslot;
        if (q + SF_PREFETCH_AHEAD < q_pf) {
            /* the rows a few connections ahead (across units) are random: fetch them early */
            const float *pr = in + (int64_t)rows[q + SF_PREFETCH_AHEAD] * row_stride;
            for (int64_t g = 0; g < G; ++g)
                for (int t = 0; t < T; ++t)
                    V_PREFETCH(pr + g * B + t * VL);
        }
        for (int64_t g = 0; g < G; ++g) {
            vf xv[SF_TMAX];
            for (int t = 0; t < T; ++t)
                xv[t] = (M && t == T - 1) ? V_LOADN(xr + g * B + t * VL, nlast)
                                          : V_LOAD(xr + g * B + t * VL);
            for (int o = 0; o < O; ++o) {
                const vf w = V_SET1(wq[g * wsg + o * wsh]);
                for (int t = 0; t < T; ++t)
                    acc[o][t] = V_FMA(w, xv[t], acc[o][t]);
            }
        }
    }
    for (int o = 0; o < O; ++o)
        for (int t = 0; t < T; ++t) {
            const vf v = a->relu ? V_RELU(acc[o][t]) : acc[o][t];
            if (M && t == T - 1)
                V_STOREN(out + o * B + t * VL, v, nlast);
            else
                V_STORE(out + o * B + t * VL, v);
        }
}

/* Tiles of O output channels: a full tile of TF vectors, or a masked tile of nv <= TF vectors. */
#define SF_GT(T, O, M, S, G1) SF_FN(gather_tile)(a, u, h0, b0, T, O, M, S, G1, nlast)
#define SF_DEFINE_GATHER(O, TF, TAG, S, G1)                                                    \
    SF_STATIC void SF_FN(gather_o##O##_##TAG##_s##S##_g##G1)(const sf_gather_args *a, int64_t u,       \
                                                     int64_t h0, int64_t b0, int masked,       \
                                                     int nv, int nlast)                        \
    {                                                                                          \
        if (!masked) {                                                                         \
            SF_GT(TF, O, 0, S, G1);                                                                   \
            return;                                                                            \
        }                                                                                      \
        switch (nv) {                                                                          \
        case 1: SF_GT(1, O, 1, S, G1); break;                                                         \
        case 2: if (2 <= TF) SF_GT(SF_TCLIP(2), O, 1, S, G1); break;                                  \
        case 3: if (3 <= TF) SF_GT(SF_TCLIP(3), O, 1, S, G1); break;                                  \
        case 4: if (4 <= TF) SF_GT(SF_TCLIP(4), O, 1, S, G1); break;                                  \
        case 5: if (5 <= TF) SF_GT(SF_TCLIP(5), O, 1, S, G1); break;                                  \
        case 6: if (6 <= TF) SF_GT(SF_TCLIP(6), O, 1, S, G1); break;                                  \
        case 7: if (7 <= TF) SF_GT(SF_TCLIP(7), O, 1, S, G1); break;                                  \
        case 8: if (8 <= TF) SF_GT(SF_TCLIP(8), O, 1, S, G1); break;                                  \
        default: break;                                                                        \
        }                                                                                      \
    }
#define SF_DEFINE_GATHER_SG(O, TF, TAG)                                                        \
    SF_DEFINE_GATHER(O, TF, TAG, 0, 0)                                                         \
    SF_DEFINE_GATHER(O, TF, TAG, 0, 1)                                                         \
    SF_DEFINE_GATHER(O, TF, TAG, 1, 0)                                                         \
    SF_DEFINE_GATHER(O, TF, TAG, 1, 1)

/* "one": H == 1, tiles of SF_T1 vectors; "blk": H > 1, tiles of SF_TC vectors x O channels
 * (O = 1 there is the last block when H is not a multiple of SF_OC) */
SF_DEFINE_GATHER_SG(1, SF_T1, one)
SF_DEFINE_GATHER_SG(1, SF_TC, blk)
#if SF_OC >= 2
SF_DEFINE_GATHER_SG(2, SF_TC, blk)
#endif
#if SF_OC >= 3
SF_DEFINE_GATHER_SG(3, SF_TC, blk)
#endif
#if SF_OC >= 4
SF_DEFINE_GATHER_SG(4, SF_TC, blk)
#endif

typedef void (*SF_FN(gather_fn))(const sf_gather_args *, int64_t, int64_t, int64_t, int, int,
                                 int);

#define SF_GATHER_ROW(O, TAG)                                                                  \
    {SF_FN(gather_o##O##_##TAG##_s0_g0), SF_FN(gather_o##O##_##TAG##_s0_g1),                   \
     SF_FN(gather_o##O##_##TAG##_s1_g0), SF_FN(gather_o##O##_##TAG##_s1_g1)}

/* One example, one channel: a dot product per unit over its connections, with four partial sums
 * (a one-lane batch tile would be one latency-bound chain of FMAs per unit). */
SF_STATIC void SF_FN(gather_b1)(const sf_gather_args *a, int64_t u0, int64_t u1)
{
    const float *in = a->in, *W = a->W;
    const int32_t *rows = a->rows;
    const int64_t *slots = a->slots;
    const int64_t wslot = a->wslot;
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t q0 = a->ptr[u], q1 = a->ptr[u + 1];
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
        int64_t q = q0;
        if (slots != NULL) {
            for (; q + 4 <= q1; q += 4) {
                s0 += W[slots[q] * wslot] * in[rows[q]];
                s1 += W[slots[q + 1] * wslot] * in[rows[q + 1]];
                s2 += W[slots[q + 2] * wslot] * in[rows[q + 2]];
                s3 += W[slots[q + 3] * wslot] * in[rows[q + 3]];
            }
            for (; q < q1; ++q)
                s0 += W[slots[q] * wslot] * in[rows[q]];
        } else {
            for (; q + 4 <= q1; q += 4) {
                s0 += W[q * wslot] * in[rows[q]];
                s1 += W[(q + 1) * wslot] * in[rows[q + 1]];
                s2 += W[(q + 2) * wslot] * in[rows[q + 2]];
                s3 += W[(q + 3) * wslot] * in[rows[q + 3]];
            }
            for (; q < q1; ++q)
                s0 += W[q * wslot] * in[rows[q]];
        }
        const float init = a->bias != NULL ? a->bias[u] : (a->zero_init ? 0.0f : a->out[u]);
        const float v = init + ((s0 + s1) + (s2 + s3));
        a->out[u] = (a->relu && v < 0.0f) ? 0.0f : v; /* NaN propagates */
    }
}

/* One example, several channels, contiguous weight rows (wsh == 1: the forward pass): for each
 * unit u in [u0, u1), output channels [h0, h0 + NV * VL) (the last vector holding nlast lanes)
 * accumulate x[row, g] * W[slot, g, h0:...] over the unit's (connection, channel) pairs. The pairs are dealt
 * round-robin to P sets of accumulators -- over the channels when G is a multiple of P, else over
 * the connections -- so that P * NV independent FMA chains hide the FMA latency (one chain per
 * vector would leave the core waiting: a single example has no batch to spread over). The sets
 * are added pairwise at the end, in a fixed order. NV and P are compile-time constants. */
SF_INLINE void SF_FN(b1h_block)(const sf_gather_args *a, int64_t u0, int64_t u1, int64_t h0,
                                const int NV, const int P, const int G1, int nlast)
{
    const int64_t G = G1 ? 1 : a->G, H = a->H, wslot = a->wslot, wsg = a->wsg;
    const int32_t *rows = a->rows;
    const int64_t *slots = a->slots;
    for (int64_t u = u0; u < u1; ++u) {
        float *out = a->out + u * H + h0;
        const float *init = a->bias != NULL ? a->bias + u * H + h0 : out;
        vf acc[4][4];
#define SF_B1_W(w, v) ((v) < NV - 1 ? V_LOAD((w) + (v) * VL) : V_LOADN((w) + (v) * VL, nlast))
        const int from_zero = a->bias == NULL && a->zero_init;
        for (int p = 0; p < P; ++p)
            for (int v = 0; v < NV; ++v)
                acc[p][v] = p > 0 || from_zero ? V_ZERO() : SF_B1_W(init, v);
        const int64_t q0 = a->ptr[u], q1 = a->ptr[u + 1];
        if (!G1 && G % P == 0) { /* deal the channels of each connection */
            for (int64_t q = q0; q < q1; ++q) {
                const float *xr = a->in + (int64_t)rows[q] * G;
                const float *wq = a->W + (slots != NULL ? slots[q] : q) * wslot + h0;
                for (int64_t g = 0; g < G; g += P)
                    for (int p = 0; p < P; ++p) {
                        const vf xv = V_SET1(xr[g + p]);
                        const float *w = wq + (g + p) * wsg;
                        for (int v = 0; v < NV; ++v)
                            acc[p][v] = V_FMA(xv, SF_B1_W(w, v), acc[p][v]);
                    }
            }
        } else { /* deal the connections (each with all its channels) */
            int64_t q = q0;
            for (; q + P <= q1; q += P)
                for (int p = 0; p < P; ++p) {
                    const float *xr = a->in + (int64_t)rows[q + p] * G;
                    const float *wq = a->W + (slots != NULL ? slots[q + p] : q + p) * wslot + h0;
                    for (int64_t g = 0; g < G; ++g) {
                        const vf xv = V_SET1(xr[g]);
                        for (int v = 0; v < NV; ++v)
                            acc[p][v] = V_FMA(xv, SF_B1_W(wq + g * wsg, v), acc[p][v]);
                    }
                }
            for (; q < q1; ++q) {
                const float *xr = a->in + (int64_t)rows[q] * G;
                const float *wq = a->W + (slots != NULL ? slots[q] : q) * wslot + h0;
                for (int64_t g = 0; g < G; ++g) {
                    const vf xv = V_SET1(xr[g]);
                    for (int v = 0; v < NV; ++v)
                        acc[0][v] = V_FMA(xv, SF_B1_W(wq + g * wsg, v), acc[0][v]);
                }
            }
        }
#undef SF_B1_W
        for (int v = 0; v < NV; ++v) {
            vf r = acc[0][v];
            if (P == 2)
                r = V_ADD(acc[0][v], acc[1][v]);
            else if (P == 4)
                r = V_ADD(V_ADD(acc[0][v], acc[1][v]), V_ADD(acc[2][v], acc[3][v]));
            if (a->relu)
                r = V_RELU(r);
            if (v < NV - 1)
                V_STORE(out + v * VL, r);
            else
                V_STOREN(out + v * VL, r, nlast);
        }
    }
}

/* One example, several channels: per unit, blocks of up to 4 * VL output channels. Strided
 * weights (wsh > 1: the input gradient) take a scalar loop. */
SF_STATIC void SF_FN(gather_b1h)(const sf_gather_args *a, int64_t u0, int64_t u1)
{
    const int64_t G = a->G, H = a->H;
    const int64_t wslot = a->wslot, wsg = a->wsg, wsh = a->wsh;
    const int32_t *rows = a->rows;
    const int64_t *slots = a->slots;
    const int64_t blk = 4 * (int64_t)VL;
    if (wsh == 1) { /* every unit has the same blocks: choose each block's tile once */
        for (int64_t h0 = 0; h0 < H; h0 += blk) {
            const int64_t nh = H - h0 < blk ? H - h0 : blk;
            const int nv = (int)((nh + VL - 1) / VL);
            const int nlast = (int)(nh - (int64_t)(nv - 1) * VL);
/* P x NV <= 8 independent chains; the channel loop compiled out when G == 1 */
#define SF_B1H(NV, P)                                                                           \
    (G == 1 ? SF_FN(b1h_block)(a, u0, u1, h0, NV, P, 1, nlast)                                  \
            : SF_FN(b1h_block)(a, u0, u1, h0, NV, P, 0, nlast))
            switch (nv) {
            case 1: SF_B1H(1, 4); break;
            case 2: SF_B1H(2, 4); break;
            case 3: SF_B1H(3, 2); break;
            default: SF_B1H(4, 2); break;
            }
#undef SF_B1H
        }
        return;
    }
    /* strided weights (the input gradient): a scalar loop */
    for (int64_t u = u0; u < u1; ++u) {
        for (int64_t h0 = 0; h0 < H; h0 += blk) {
            const int64_t nh = H - h0 < blk ? H - h0 : blk;
            float *out = a->out + u * H + h0;
            const float *init = a->bias != NULL ? a->bias + u * H + h0 : out;
            float acc[4 * 16];
            for (int64_t h = 0; h < nh; ++h)
                acc[h] = a->bias == NULL && a->zero_init ? 0.0f : init[h];
            for (int64_t q = a->ptr[u]; q < a->ptr[u + 1]; ++q) {
                const float *xr = a->in + (int64_t)rows[q] * G;
                const float *wq = a->W + (slots != NULL ? slots[q] : q) * wslot + h0 * wsh;
                for (int64_t g = 0; g < G; ++g)
                    for (int64_t h = 0; h < nh; ++h)
                        acc[h] += xr[g] * wq[g * wsg + h * wsh];
            }
            for (int64_t h = 0; h < nh; ++h)
                out[h] = (a->relu && acc[h] < 0.0f) ? 0.0f : acc[h]; /* NaN propagates */
        }
    }
}

SF_STATIC void SF_FN(gather)(const sf_gather_args *a, int64_t u0, int64_t u1, int64_t b0,
                             int64_t b1)
{
    /* row 0: H == 1; row O: O output channels of H > 1 */
    static const SF_FN(gather_fn) table[(SF_OC > 1 ? SF_OC : 1) + 1][4] = {
        SF_GATHER_ROW(1, one),
        SF_GATHER_ROW(1, blk),
#if SF_OC >= 2
        SF_GATHER_ROW(2, blk),
#endif
#if SF_OC >= 3
        SF_GATHER_ROW(3, blk),
#endif
#if SF_OC >= 4
        SF_GATHER_ROW(4, blk),
#endif
    };
    const int64_t H = a->H;
    if (a->B == 1) {
        if (H == 1 && a->G == 1)
            SF_FN(gather_b1)(a, u0, u1);
        else
            SF_FN(gather_b1h)(a, u0, u1);
        return;
    }
    const int TF = H == 1 ? SF_T1 : SF_TC;
    const int OB = H == 1 ? 1 : SF_OC;
    const int sg = (a->slots != NULL) * 2 + (a->G == 1);
    const int64_t tile = (int64_t)TF * VL;
    const int64_t n_full = (b1 - b0) / tile;
    const int64_t rest = (b1 - b0) - n_full * tile;
    const int nv = (int)((rest + VL - 1) / VL);
    const int nlast = (int)(rest - (int64_t)(nv - 1) * VL);
    for (int64_t u = u0; u < u1; ++u) {
        for (int64_t f = 0; f < n_full; ++f)
            for (int64_t h0 = 0; h0 < H; h0 += OB) {
                const int O = (int)(H - h0 < OB ? H - h0 : OB);
                table[H == 1 ? 0 : O][sg](a, u, h0, b0 + f * tile, 0, TF, VL);
            }
        if (rest > 0)
            for (int64_t h0 = 0; h0 < H; h0 += OB) {
                const int O = (int)(H - h0 < OB ? H - h0 : OB);
                table[H == 1 ? 0 : O][sg](a, u, h0, b0 + n_full * tile, 1, nv, nlast);
            }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* weight and bias gradients                                                                   */

/* dW[p, c, o] for R consecutive rows r = (p - p0) * c_in + c of unit j's block (starting at r0)
 * and O output channels from o0: R x O dot products over the batch, one vector accumulator each,
 * reduced once at the end in a fixed lane order. xr[] holds the R gathered rows; pf[] (n_pf of
 * them) the rows of the next block, fetched early when the input does not fit in L2. */
SF_INLINE void SF_FN(params_tile)(float *dWj, const float *dy, const float *const *xr,
                                  const float *const *pf, int n_pf, int64_t r0, int64_t o0,
                                  int64_t c_out, int64_t B, const int R, const int O)
{
    vf acc[SF_RMAX][SF_PC > 1 ? SF_PC : 1];
    for (int r = 0; r < R; ++r)
        for (int o = 0; o < O; ++o)
            acc[r][o] = V_ZERO();
    int64_t b = 0;
    for (; b + VL <= B; b += VL) {
        vf d[SF_PC > 1 ? SF_PC : 1];
        for (int o = 0; o < O; ++o)
            d[o] = V_LOAD(dy + o * B + b);
        for (int r = 0; r < R; ++r) {
            const vf xv = V_LOAD(xr[r] + b);
            for (int o = 0; o < O; ++o)
                acc[r][o] = V_FMA(xv, d[o], acc[r][o]);
        }
        for (int r = 0; r < n_pf; ++r)
            V_PREFETCH(pf[r] + b);
    }
    if (b < B) {
        const int n = (int)(B - b);
        vf d[SF_PC > 1 ? SF_PC : 1];
        for (int o = 0; o < O; ++o)
            d[o] = V_LOADN(dy + o * B + b, n);
        for (int r = 0; r < R; ++r) {
            const vf xv = V_LOADN(xr[r] + b, n);
            for (int o = 0; o < O; ++o)
                acc[r][o] = V_FMA(xv, d[o], acc[r][o]);
        }
    }
#ifdef SF_HSUM8_ADD
    if (R == 8 && O == 1 && c_out == 1) { /* 8 contiguous dW entries: one shuffle tree */
        vf col[8];
        for (int r = 0; r < 8; ++r)
            col[r] = acc[SF_RCLIP(r)][0];
        SF_HSUM8_ADD(dWj + r0, col);
        return;
    }
#endif
    for (int r = 0; r < R; ++r)
        for (int o = 0; o < O; ++o)
            dWj[(r0 + r) * c_out + o0 + o] += V_HSUM(acc[r][o]);
}

#define SF_PT(R, O) SF_FN(params_tile)(dWj, dy, xr, pf, n_pf, r0, o0, c_out, B, R, O)
#define SF_DEFINE_PARAMS(O, RF, TAG)                                                                \
    SF_STATIC void SF_FN(params_o##O##_##TAG)(float *dWj, const float *dy,                     \
                                              const float *const *xr, const float *const *pf,  \
                                              int n_pf, int64_t r0, int64_t o0, int nr,        \
                                              int64_t c_out, int64_t B)                        \
    {                                                                                          \
        switch (nr) {                                                                          \
        case 1: SF_PT(1, O); break;                                                            \
        case 2: if (2 <= RF) SF_PT(SF_RCLIP(2), O); break;                                     \
        case 3: if (3 <= RF) SF_PT(SF_RCLIP(3), O); break;                                     \
        case 4: if (4 <= RF) SF_PT(SF_RCLIP(4), O); break;                                     \
        case 5: if (5 <= RF) SF_PT(SF_RCLIP(5), O); break;                                     \
        case 6: if (6 <= RF) SF_PT(SF_RCLIP(6), O); break;                                     \
        case 7: if (7 <= RF) SF_PT(SF_RCLIP(7), O); break;                                     \
        case 8: if (8 <= RF) SF_PT(SF_RCLIP(8), O); break;                                     \
        default: break;                                                                        \
        }                                                                                      \
    }

SF_DEFINE_PARAMS(1, SF_R1, one)
SF_DEFINE_PARAMS(1, SF_RC, blk)
#if SF_PC >= 2
SF_DEFINE_PARAMS(2, SF_RC, blk)
#endif
#if SF_PC >= 3
SF_DEFINE_PARAMS(3, SF_RC, blk)
#endif
#if SF_PC >= 4
SF_DEFINE_PARAMS(4, SF_RC, blk)
#endif

SF_INLINE float SF_FN(sum)(const float *v, int64_t B)
{
    vf s = V_ZERO();
    int64_t b = 0;
    for (; b + VL <= B; b += VL)
        s = V_ADD(s, V_LOAD(v + b));
    if (b < B)
        s = V_ADD(s, V_LOADN(v + b, (int)(B - b)));
    return V_HSUM(s);
}

/* c_in == c_out == 1, the connections left over when a unit's fan-in is not a multiple of SF_R1:
 * dW[p_r] += x[indices[p_r]] . dy[unit of p_r] for R connections that may belong to several
 * units (so that k = 9 is one block of 8 per unit plus a shared block, not a latency-bound block
 * of 1). The lane sums follow V_HSUM's order, so the result does not depend on the grouping. */
SF_INLINE void SF_FN(flat_tile)(float *const *dst, const float *const *xr,
                                const float *const *dr, int64_t B, const int R)
{
    vf acc[SF_RMAX];
    for (int r = 0; r < R; ++r)
        acc[r] = V_ZERO();
    int64_t b = 0;
    for (; b + VL <= B; b += VL)
        for (int r = 0; r < R; ++r)
            acc[r] = V_FMA(V_LOAD(xr[r] + b), V_LOAD(dr[r] + b), acc[r]);
    if (b < B) {
        const int n = (int)(B - b);
        for (int r = 0; r < R; ++r)
            acc[r] = V_FMA(V_LOADN(xr[r] + b, n), V_LOADN(dr[r] + b, n), acc[r]);
    }
    for (int r = 0; r < R; ++r)
        *dst[r] += V_HSUM(acc[r]);
}

#define SF_FT(R) SF_FN(flat_tile)(dst, xr, dr, B, R)
SF_STATIC void SF_FN(flat_block)(float *const *dst, const float *const *xr,
                                 const float *const *dr, int64_t B, int nr)
{
    switch (nr) {
    case 1: SF_FT(1); break;
    case 2: SF_FT(SF_RCLIP(2)); break;
    case 3: SF_FT(SF_RCLIP(3)); break;
    case 4: SF_FT(SF_RCLIP(4)); break;
    case 5: SF_FT(SF_RCLIP(5)); break;
    case 6: SF_FT(SF_RCLIP(6)); break;
    case 7: SF_FT(SF_RCLIP(7)); break;
    case 8: SF_FT(SF_RCLIP(8)); break;
    default: break;
    }
}

/* Weight gradients of rows [j0, j1) when c_in == c_out == 1: per unit, blocks of SF_R1 connections
 * sharing one dy row; the leftovers of consecutive units are pooled into shared blocks. */
SF_INLINE void SF_FN(params_flat)(float *dW, const float *dy, const float *x,
                                  const int64_t *indptr, const int32_t *indices, int64_t j0,
                                  int64_t j1, int64_t B, int prefetch)
{
    const float *xr[SF_RMAX], *pf[SF_RMAX], *lx[SF_RMAX], *ld[SF_RMAX];
    float *lw[SF_RMAX];
    int n_left = 0;
    for (int64_t j = j0; j < j1; ++j) {
        const float *dyj = dy + j * B;
        const int64_t pe = indptr[j + 1];
        int64_t p = indptr[j];
        for (; p + SF_R1 <= pe; p += SF_R1) {
            int n_pf = 0;
            for (int r = 0; r < SF_R1; ++r)
                xr[r] = x + (int64_t)indices[p + r] * B;
            if (prefetch)
                for (int64_t q = p + SF_R1; q < indptr[j1] && n_pf < SF_R1; ++q)
                    pf[n_pf++] = x + (int64_t)indices[q] * B;
            SF_FN(params_o1_one)(dW + p, dyj, xr, pf, n_pf, 0, 0, SF_R1, 1, B);
        }
        for (; p < pe; ++p) {
            lx[n_left] = x + (int64_t)indices[p] * B;
            ld[n_left] = dyj;
            lw[n_left] = dW + p;
            if (++n_left == SF_R1) {
                SF_FN(flat_block)(lw, lx, ld, B, n_left);
                n_left = 0;
            }
        }
    }
    if (n_left > 0)
        SF_FN(flat_block)(lw, lx, ld, B, n_left);
}

/* The gathered rows r0 .. r0 + n - 1 of unit j's weight-gradient block. */
SF_INLINE void SF_FN(block_rows)(const float **rows, const float *x, const int32_t *idx,
                                 int64_t r0, int n, int64_t c_in, int64_t B)
{
    for (int r = 0; r < n; ++r) {
        const int64_t rr = r0 + r;
        rows[r] = x + ((int64_t)idx[rr / c_in] * c_in + rr % c_in) * B;
    }
}

/* Unit j's weight-gradient block: its connections' rows (connection, input channel) x c_out. */
#define SF_UNIT_DW(j) (dW + indptr[(j)] * c_in * c_out)

/* Weight gradients with many output channels: dW_j = X_j (rows x B) @ dY_j^T (B x c_out) is a
 * small GEMM per unit whose contraction runs over the batch, the contiguous dimension of both
 * operands. Dot products would end in one horizontal sum per dW entry (as costly as the FMAs
 * at batch 128), so instead a chunk of dY_j is transposed to (batch, channels) on the stack and
 * each tile accumulates outer products: a broadcast x[r, b] times a vector of dY^T[b, :]. No
 * horizontal sums; each chunk's tile is added to dW once, in a fixed order. */
#ifndef SF_OUTER_MIN_COUT /* the outer-product path from a full vector of output channels */
#define SF_OUTER_MIN_COUT (VL > 8 ? VL : 8) /* (measured: half vectors lose to the dot products) */
#endif
#ifndef SF_OUTER_MIN_B
#define SF_OUTER_MIN_B 16 /* ... and this batch size */
#endif
#ifndef SF_OUTER_BC
#define SF_OUTER_BC 64 /* batch columns per transposed chunk */
#endif
#define SF_OUTER_OB (2 * VL) /* output channels per block: two vectors */

/* dW rows r0 .. r0 + R - 1 of unit j, channels o0 .. (NV vectors, the last with nlast lanes)
 * += sum over the chunk's nb columns of xr[r][b] * dyT[b][:]. R * NV <= 8 chains. */
SF_INLINE void SF_FN(outer_tile)(float *dWj, const float *const *xr, const float *dyT,
                                 int64_t nb, int64_t c_out, int64_t r0, int64_t o0, const int R,
                                 const int NV, int nlast)
{
    vf acc[8][2];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v)
            acc[r][v] = V_ZERO();
    for (int64_t b = 0; b < nb; ++b) {
        vf d[2];
        for (int v = 0; v < NV; ++v)
            d[v] = v == NV - 1 ? V_LOADN(dyT + b * SF_OUTER_OB + v * VL, nlast)
                               : V_LOAD(dyT + b * SF_OUTER_OB + v * VL);
        for (int r = 0; r < R; ++r) {
            const vf xv = V_SET1(xr[r][b]);
            for (int v = 0; v < NV; ++v)
                acc[r][v] = V_FMA(xv, d[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
            float *w = dWj + (r0 + r) * c_out + o0 + v * VL;
            if (v == NV - 1)
                V_STOREN(w, V_ADD(V_LOADN(w, nlast), acc[r][v]), nlast);
            else
                V_STORE(w, V_ADD(V_LOAD(w), acc[r][v]));
        }
}

#define SF_OT(R, NV) SF_FN(outer_tile)(dWj, xr, dyT, nb, c_out, r0, o0, R, NV, nlast)
SF_STATIC void SF_FN(outer_block)(float *dWj, const float *const *xr, const float *dyT,
                                  int64_t nb, int64_t c_out, int64_t r0, int64_t o0, int nr,
                                  int nv, int nlast)
{
    if (nv == 2)
        switch (nr) {
        case 1: SF_OT(1, 2); break;
        case 2: SF_OT(2, 2); break;
        case 3: SF_OT(3, 2); break;
        default: SF_OT(4, 2); break;
        }
    else
        switch (nr) {
        case 1: SF_OT(1, 1); break;
        case 2: SF_OT(2, 1); break;
        case 3: SF_OT(3, 1); break;
        case 4: SF_OT(4, 1); break;
        case 5: SF_OT(5, 1); break;
        case 6: SF_OT(6, 1); break;
        case 7: SF_OT(7, 1); break;
        default: SF_OT(8, 1); break;
        }
}

SF_STATIC void SF_FN(params_outer)(float *dW, const float *dy, const float *x,
                                   const int64_t *indptr, const int32_t *indices, int64_t j0,
                                   int64_t j1, int64_t c_in, int64_t c_out, int64_t B)
{
    float dyT[SF_OUTER_BC * SF_OUTER_OB];
    const float *rows[8], *xr[8];
    for (int64_t j = j0; j < j1; ++j) {
        const float *dyj = dy + j * c_out * B;
        const int64_t R = (indptr[j + 1] - indptr[j]) * c_in; /* rows of unit j's dW block */
        const int32_t *idx = indices + indptr[j];
        float *dWj = SF_UNIT_DW(j);
        for (int64_t o0 = 0; o0 < c_out; o0 += SF_OUTER_OB) {
            const int64_t no = c_out - o0 < SF_OUTER_OB ? c_out - o0 : SF_OUTER_OB;
            const int nv = (int)((no + VL - 1) / VL);
            const int nlast = (int)(no - (int64_t)(nv - 1) * VL);
            const int RT = nv == 2 ? 4 : 8;
            for (int64_t b0 = 0; b0 < B; b0 += SF_OUTER_BC) {
                const int64_t nb = B - b0 < SF_OUTER_BC ? B - b0 : SF_OUTER_BC;
                for (int64_t o = 0; o < no; ++o) { /* dyT[b][o] = dy[j, o0 + o, b0 + b] */
                    const float *src = dyj + (o0 + o) * B + b0;
                    for (int64_t b = 0; b < nb; ++b)
                        dyT[b * SF_OUTER_OB + o] = src[b];
                }
                for (int64_t r0 = 0; r0 < R; r0 += RT) {
                    const int nr = (int)(R - r0 < RT ? R - r0 : RT);
                    SF_FN(block_rows)(rows, x, idx, r0, nr, c_in, B);
                    for (int r = 0; r < nr; ++r)
                        xr[r] = rows[r] + b0;
                    SF_FN(outer_block)(dWj, xr, dyT, nb, c_out, r0, o0, nr, nv, nlast);
                }
            }
        }
    }
}

SF_STATIC void SF_FN(params)(float *dW, float *db, const float *dy, const float *x,
                             const int64_t *indptr, const int32_t *indices, int64_t j0,
                             int64_t j1, int64_t c_in, int64_t c_out, int64_t B, int prefetch)
{
    const int RF = c_out == 1 ? SF_R1 : SF_RC;
    const int64_t OB = c_out == 1 ? 1 : SF_PC;
    const float *xr[SF_RMAX], *pf[SF_RMAX];
    if (db != NULL)
        for (int64_t j = j0; j < j1; ++j)
            for (int64_t o = 0; o < c_out; ++o)
                db[j * c_out + o] += SF_FN(sum)(dy + (j * c_out + o) * B, B);
    if (B == 1) { /* one example: each dW entry is a single product, an outer product per row */
        for (int64_t j = j0; j < j1; ++j)
            for (int64_t p = indptr[j]; p < indptr[j + 1]; ++p)
                for (int64_t c = 0; c < c_in; ++c) {
                    const float xv = x[(int64_t)indices[p] * c_in + c];
                    for (int64_t o = 0; o < c_out; ++o)
                        dW[(p * c_in + c) * c_out + o] += xv * dy[j * c_out + o];
                }
        return;
    }
    if (c_in == 1 && c_out == 1) {
        SF_FN(params_flat)(dW, dy, x, indptr, indices, j0, j1, B, prefetch);
        return;
    }
    if (c_out >= SF_OUTER_MIN_COUT && B >= SF_OUTER_MIN_B) {
        SF_FN(params_outer)(dW, dy, x, indptr, indices, j0, j1, c_in, c_out, B);
        return;
    }
    for (int64_t j = j0; j < j1; ++j) {
        const float *dyj = dy + j * c_out * B;
        const int64_t R = (indptr[j + 1] - indptr[j]) * c_in; /* rows of unit j's dW block */
        const int32_t *idx = indices + indptr[j];
        float *dWj = SF_UNIT_DW(j);
        for (int64_t o0 = 0; o0 < c_out; o0 += OB) {
            const int O = (int)(c_out - o0 < OB ? c_out - o0 : OB);
            for (int64_t r0 = 0; r0 < R; r0 += RF) {
                const int nr = (int)(R - r0 < RF ? R - r0 : RF);
                int n_pf = 0;
                SF_FN(block_rows)(xr, x, idx, r0, nr, c_in, B);
                if (prefetch) {
                    /* the next block of this unit, or the first of the next unit */
                    if (r0 + nr < R) {
                        n_pf = (int)(R - r0 - nr < RF ? R - r0 - nr : RF);
                        SF_FN(block_rows)(pf, x, idx, r0 + nr, n_pf, c_in, B);
                    } else if (j + 1 < j1) {
                        const int64_t Rn = (indptr[j + 2] - indptr[j + 1]) * c_in;
                        n_pf = (int)(Rn < RF ? Rn : RF);
                        SF_FN(block_rows)(pf, x, indices + indptr[j + 1], 0, n_pf, c_in, B);
                    }
                }
                const float *dyo = dyj + o0 * B;
                switch (O) {
                case 1:
                    if (RF == SF_R1)
                        SF_FN(params_o1_one)(dWj, dyo, xr, pf, n_pf, r0, o0, nr, c_out, B);
                    else
                        SF_FN(params_o1_blk)(dWj, dyo, xr, pf, n_pf, r0, o0, nr, c_out, B);
                    break;
#if SF_PC >= 2
                case 2: SF_FN(params_o2_blk)(dWj, dyo, xr, pf, n_pf, r0, o0, nr, c_out, B); break;
#endif
#if SF_PC >= 3
                case 3: SF_FN(params_o3_blk)(dWj, dyo, xr, pf, n_pf, r0, o0, nr, c_out, B); break;
#endif
#if SF_PC >= 4
                case 4: SF_FN(params_o4_blk)(dWj, dyo, xr, pf, n_pf, r0, o0, nr, c_out, B); break;
#endif
                default: break;
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* layout change                                                                               */

#ifndef SF_TRANSPOSE_BLOCK
#define SF_TRANSPOSE_BLOCK 32
#endif

#ifdef SF_HAVE_AVX
/* out[k][i] = in[i][k] for an 8 x 8 block: eight row loads, three shuffle stages, eight stores */
SF_INLINE void SF_FN(transpose8)(float *out, int64_t ld_out, const float *in, int64_t ld_in)
{
    const __m256 r0 = _mm256_loadu_ps(in + 0 * ld_in), r1 = _mm256_loadu_ps(in + 1 * ld_in);
    const __m256 r2 = _mm256_loadu_ps(in + 2 * ld_in), r3 = _mm256_loadu_ps(in + 3 * ld_in);
    const __m256 r4 = _mm256_loadu_ps(in + 4 * ld_in), r5 = _mm256_loadu_ps(in + 5 * ld_in);
    const __m256 r6 = _mm256_loadu_ps(in + 6 * ld_in), r7 = _mm256_loadu_ps(in + 7 * ld_in);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(out + 0 * ld_out, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(out + 1 * ld_out, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(out + 2 * ld_out, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(out + 3 * ld_out, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(out + 4 * ld_out, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(out + 5 * ld_out, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(out + 6 * ld_out, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(out + 7 * ld_out, _mm256_permute2f128_ps(s3, s7, 0x31));
}
#define SF_TRANSPOSE8 SF_FN(transpose8)
#endif

/* out[c][r] = in[r][c] for r in [r0, r1): blocks of SF_TRANSPOSE_BLOCK^2, each through the
 * variant's small in-register transpose when it has one (SF_TRANSPOSE8). */
SF_STATIC void SF_FN(transpose)(float *out, const float *in, int64_t rows, int64_t cols,
                                int64_t r0, int64_t r1)
{
    const int64_t TB = SF_TRANSPOSE_BLOCK;
    for (int64_t rb = r0; rb < r1; rb += TB) {
        const int64_t re = rb + TB < r1 ? rb + TB : r1;
        for (int64_t cb = 0; cb < cols; cb += TB) {
            const int64_t ce = cb + TB < cols ? cb + TB : cols;
            int64_t r = rb;
#ifdef SF_TRANSPOSE8
            for (; r + 8 <= re; r += 8) {
                int64_t c = cb;
                for (; c + 8 <= ce; c += 8)
                    SF_TRANSPOSE8(out + c * rows + r, rows, in + r * cols + c, cols);
                for (; c < ce; ++c)
                    for (int64_t i = r; i < r + 8; ++i)
                        out[c * rows + i] = in[i * cols + c];
            }
#endif
            for (int64_t c = cb; c < ce; ++c)
                for (int64_t i = r; i < re; ++i)
                    out[c * rows + i] = in[i * cols + c];
        }
    }
}

const sf_kernel_table SF_CAT(sf_kernels, SF_VARIANT) = {
    SF_VARIANT_NAME,
    SF_FN(gather),
    SF_FN(params),
    SF_FN(transpose),
};
