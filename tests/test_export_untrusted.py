"""The exported C runtime on untrusted input: NaN and infinite input values are refused with
SF_ERR_NONFINITE by every entry point (float32, int8, certified) before any work, and hand-made
descriptors with a NULL table or sizes that overflow 32 bits (or size_t) get an error code, not
a crash (also checked under AddressSanitizer / UBSan)."""
import os
import re
import subprocess

import numpy as np
import pytest

from _export_helpers import STRICT, compiler, sanitizers_work
from sparsefan import builders
from sparsefan.export import export_c, quantize_int8, runtime_dir

pytestmark = pytest.mark.skipif(compiler("cc") is None, reason="no C compiler (cc)")

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
# a guard against a hang (the old runtime looped forever on max_l0 = UINT32_MAX), not a
# performance threshold: every program here finishes in well under a second
HANG_GUARD = 120


def status_codes():
    """{'SF_OK': 0, 'SF_ERR_NULL': -1, ...} as sf_runtime.h defines them."""
    text = open(os.path.join(runtime_dir(), "sf_runtime.h")).read()
    codes = {k: int(v) for k, v in re.findall(r"#define (SF_(?:OK|ERR_\w+)) \(?(-?\d+)\)?", text)}
    assert len(set(codes.values())) == len(codes)  # distinct
    return codes


CODES = status_codes()


def test_status_codes():
    assert CODES["SF_OK"] == 0
    assert CODES["SF_ERR_NONFINITE"] < 0 and CODES["SF_ERR_SIZE"] < 0
    assert set(CODES) >= {"SF_ERR_NULL", "SF_ERR_ALIGN", "SF_ERR_MODEL"}


