/*
 * sparsefan: the weight- and bias-gradient tiles.
 * Part of the kernel template: included by fanin_simd.h only, once per CPU variant.
 */
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
        if ((b / VL) % SF_PF_STEP == 0) /* one prefetch per cache line */
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
            /* the tile itself, not the dispatcher: inlined here with R constant (a call per block
             * cost 15% at fan-in 9, measured) */
            SF_FN(params_tile)(dW + p, dyj, xr, pf, n_pf, 0, 0, 1, B, SF_RCLIP(SF_R1), 1);
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
 * += sum over the chunk's nb columns of xr[r][b] * dyT[b][:]. R * NV <= 8 chains. dyT's
 * lanes past the last channel are zeros, so the inner loop loads whole vectors: a masked load
 * there costs as much as the FMAs it feeds (measured on AVX2); only the store is masked. */
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
            d[v] = V_LOAD(dyT + b * SF_OUTER_OB + v * VL);
        for (int r = 0; r < R; ++r) {
            const vf xv = V_SET1(xr[r][b]);
            for (int v = 0; v < NV; ++v)
                acc[r][v] = V_FMA(xv, d[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
            float *w = dWj + (r0 + r) * c_out + o0 + v * VL;
            if (v == NV - 1 && nlast < VL)
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

/* Output channels [0, o_end) of units [j0, j1) by outer products. */
SF_STATIC void SF_FN(params_outer)(float *dW, const float *dy, const float *x,
                                   const int64_t *indptr, const int32_t *indices, int64_t j0,
                                   int64_t j1, int64_t c_in, int64_t c_out, int64_t o_end,
                                   int64_t B)
{
    float dyT[SF_OUTER_BC * SF_OUTER_OB];
    const float *rows[8], *xr[8];
    for (int64_t j = j0; j < j1; ++j) {
        const float *dyj = dy + j * c_out * B;
        const int64_t R = (indptr[j + 1] - indptr[j]) * c_in; /* rows of unit j's dW block */
        const int32_t *idx = indices + indptr[j];
        float *dWj = SF_UNIT_DW(j);
        for (int64_t o0 = 0; o0 < o_end; o0 += SF_OUTER_OB) {
            const int64_t no = o_end - o0 < SF_OUTER_OB ? o_end - o0 : SF_OUTER_OB;
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
                for (int64_t o = no; o < nv * VL; ++o) /* the padding lanes of the last vector */
                    for (int64_t b = 0; b < nb; ++b)
                        dyT[b * SF_OUTER_OB + o] = 0.0f;
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
    int64_t o_begin = 0; /* channels from here on: dot products */
    if (c_out >= SF_OUTER_MIN_COUT && B >= SF_OUTER_MIN_B) {
        /* up to half a vector of channels past the last full one go to dot products, not to
         * a vector mostly of padding. Measured on AVX2, 1568 units x 32 channels, batch 128:
         * c_out = 10 (a classification head) 12.7-13.6 -> 10.7-11.2 ms, c_out = 9 -21%; at
         * 5-7 channels past it the padded vector is faster (+8-13% split). */
        const int64_t rem = c_out % VL;
        o_begin = rem > 0 && 2 * rem <= VL ? c_out - rem : c_out;
        SF_FN(params_outer)(dW, dy, x, indptr, indices, j0, j1, c_in, c_out, o_begin, B);
        if (o_begin == c_out)
            return;
    }
    for (int64_t j = j0; j < j1; ++j) {
        const float *dyj = dy + j * c_out * B;
        const int64_t R = (indptr[j + 1] - indptr[j]) * c_in; /* rows of unit j's dW block */
        const int32_t *idx = indices + indptr[j];
        float *dWj = SF_UNIT_DW(j);
        for (int64_t o0 = o_begin; o0 < c_out; o0 += OB) {
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
