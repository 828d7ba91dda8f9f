/*
 * sparsefan: the gather-accumulate tiles (forward pass and input gradient).
 * Part of the kernel template: included by fanin_simd.h only, once per CPU variant.
 */
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
    const int relu = a->relu; /* read before the stores: vector stores may alias *a */
    const float *mask = a->mask != NULL ? a->mask + ((u - a->out_unit0) * H + h0) * B + b0 : NULL;
    float *out = a->out + ((u - a->out_unit0) * H + h0) * B + b0;
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
                for (int t = 0; t < T; t += SF_PF_STEP) /* one per cache line */
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
    if (mask != NULL) { /* the ReLU backward, while the tile is in registers */
        for (int o = 0; o < O; ++o)
            for (int t = 0; t < T; ++t) {
                const float *m = mask + o * B + t * VL;
                acc[o][t] = V_WHERE_POS((M && t == T - 1) ? V_LOADN(m, nlast) : V_LOAD(m),
                                        acc[o][t]);
            }
    }
    for (int o = 0; o < O; ++o)
        for (int t = 0; t < T; ++t) {
            const vf v = relu ? V_RELU(acc[o][t]) : acc[o][t];
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

/* H == 1: the full tiles of units [u0, u1), n_full of them per unit from batch column b0, in
 * one call (a call per tile costs a fifth of a tile's time at fan-in 9). */
#define SF_DEFINE_GATHER_UNITS(S, G1)                                                          \
    SF_STATIC void SF_FN(gather_units_s##S##_g##G1)(const sf_gather_args *a, int64_t u0,        \
                                                    int64_t u1, int64_t b0, int64_t n_full)    \
    {                                                                                          \
        const int64_t tile = (int64_t)SF_T1 * VL, h0 = 0;                                      \
        const int nlast = VL;                                                                  \
        for (int64_t u = u0; u < u1; ++u)                                                      \
            for (int64_t f = 0; f < n_full; ++f)                                               \
                SF_FN(gather_tile)(a, u, h0, b0 + f * tile, SF_T1, 1, 0, S, G1, nlast);        \
    }
SF_DEFINE_GATHER_UNITS(0, 0)
SF_DEFINE_GATHER_UNITS(0, 1)
SF_DEFINE_GATHER_UNITS(1, 0)
SF_DEFINE_GATHER_UNITS(1, 1)

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
        float *out = a->out + (u - a->out_unit0);
        const float init = a->bias != NULL ? a->bias[u] : (a->zero_init ? 0.0f : *out);
        const float v = init + ((s0 + s1) + (s2 + s3));
        *out = (a->relu && v < 0.0f) ? 0.0f : v; /* NaN propagates */
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
        float *out = a->out + (u - a->out_unit0) * H + h0;
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
            float *out = a->out + (u - a->out_unit0) * H + h0;
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
    if (H == 1) {
        static void (*const units[4])(const sf_gather_args *, int64_t, int64_t, int64_t,
                                      int64_t) = {
            SF_FN(gather_units_s0_g0), SF_FN(gather_units_s0_g1), SF_FN(gather_units_s1_g0),
            SF_FN(gather_units_s1_g1)};
        if (n_full > 0)
            units[sg](a, u0, u1, b0, n_full);
        if (rest > 0)
            for (int64_t u = u0; u < u1; ++u)
                table[0][sg](a, u, 0, b0 + n_full * tile, 1, nv, nlast);
        return;
    }
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
