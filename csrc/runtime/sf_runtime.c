/*
 * sparsefan standalone runtime. See sf_runtime.h for the shape legend, the layouts and the int8
 * arithmetic. C99; no malloc, no stdio; expf/logf only for the mean_prob aggregation.
 */
#include "sf_runtime.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>

/* The non-finite test reads a float's bits: it needs IEEE-754 binary32 floats. */
typedef char sf_float_is_binary32[(sizeof(float) == sizeof(uint32_t) && FLT_RADIX == 2
                                   && FLT_MANT_DIG == 24 && FLT_MAX_EXP == 128) ? 1 : -1];

/* Where each piece lives in the caller's scratch area (byte offsets). */
typedef struct {
    size_t buf[2];       /* the two activation buffers, used in turn */
    size_t logits;       /* the float logits [M][C] */
    size_t scores;       /* C floats */
    size_t total;        /* bytes, at most UINT32_MAX (the type of sf_model.scratch_bytes) */
} sf_plan;

static uint32_t load_index(const void *table, uint32_t bytes, uint32_t i)
{
    if (bytes == 1u)
        return ((const uint8_t *)table)[i];
    if (bytes == 2u)
        return ((const uint16_t *)table)[i];
    return ((const uint32_t *)table)[i];
}

/* ------------------------------------------------------------------------------------------ */
/* size arithmetic: every size the runtime derives from a descriptor is computed in size_t by  */
/* these helpers, which return 0 instead of wrapping around                                    */

/* *r = a + b; 0 if that overflows size_t */
static int add_size(size_t a, size_t b, size_t *r)
{
    if (b > SIZE_MAX - a)
        return 0;
    *r = a + b;
    return 1;
}

/* *r = a * b * c; 0 if that overflows size_t (or a or b does not fit it) */
static int product(uint32_t a, uint32_t b, size_t c, size_t *r)
{
    size_t n;
#if SIZE_MAX < UINT32_MAX
    if (a > SIZE_MAX || b > SIZE_MAX)
        return 0;
#endif
    n = (size_t)a;
    if (b != 0u && n > SIZE_MAX / b)
        return 0;
    n *= b;
    if (c != 0u && n > SIZE_MAX / c)
        return 0;
    *r = n * c;
    return 1;
}

/* *r = n rounded up to a multiple of 4; 0 if that overflows size_t */
static int round_up4(size_t n, size_t *r)
{
    if (!add_size(n, 3u, r))
        return 0;
    *r &= ~(size_t)3u;
    return 1;
}

static size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

/* Round half away from zero and clamp to [-127, 127] (NaN -> 0). The Python emulation in
 * sparsefan/export/quantize.py repeats these float32 operations exactly. */
static int8_t quantize(float v)
{
    if (v >= 127.0f)
        return 127;
    if (v <= -127.0f)
        return -127;
    if (v >= 0.0f)
        return (int8_t)(int32_t)(v + 0.5f);
    if (v < 0.0f)
        return (int8_t)(-(int32_t)(0.5f - v));
    return 0;
}

/* Check the descriptor chain and lay out the scratch area: SF_OK, SF_ERR_MODEL (inconsistent
 * shapes, a NULL table, a bad index width) or SF_ERR_SIZE (a size that overflows). */
