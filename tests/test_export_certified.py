"""NAME_predict_certified in the C export: the class and both certified radii from const tables,
compiled strictly and compared with Network.predict_certified."""
import os
import subprocess

import numpy as np
import pytest

from _export_helpers import STRICT, compiler
from sparsefan import builders
from sparsefan.export import export_c, footprint, quantize_int8
from sparsefan.export.c import _round_up
from sparsefan.train import TrainConfig, train

pytestmark = pytest.mark.skipif(compiler("cc") is None, reason="no C compiler (cc)")

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>

#include "net.h"

static float scratch[NET_SCRATCH_FLOATS];

int main(int argc, char **argv)
{
    float x[NET_N_INPUTS], r2;
    int32_t label, r0;
    long n, i;
    FILE *fin, *fout;
    if (argc != 4)
        return 9;
    n = atol(argv[2]);
    fin = fopen(argv[1], "rb");
    fout = fopen(argv[3], "wb");
    if (!fin || !fout)
        return 10;
    if (net_predict_certified(x, NULL, &r2, &r0, scratch) != SF_ERR_NULL
        || net_predict_certified(x, &label, &r2, &r0, NULL) != SF_ERR_NULL
        || net_predict_certified(x, &label, &r2, &r0, (char *)scratch + 1) != SF_ERR_ALIGN)
        return 11;
    for (i = 0; i < n; ++i) {
        if (fread(x, sizeof(float), NET_N_INPUTS, fin) != NET_N_INPUTS)
            return 12;
        if (net_predict_certified(x, &label, &r2, &r0, scratch) != SF_OK)
            return 13;
        fwrite(&label, sizeof label, 1, fout);
        fwrite(&r2, sizeof r2, 1, fout);
        fwrite(&r0, sizeof r0, 1, fout);
    }
    fclose(fin);
    fclose(fout);
    return 0;
}
"""


def task(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.clip(y[:, None] / 2 + 0.2 * rng.standard_normal((n, 36)), 0, 1).astype(np.float32)
    x[: n // 4] = np.round(x[: n // 4])
    return x, y


@pytest.mark.parametrize("arch", ["direct", "hierarchy", "dense_mlp"])
def test_exported_certificates_equal_python(tmp_path, arch):
    net = {"direct": lambda: builders.direct((6, 6), 3, n_units=20, fan_in=6, hidden=(4,)),
           "hierarchy": lambda: builders.hierarchy((6, 6), 3, levels=2, n_units=16, fan_in=3,
                                                   channels=(2, 4)),
           "dense_mlp": lambda: builders.dense_mlp((6, 6), 3, hidden=(8,))}[arch]()
    x, y = task(400, 0)
    train(net, x, y, TrainConfig(epochs=6, batch_size=32, lr=3e-2, l2_epsilon=0.3),
          progress=False, log=lambda _: None)
    e = export_c(net, tmp_path, "net", certificates=True)
    assert e.footprint.const_bytes == footprint(net).const_bytes + 4 * 9 * (2 + 36 + 1) - 4 * 9
    src = tmp_path / "harness.c"
    src.write_text(HARNESS)
    exe = tmp_path / "harness"
    cmd = [compiler("cc"), *STRICT, "-O1", "-I", str(tmp_path), str(src), e.source,
           os.path.join(tmp_path, "sf_runtime.c"), "-o", str(exe), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    xt, _ = task(200, 1)
    xt.astype("<f4").tofile(tmp_path / "in.bin")
    proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), "200", str(tmp_path / "out.bin")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.returncode
    out = np.fromfile(tmp_path / "out.bin",
                      dtype=np.dtype([("label", "<i4"), ("r2", "<f4"), ("r0", "<i4")]))
    want = net.predict_certified(xt)
    assert np.array_equal(out["label"], want.classes)
    np.testing.assert_allclose(out["r2"], want.l2_radius, rtol=1e-4, atol=1e-6)
    # float32 scores may land the other side of a table entry: rarely, and by one pixel
    diff = out["r0"] - want.l0_radius
    assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 0.02
    assert (want.l0_radius > 0).mean() > 0.2 and (want.l2_radius > 0.05).mean() > 0.2


def test_certificates_need_a_float32_mean_logits_model(tmp_path):
    vote = builders.partition_ensemble((6, 6), 3, part_size=4, hidden=(4,))
    with pytest.raises(ValueError, match="mean_logits"):
        export_c(vote, tmp_path, "v", certificates=True)
    net = builders.direct((6, 6), 3, n_units=20, fan_in=6, hidden=(4,))
    q = quantize_int8(net, task(50, 0)[0])
    with pytest.raises(ValueError, match="int8"):
        export_c(q, tmp_path, "q", certificates=True)


def test_tables_round_up():
    a = np.array([1 / 3, 0.1, 2.0, 1e-40, 0.0])
    f = _round_up(a)
    assert f.dtype == np.float32 and (f.astype(np.float64) >= a).all()
    assert (f.astype(np.float64) - a <= np.abs(a) * 2.4e-7 + 1e-45).all()