def _compile(cc, sources, exe, include, extra=(), opt="-O1"):
    cmd = [cc, *STRICT, opt, *extra, "-I", str(include), *map(str, sources), "-o", str(exe), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return exe


# -- non-finite inputs to an exported model ----------------------------------------------------

# Per example: the codes of NAME_predict, NAME_logits, NAME_classify and (with -DWITH_CERT)
# NAME_predict_certified, then 1 if none of them wrote to its outputs.
NONFINITE_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>

#include "net.h"

static float scratch[NET_SCRATCH_FLOATS];
static float x[NET_N_INPUTS], scores[NET_N_CLASSES], logits[NET_N_UNITS * NET_N_CLASSES];

int main(int argc, char **argv)
{
    FILE *fin, *fout;
    long n, i;
    if (argc != 4)
        return 10;
    n = atol(argv[2]);
    fin = fopen(argv[1], "rb");
    fout = fopen(argv[3], "wb");
    if (!fin || !fout)
        return 11;
    for (i = 0; i < n; ++i) {
        int32_t out[5] = {0, 0, 0, 0, 1};
        unsigned k;
        if (fread(x, sizeof(float), NET_N_INPUTS, fin) != NET_N_INPUTS)
            return 12;
        for (k = 0; k < NET_N_CLASSES; ++k)
            scores[k] = -7.0f;
        for (k = 0; k < NET_N_UNITS * NET_N_CLASSES; ++k)
            logits[k] = -7.0f;
        out[0] = net_predict(x, scores, scratch);
        out[1] = net_logits(x, logits, scratch);
        out[2] = net_classify(x, scratch);
        for (k = 0; k < NET_N_CLASSES; ++k)
            out[4] &= scores[k] == -7.0f;
        for (k = 0; k < NET_N_UNITS * NET_N_CLASSES; ++k)
            out[4] &= logits[k] == -7.0f;
#ifdef WITH_CERT
        {
            int32_t label = -7, r0 = -7;
            float r2 = -7.0f;
            out[3] = net_predict_certified(x, &label, &r2, &r0, scratch);
            out[4] &= label == -7 && r2 == -7.0f && r0 == -7;
        }
#endif
        fwrite(out, sizeof out, 1, fout);
    }
    fclose(fin);
    fclose(fout);
    return 0;
}
"""

_BAD_BITS = {  # float32 bit patterns: every one has an all-ones exponent
    "nan": 0x7FC00000, "-nan": 0xFFC00000, "nan-payload": 0x7FC12345, "snan": 0x7F800001,
    "+inf": 0x7F800000, "-inf": 0xFF800000,
}
_EDGE_BITS = {  # finite values next to the boundary of the test: accepted
    "max": 0x7F7FFFFF, "-max": 0xFF7FFFFF, "-0": 0x80000000, "denormal": 0x00000001,
}


def _bits(b):
    return np.array([b], dtype="<u4").view("<f4")[0]


def probe_inputs(n_in, seed=0):
    """Rows of valid inputs, each with one value replaced by a non-finite one (at the first,
    a middle and the last position) and, after them, finite edge values: (x, bad) where bad
    says which rows hold a non-finite value."""
    rng = np.random.default_rng(seed)
    rows, bad = [], []
    for bits in _BAD_BITS.values():
        for pos in (0, n_in // 2, n_in - 1):
            x = rng.random(n_in, dtype=np.float32)
            x[pos] = _bits(bits)
            rows.append(x)
            bad.append(True)
    x = rng.random(n_in, dtype=np.float32)
    x[: 3] = np.float32(np.nan)
    x[-3:] = np.float32(np.inf)  # several at once
    rows.append(x)
    bad.append(True)
    for bits in _EDGE_BITS.values():
        x = rng.random(n_in, dtype=np.float32)
        x[n_in // 2] = _bits(bits)
        rows.append(x)
        bad.append(False)
    rows.append(rng.random(n_in, dtype=np.float32))
    bad.append(False)
    return np.stack(rows), np.array(bad)


def _models():
    net = builders.direct((6, 6), 3, n_units=20, fan_in=6, hidden=(4,), seed=1)
    calib = np.random.default_rng(1).random((50, 36), dtype=np.float32)
    return {
        "float32-certified": (net, True),
        "float32-mean_prob": (builders.hierarchy((6, 6), 3, levels=2, n_units=16, fan_in=3,
                                                 channels=(2, 4), aggregate="mean_prob",
                                                 seed=2), False),
        "float32-vote": (builders.partition_ensemble((6, 6), 3, part_size=4, hidden=(4,)),
                         False),
        "int8": (quantize_int8(net, calib), False),
    }


MODELS = _models()


def run_nonfinite(tmp_path, key, cc="cc", extra=(), opt="-O1"):
    model, certified = MODELS[key]
    network = getattr(model, "network", model)
    e = export_c(model, tmp_path, "net", certificates=certified)
    src = tmp_path / "probe.c"
    src.write_text(NONFINITE_HARNESS)
    flags = [*extra, *(["-DWITH_CERT"] if certified else [])]
    exe = _compile(compiler(cc), [src, e.source, tmp_path / "sf_runtime.c"], tmp_path / "probe",
                   tmp_path, flags, opt)
    x, bad = probe_inputs(network.n_in)
    x.astype("<f4").tofile(tmp_path / "in.bin")
    proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(len(x)),
                           str(tmp_path / "out.bin")], capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert proc.returncode == 0, f"probe exited {proc.returncode}\n{proc.stderr}"
    out = np.fromfile(tmp_path / "out.bin", dtype="<i4").reshape(len(x), 5)
    return network, certified, x, bad, out


def check_nonfinite(network, certified, x, bad, out):
    fns = [0, 1, 2] + ([3] if certified else [])
    # every entry point refuses every non-finite row, and writes nothing
    assert (out[bad][:, fns] == CODES["SF_ERR_NONFINITE"]).all(), out[bad]
    assert (out[bad][:, 4] == 1).all()
    # finite rows, edge values included, go through (classify returns a class >= 0)
    good = out[~bad]
    assert (good[:, [0, 1]] == CODES["SF_OK"]).all(), good
    assert ((good[:, 2] >= 0) & (good[:, 2] < network.n_classes)).all(), good
    if certified:
        assert (good[:, 3] == CODES["SF_OK"]).all(), good
    # the Python engine refuses the same rows
    for row in x[bad][:3]:
        with pytest.raises(ValueError, match="NaN or Inf"):
            network.predict(row[None])


@pytest.mark.parametrize("key", list(MODELS))
def test_nonfinite_inputs_are_refused(tmp_path, key):
    check_nonfinite(*run_nonfinite(tmp_path, key))


@pytest.mark.parametrize("key", ["float32-certified", "int8"])
def test_nonfinite_refused_under_fast_math(tmp_path, key):
    """The test reads the bits: -ffast-math, which lets the compiler assume finite values,
    cannot remove it."""
    check_nonfinite(*run_nonfinite(tmp_path, key, extra=["-ffast-math"], opt="-O2"))


def test_nonfinite_inputs_under_sanitizers(tmp_path):
    if not sanitizers_work():
        pytest.skip("the compiler cannot build with -fsanitize=address,undefined here")
    check_nonfinite(*run_nonfinite(tmp_path, "int8", extra=SANITIZE))


# -- hand-made descriptors ---------------------------------------------------------------------

# Builds small valid float32 and int8 models, then copies with one field broken, and prints
# "case function code" for every entry point (scratch_bytes prints the byte count). The
# overflow cases set scratch_bytes to what a 32-bit computation wraps to, so a runtime that
# wrapped would accept the descriptor and run off the end of the scratch area.
DRIVER = r"""
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sf_runtime.h"

#define N_IN 4u
#define N_OUT 2u
#define C_OUT 3u

static const uint8_t indptr[N_OUT + 1u] = {0, 2, 4};
static const uint8_t indices[4] = {0, 1, 2, 3};
static const float bias[N_OUT * C_OUT] = {0.1f, -0.2f, 0.3f, 0.0f, 0.5f, -0.6f};
static const float weight[4 * C_OUT] = {1, 2, 3, -1, 0.5f, 2, 0.25f, -3, 1, 2, 2, -1};
static const int8_t qweight[4 * C_OUT] = {127, 64, -3, -127, 5, 9, 1, 2, 3, 100, -100, 7};
static const float multiplier[N_OUT * C_OUT] = {0.01f, 0.02f, 0.01f, 0.03f, 0.01f, 0.02f};
static const float K[C_OUT * C_OUT] = {0, 1, 1, 1, 0, 1, 1, 1, 0};
static const float cum[C_OUT * C_OUT * 3] = {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2,
                                             0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2};

static float scratch[64];
static const float input[N_IN] = {0.5f, 0.25f, 1.0f, 0.0f};

static void run(const char *name, const sf_model *m, const sf_certificates *cert,
                const float *x)
{
    float scores[C_OUT], logits[N_OUT * C_OUT], r2;
    int32_t label, r0;
    printf("%s scratch_bytes %lu\n", name, (unsigned long)sf_scratch_bytes(m));
    printf("%s predict %d\n", name, sf_predict(m, x, scores, scratch));
    printf("%s logits %d\n", name, sf_logits(m, x, logits, scratch));
    printf("%s classify %d\n", name, sf_classify(m, x, scratch));
    if (cert != NULL)
        printf("%s certified %d\n", name,
               sf_predict_certified(m, cert, x, &label, &r2, &r0, scratch));
}

/* sf_scratch_bytes of a one-layer model, computed in uint32_t as the old runtime did */
static uint32_t wrapped_scratch(const sf_model *m)
{
    const sf_layer *l = &m->layers[0];
    if (!m->quantized)
        return l->n_out * l->c_out * 4u + m->n_classes * 4u;
    return m->n_units * m->n_classes * 4u + m->n_classes * 4u + ((m->n_in + 3u) & ~3u);
}

static void run_wrapped(const char *name, sf_model *m, sf_layer *l, uint32_t n_in,
                        uint32_t n_out, uint32_t c_out)
{
    l->n_in = n_in;
    l->n_out = n_out;
    l->c_out = c_out;
    m->n_in = n_in;
    m->n_units = n_out;
    m->n_classes = c_out;
    m->layers = l;
    m->scratch_bytes = wrapped_scratch(m);
    run(name, m, NULL, input);
}

int main(void)
{
    const sf_layer lf = {N_IN, N_OUT, 1u, C_OUT, 1u, 1u, 1u, indptr, indices, bias, weight,
                         NULL, NULL, 0.0f};
    const sf_layer lq = {N_IN, N_OUT, 1u, C_OUT, 1u, 1u, 1u, indptr, indices, bias, NULL,
                         qweight, multiplier, 0.0f};
    const sf_certificates cert = {C_OUT, 2u, K, cum};
    sf_model mf = {1u, N_IN, N_OUT, C_OUT, SF_MEAN_LOGITS, 0u, 0.0f, 0u, &lf};
    sf_model mq = {1u, N_IN, N_OUT, C_OUT, SF_MEAN_LOGITS, 1u, 100.0f, 0u, &lq};
    sf_model m;
    sf_layer l;
    sf_certificates c;
    float x[N_IN];

    mf.scratch_bytes = sf_scratch_bytes(&mf);
    mq.scratch_bytes = sf_scratch_bytes(&mq);
    if (mf.scratch_bytes == 0u || mf.scratch_bytes > sizeof scratch
        || mq.scratch_bytes == 0u || mq.scratch_bytes > sizeof scratch)
        return 3;
    run("float32", &mf, &cert, input);
    run("int8", &mq, NULL, input);

    /* a NULL table pointer in the descriptor */
#define NULL_CASE(name, base, layer, field)                                                  \
    do {                                                                                     \
        m = base;                                                                            \
        l = layer;                                                                           \
        l.field = NULL;                                                                      \
        m.layers = &l;                                                                       \
        run(name, &m, base.quantized ? NULL : &cert, input);                                 \
    } while (0)
    NULL_CASE("float32-indices", mf, lf, indices);
    NULL_CASE("float32-indptr", mf, lf, indptr);
    NULL_CASE("float32-bias", mf, lf, bias);
    NULL_CASE("float32-weight", mf, lf, weight);
    NULL_CASE("int8-indices", mq, lq, indices);
    NULL_CASE("int8-qweight", mq, lq, qweight);
    NULL_CASE("int8-multiplier", mq, lq, multiplier);
    m = mf;
    m.layers = NULL;
    run("float32-layers", &m, &cert, input);

    /* sizes whose products wrap in 32 bits, or overflow a 64-bit size_t */
    m = mf;
    l = lf;
    run_wrapped("float32-n_out*c_out*4", &m, &l, N_IN, 0x40000000u, 4u);
    m = mf;
    l = lf;
    run_wrapped("float32-n_out*c_out", &m, &l, N_IN, 0x80000001u, 0x80000001u);
    m = mf;
    l = lf;
    run_wrapped("float32-size_t", &m, &l, N_IN, 0xffffffffu, 0xffffffffu);
    m = mq;
    l = lq;
    run_wrapped("int8-n_units*n_classes*4", &m, &l, N_IN, 0x40000000u, 4u);
    m = mq;
    l = lq;
    run_wrapped("int8-round_up4(n_in)", &m, &l, 0xfffffffeu, N_OUT, C_OUT);

    /* certificates whose R does not fit int32_t (R + 1 wrapped to 0 in the old runtime) */
    c = cert;
    c.max_l0 = 0xffffffffu;
    printf("cert-max_l0-u32max certified %d\n",
           sf_predict_certified(&mf, &c, input, &(int32_t){0}, &(float){0}, &(int32_t){0},
                                scratch));
    c.max_l0 = 0x80000000u;
    printf("cert-max_l0-2^31 certified %d\n",
           sf_predict_certified(&mf, &c, input, &(int32_t){0}, &(float){0}, &(int32_t){0},
                                scratch));
    c = cert;
    c.cum = NULL;
    printf("cert-cum-null certified %d\n",
           sf_predict_certified(&mf, &c, input, &(int32_t){0}, &(float){0}, &(int32_t){0},
                                scratch));
    c = cert;
    c.n_classes = C_OUT + 1u;
    printf("cert-n_classes certified %d\n",
           sf_predict_certified(&mf, &c, input, &(int32_t){0}, &(float){0}, &(int32_t){0},
                                scratch));

    /* a model error comes before the input check: NaN input, NULL indices */
    memcpy(x, input, sizeof x);
    x[1] = NAN;
    m = mf;
    l = lf;
    l.indices = NULL;
    m.layers = &l;
    run("float32-indices-nan", &m, &cert, x);
    run("float32-nan", &mf, &cert, x);
    run("int8-nan", &mq, NULL, x);
    return 0;
}
"""


def build_driver(tmp_path, extra=()):
    src = tmp_path / "driver.c"
    src.write_text(DRIVER)
    return _compile(compiler("cc"), [src, os.path.join(runtime_dir(), "sf_runtime.c")],
                    tmp_path / "driver", runtime_dir(), extra)


def run_driver(exe):
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, f"driver exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr  # no sanitizer report
    got = {}
    for line in proc.stdout.splitlines():
        case, fn, value = line.split()
        got[(case, fn)] = int(value)
    return got


def expected():
    ok, model = CODES["SF_OK"], CODES["SF_ERR_MODEL"]
    size, nonfinite, null = CODES["SF_ERR_SIZE"], CODES["SF_ERR_NONFINITE"], CODES["SF_ERR_NULL"]
    want = {}

    def case(name, code, certified):
        want[(name, "scratch_bytes")] = 0
        for fn in ("predict", "logits", "classify") + (("certified",) if certified else ()):
            want[(name, fn)] = code

    for name in ("float32-indices", "float32-indptr", "float32-bias", "float32-weight",
                 "float32-layers", "float32-indices-nan"):
        case(name, model, True)
    for name in ("int8-indices", "int8-qweight", "int8-multiplier"):
        case(name, model, False)
    for name in ("float32-n_out*c_out*4", "float32-n_out*c_out", "float32-size_t",
                 "int8-n_units*n_classes*4", "int8-round_up4(n_in)"):
        case(name, size, False)
    for name, certified in (("float32-nan", True), ("int8-nan", False)):
        case(name, nonfinite, certified)
        del want[(name, "scratch_bytes")]  # a valid model: its size
    want.update({("cert-max_l0-u32max", "certified"): model,
                 ("cert-max_l0-2^31", "certified"): model,
                 ("cert-cum-null", "certified"): null,
                 ("cert-n_classes", "certified"): model})
    return want


def check_driver(got):
    # the valid models run (classify gives a class), and the NaN runs report their size
    for name, certified in (("float32", True), ("int8", False)):
        assert got[(name, "scratch_bytes")] > 0
        assert got[(name, "predict")] == got[(name, "logits")] == CODES["SF_OK"]
        assert 0 <= got[(name, "classify")] < 3
        assert got[(name, "scratch_bytes")] == got[(name + "-nan", "scratch_bytes")]
        if certified:
            assert got[(name, "certified")] == CODES["SF_OK"]
    for key, code in expected().items():
        assert got.get(key) == code, (key, got.get(key), code)


def test_handmade_descriptors_get_error_codes(tmp_path):
    check_driver(run_driver(build_driver(tmp_path)))


def test_handmade_descriptors_under_sanitizers(tmp_path):
    if not sanitizers_work():
        pytest.skip("the compiler cannot build with -fsanitize=address,undefined here")
    check_driver(run_driver(build_driver(tmp_path, SANITIZE)))