static int plan_scratch(const sf_model *m, sf_plan *p)
{
    const uint32_t L = m->n_layers;
    size_t need[2] = {0u, 0u};
    size_t bytes;
    uint32_t i;
    const sf_layer *first, *last;

    if (L == 0u || m->layers == NULL || m->n_classes == 0u || m->n_units == 0u)
        return SF_ERR_MODEL;
    first = &m->layers[0];
    last = &m->layers[L - 1u];
    if (first->n_in != m->n_in || first->c_in != 1u || last->n_out != m->n_units
        || last->c_out != m->n_classes || m->aggregate > SF_VOTE)
        return SF_ERR_MODEL;
    for (i = 0; i < L; ++i) {
        const sf_layer *l = &m->layers[i];
        if (i > 0u && (l->n_in != m->layers[i - 1u].n_out || l->c_in != m->layers[i - 1u].c_out))
            return SF_ERR_MODEL;
        if ((l->indptr_bytes != 1u && l->indptr_bytes != 2u && l->indptr_bytes != 4u)
            || (l->index_bytes != 1u && l->index_bytes != 2u && l->index_bytes != 4u)
            || l->indptr == NULL || l->indices == NULL || l->bias == NULL)
            return SF_ERR_MODEL;
        if (m->quantized ? (l->qweight == NULL || l->multiplier == NULL) : l->weight == NULL)
            return SF_ERR_MODEL;
        /* a connection's weight block [c_in][c_out]: the layer loop indexes the weights by
         * p * c_in * c_out, which then stays below the size of the weight table */
        if (!product(l->c_in, l->c_out, m->quantized ? sizeof(int8_t) : sizeof(float), &bytes))
            return SF_ERR_SIZE;
    }
#if INT_MAX < UINT32_MAX / 4u
    /* a 16-bit int: sf_classify returns the class as an int */
    if (m->n_classes > (uint32_t)INT_MAX)
        return SF_ERR_SIZE;
#endif
    if (!m->quantized) {
        /* layer i reads buffer (i + 1) % 2 (the first reads the input) and writes buffer i % 2 */
        for (i = 0; i < L; ++i) {
            if (!product(m->layers[i].n_out, m->layers[i].c_out, sizeof(float), &bytes))
                return SF_ERR_SIZE;
            need[i % 2u] = max_size(need[i % 2u], bytes);
        }
        p->buf[0] = 0u;
        p->buf[1] = need[0];
        p->logits = p->buf[(L - 1u) % 2u];
        if (!add_size(need[0], need[1], &p->scores)
            || !product(m->n_classes, 1u, sizeof(float), &bytes)
            || !add_size(p->scores, bytes, &p->total))
            return SF_ERR_SIZE;
    } else {
        /* int8 activation a_0 (the quantized input) sits in buffer 0; layer i reads buffer
         * i % 2 and writes a_{i+1} to buffer (i + 1) % 2, except the last, which writes the
         * float logits */
        if (!product(m->n_in, 1u, sizeof(int8_t), &need[0]))
            return SF_ERR_SIZE;
        for (i = 0; i + 1u < L; ++i) {
            if (!product(m->layers[i].n_out, m->layers[i].c_out, sizeof(int8_t), &bytes))
                return SF_ERR_SIZE;
            need[(i + 1u) % 2u] = max_size(need[(i + 1u) % 2u], bytes);
        }
        p->logits = 0u;
        if (!product(m->n_units, m->n_classes, sizeof(float), &p->scores)
            || !product(m->n_classes, 1u, sizeof(float), &bytes)
            || !add_size(p->scores, bytes, &p->buf[0])
            || !round_up4(need[0], &bytes) || !add_size(p->buf[0], bytes, &p->buf[1])
            || !round_up4(need[1], &bytes) || !add_size(p->buf[1], bytes, &p->total))
            return SF_ERR_SIZE;
    }
#if SIZE_MAX > UINT32_MAX
    if (p->total > UINT32_MAX)
        return SF_ERR_SIZE;
#endif
    return SF_OK;
}

uint32_t sf_scratch_bytes(const sf_model *model)
{
    sf_plan p;
    if (model == NULL || plan_scratch(model, &p) != SF_OK)
        return 0u;
    return (uint32_t)p.total;
}

/* ------------------------------------------------------------------------------------------ */
/* layers                                                                                       */

/* y[j][o] = act(b[j][o] + sum_{p in row j} sum_c W[p][c][o] * x[indices[p]][c]) */
static void layer_forward_f32(const sf_layer *l, const float *x, float *y)
{
    const uint32_t ci = l->c_in, co = l->c_out;
    uint32_t j, o, p, c;
    for (j = 0; j < l->n_out; ++j) {
        const uint32_t p0 = load_index(l->indptr, l->indptr_bytes, j);
        const uint32_t p1 = load_index(l->indptr, l->indptr_bytes, j + 1u);
        for (o = 0; o < co; ++o) {
            float acc = l->bias[(size_t)j * co + o];
            for (p = p0; p < p1; ++p) {
                const float *xi = x + (size_t)load_index(l->indices, l->index_bytes, p) * ci;
                const float *w = l->weight + (size_t)p * ci * co + o;
                for (c = 0; c < ci; ++c)
                    acc += w[(size_t)c * co] * xi[c];
            }
            if (l->relu && acc < 0.0f) /* NaN stays NaN, as in the engine */
                acc = 0.0f;
            y[(size_t)j * co + o] = acc;
        }
    }
}

/* acc = sum qW * qx in int32; v = (float)acc * multiplier + bias; activation; then either the
 * float logit (yf, last layer) or the int8 input of the next layer (yq). */
static void layer_forward_i8(const sf_layer *l, const int8_t *x, int8_t *yq, float *yf)
{
    const uint32_t ci = l->c_in, co = l->c_out;
    uint32_t j, o, p, c;
    for (j = 0; j < l->n_out; ++j) {
        const uint32_t p0 = load_index(l->indptr, l->indptr_bytes, j);
        const uint32_t p1 = load_index(l->indptr, l->indptr_bytes, j + 1u);
        for (o = 0; o < co; ++o) {
            const size_t jo = (size_t)j * co + o;
            int32_t acc = 0;
            float v;
            for (p = p0; p < p1; ++p) {
                const int8_t *xi = x + (size_t)load_index(l->indices, l->index_bytes, p) * ci;
                const int8_t *w = l->qweight + (size_t)p * ci * co + o;
                for (c = 0; c < ci; ++c)
                    acc += (int32_t)w[(size_t)c * co] * (int32_t)xi[c];
            }
            /* two statements: no fused multiply-add, so Python's emulation rounds alike */
            v = (float)acc * l->multiplier[jo];
            v = v + l->bias[jo];
            if (l->relu && v < 0.0f)
                v = 0.0f;
            if (yf != NULL)
                yf[jo] = v;
            else
                yq[jo] = quantize(v * l->out_inv_scale);
        }
    }
}

/* Runs every layer; returns the logits' place in scratch. */
static const float *run_layers(const sf_model *m, const sf_plan *p, const float *input,
                               unsigned char *scratch)
{
    const uint32_t L = m->n_layers;
    uint32_t i;
    if (!m->quantized) {
        const float *x = input;
        for (i = 0; i < L; ++i) {
            float *y = (float *)(void *)(scratch + p->buf[i % 2u]);
            layer_forward_f32(&m->layers[i], x, y);
            x = y;
        }
        return x;
    } else {
        int8_t *a0 = (int8_t *)(void *)(scratch + p->buf[0]);
        float *logits = (float *)(void *)(scratch + p->logits);
        for (i = 0; i < m->n_in; ++i)
            a0[i] = quantize(input[i] * m->in_inv_scale);
        for (i = 0; i < L; ++i) {
            const int8_t *x = (const int8_t *)(void *)(scratch + p->buf[i % 2u]);
            if (i + 1u < L)
                layer_forward_i8(&m->layers[i], x,
                                 (int8_t *)(void *)(scratch + p->buf[(i + 1u) % 2u]), NULL);
            else
                layer_forward_i8(&m->layers[i], x, NULL, logits);
        }
        return logits;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* aggregation                                                                                  */

static uint32_t argmax(const float *v, uint32_t n)
{
    uint32_t best = 0u, i;
    for (i = 1u; i < n; ++i)
        if (v[i] > v[best])
            best = i;
    return best;
}

static void aggregate(const sf_model *m, const float *Z, float *scores)
{
    const uint32_t M = m->n_units, C = m->n_classes;
    uint32_t j, c;
    for (c = 0; c < C; ++c)
        scores[c] = 0.0f;
    if (m->aggregate == SF_MEAN_LOGITS) {
        for (j = 0; j < M; ++j)
            for (c = 0; c < C; ++c)
                scores[c] += Z[(size_t)j * C + c];
        for (c = 0; c < C; ++c)
            scores[c] /= (float)M;
    } else if (m->aggregate == SF_MEAN_PROB) {
        /* log of the mean over units of softmax(Z[j]); a mean that underflows gives -inf */
        for (j = 0; j < M; ++j) {
            const float *z = Z + (size_t)j * C;
            const float top = z[argmax(z, C)];
            float total = 0.0f;
            for (c = 0; c < C; ++c)
                total += expf(z[c] - top);
            for (c = 0; c < C; ++c)
                scores[c] += expf(z[c] - top) / total;
        }
        for (c = 0; c < C; ++c)
            scores[c] = logf(scores[c] / (float)M);
    } else {
        for (j = 0; j < M; ++j)
            scores[argmax(Z + (size_t)j * C, C)] += 1.0f;
        for (c = 0; c < C; ++c)
            scores[c] /= (float)M;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* entry points                                                                                 */

/* 1 if every one of the n floats is finite. The test reads the bits (exponent all ones: NaN or
 * +-Inf) rather than calling isfinite(), which -ffast-math, common in embedded builds, lets the
 * compiler fold to "always finite". */
static int all_finite(const float *x, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        union {
            float f;
            uint32_t u;
        } v;
        v.f = x[i];
        if ((v.u & 0x7f800000u) == 0x7f800000u)
            return 0;
    }
    return 1;
}

/* The certificates must fit the model: a float32 mean_logits model with as many classes, and
 * R small enough for the int32_t l0 radius; cum[C][C][R + 1] must fit size_t. */
static int check_certificates(const sf_model *m, const sf_certificates *cert)
{
    size_t bytes;
    if (m->quantized || m->aggregate != SF_MEAN_LOGITS || cert->n_classes != m->n_classes
        || cert->max_l0 > (uint32_t)INT32_MAX)
        return SF_ERR_MODEL;
    if (!product(cert->n_classes, cert->n_classes, sizeof(float), &bytes)
        || !product(cert->max_l0 + 1u, 1u, bytes, &bytes))
        return SF_ERR_SIZE;
    return SF_OK;
}

/* Every check an entry point makes, before any work, in this order: the arguments (NULL,
 * alignment), the model (and cert, unless NULL), then the input's values. */
static int prepare(const sf_model *model, const sf_certificates *cert, const float *input,
                   const void *out, void *scratch, sf_plan *p)
{
    int err;
    if (model == NULL || input == NULL || out == NULL || scratch == NULL)
        return SF_ERR_NULL;
    if (((uintptr_t)scratch & 3u) != 0u)
        return SF_ERR_ALIGN;
    err = plan_scratch(model, p);
    if (err != SF_OK)
        return err;
    if (p->total != model->scratch_bytes)
        return SF_ERR_MODEL;
    if (cert != NULL) {
        err = check_certificates(model, cert);
        if (err != SF_OK)
            return err;
    }
    if (!all_finite(input, model->n_in))
        return SF_ERR_NONFINITE;
    return SF_OK;
}

int sf_logits(const sf_model *model, const float *input, float *logits, void *scratch)
{
    sf_plan p;
    const float *Z;
    size_t i, n;
    int err = prepare(model, NULL, input, logits, scratch, &p);
    if (err != SF_OK)
        return err;
    Z = run_layers(model, &p, input, (unsigned char *)scratch);
    n = (size_t)model->n_units * model->n_classes;
    for (i = 0; i < n; ++i)
        logits[i] = Z[i];
    return SF_OK;
}

int sf_predict(const sf_model *model, const float *input, float *scores, void *scratch)
{
    sf_plan p;
    int err = prepare(model, NULL, input, scores, scratch, &p);
    if (err != SF_OK)
        return err;
    aggregate(model, run_layers(model, &p, input, (unsigned char *)scratch), scores);
    return SF_OK;
}

/* The largest r in 0..R with cum[r] < m (<= m when a tie still wins). cum[0] = 0 <= m. */
static int32_t last_below(const float *cum, uint32_t R, float m, int tie_wins)
{
    uint32_t lo = 0u, hi = R;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1u) / 2u;
        if (tie_wins ? cum[mid] <= m : cum[mid] < m)
            lo = mid;
        else
            hi = mid - 1u;
    }
    return (int32_t)lo;
}

int sf_predict_certified(const sf_model *model, const sf_certificates *cert, const float *input,
                         int32_t *label, float *l2_radius, int32_t *l0_radius, void *scratch)
{
    sf_plan p;
    float *scores;
    uint32_t y, c, C;
    float best2 = 0.0f;
    int32_t best0;
    int have = 0, err;
    if (cert == NULL || label == NULL || l2_radius == NULL || l0_radius == NULL ||
        cert->K == NULL || cert->cum == NULL)
        return SF_ERR_NULL;
    err = prepare(model, cert, input, scratch, scratch, &p);
    if (err != SF_OK)
        return err;
    C = model->n_classes;
    scores = (float *)(void *)((unsigned char *)scratch + p.scores);
    aggregate(model, run_layers(model, &p, input, (unsigned char *)scratch), scores);
    y = argmax(scores, C);
    best0 = (int32_t)cert->max_l0;
    for (c = 0; c < C; ++c) {
        float m, k, r;
        int32_t r0;
        if (c == y)
            continue;
        m = scores[y] - scores[c]; /* >= 0, and > 0 when c < y (ties go to the lower class) */
        k = cert->K[(size_t)y * C + c];
        r = k > 0.0f ? m / k : 3.4e38f; /* a zero bound: the margin cannot move */
        if (!have || r < best2)
            best2 = r;
        have = 1;
        r0 = last_below(cert->cum + ((size_t)y * C + c) * ((size_t)cert->max_l0 + 1u),
                        cert->max_l0, m, y < c);
        if (r0 < best0)
            best0 = r0;
    }
    *label = (int32_t)y;
    *l2_radius = have ? best2 : 3.4e38f;
    *l0_radius = best0;
    return SF_OK;
}

int sf_classify(const sf_model *model, const float *input, void *scratch)
{
    sf_plan p;
    float *scores;
    int err = prepare(model, NULL, input, scratch, scratch, &p);
    if (err != SF_OK)
        return err;
    scores = (float *)(void *)((unsigned char *)scratch + p.scores);
    aggregate(model, run_layers(model, &p, input, (unsigned char *)scratch), scores);
    return (int)argmax(scores, model->n_classes);
}
