"""Helpers for the export tests: a C test harness, compiling it, running it on inputs."""
import os
import shutil
import subprocess

import numpy as np

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]

# Reads n examples (float32) from a file, writes scores, logits and classes; checks the error
# codes for NULL arguments and misaligned scratch, and that the scratch size agrees.
HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>

#include "@NAME@.h"

static float scratch[@UP@_SCRATCH_FLOATS + 1];

int main(int argc, char **argv)
{
    FILE *fin, *fs, *fl, *fc;
    long n, i;
    float x[@UP@_N_INPUTS], scores[@UP@_N_CLASSES];
    float *logits = malloc(sizeof(float) * @UP@_N_UNITS * @UP@_N_CLASSES);
    if (argc != 6 || logits == NULL)
        return 10;
    if (sf_scratch_bytes(&@NAME@_model) != @UP@_SCRATCH_BYTES)
        return 11;
    if (@NAME@_predict(NULL, scores, scratch) != SF_ERR_NULL
        || @NAME@_predict(x, NULL, scratch) != SF_ERR_NULL
        || @NAME@_predict(x, scores, NULL) != SF_ERR_NULL
        || @NAME@_logits(x, NULL, scratch) != SF_ERR_NULL
        || @NAME@_classify(NULL, scratch) != SF_ERR_NULL
        || @NAME@_classify(x, NULL) != SF_ERR_NULL
        || @NAME@_predict(x, scores, (char *)scratch + 1) != SF_ERR_ALIGN
        || sf_predict(NULL, x, scores, scratch) != SF_ERR_NULL)
        return 12;
    n = atol(argv[2]);
    fin = fopen(argv[1], "rb");
    fs = fopen(argv[3], "wb");
    fl = fopen(argv[4], "wb");
    fc = fopen(argv[5], "wb");
    if (!fin || !fs || !fl || !fc)
        return 13;
    for (i = 0; i < n; ++i) {
        int cls;
        if (fread(x, sizeof(float), @UP@_N_INPUTS, fin) != @UP@_N_INPUTS)
            return 14;
        if (@NAME@_predict(x, scores, scratch) != SF_OK)
            return 15;
        if (@NAME@_logits(x, logits, scratch) != SF_OK)
            return 16;
        cls = @NAME@_classify(x, scratch);
        if (cls < 0)
            return 17;
        fwrite(scores, sizeof(float), @UP@_N_CLASSES, fs);
        fwrite(logits, sizeof(float), @UP@_N_UNITS * @UP@_N_CLASSES, fl);
        fwrite(&cls, sizeof(int), 1, fc);
    }
    fclose(fin);
    fclose(fs);
    fclose(fl);
    fclose(fc);
    free(logits);
    return 0;
}
"""


def compiler(name="cc"):
    return shutil.which(name)


def build_harness(export, cc="cc", extra=(), opt="-O1"):
    """Compile the harness with an export; returns the executable's path."""
    d = os.path.dirname(export.source)
    src = os.path.join(d, "harness.c")
    with open(src, "w") as f:
        f.write(HARNESS.replace("@NAME@", export.name).replace("@UP@", export.name.upper()))
    exe = os.path.join(d, "harness")
    cmd = [cc, *STRICT, opt, *extra, "-I", d, src, export.source,
           os.path.join(d, "sf_runtime.c"), "-o", exe, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return exe


def run_harness(exe, network, x, env=None):
    """Run the compiled harness on x (n, n_in) float32: (scores, logits (M, C, n), classes)."""
    d = os.path.dirname(exe)
    paths = [os.path.join(d, f) for f in ("in.bin", "scores.bin", "logits.bin", "classes.bin")]
    np.ascontiguousarray(x, dtype="<f4").tofile(paths[0])
    proc = subprocess.run([exe, paths[0], str(len(x)), *paths[1:]], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, f"harness exited {proc.returncode}\n{proc.stderr}"
    n, M, C = len(x), network.n_units, network.n_classes
    scores = np.fromfile(paths[1], dtype="<f4").reshape(n, C)
    logits = np.fromfile(paths[2], dtype="<f4").reshape(n, M, C).transpose(1, 2, 0)
    classes = np.fromfile(paths[3], dtype=np.intc)
    return scores, logits, classes


def zoo():
    """Every builder's network (small), every aggregate, ragged and empty rows, and index
    tables that need uint8, uint16 and uint32: {id: Network}."""
    import sparsefan as sf
    from sparsefan import builders
    from sparsefan.layers import FanIn
    from sparsefan.network import Network

    r = np.random.default_rng(3)
    rows = [r.choice(144, size=r.integers(0, 12), replace=False) for _ in range(40)]
    rows[5] = []  # an empty row: the unit outputs its bias
    ragged = Network([FanIn(sf.Connectivity.from_rows(144, rows), 1, 6, "relu", seed=1),
                      FanIn(sf.Connectivity.random(40, 30, 4, seed=2), 6, 3, seed=2)],
                     3, "mean_logits", (12, 12), name="ragged")
    for layer in ragged.layers:
        layer.bias = r.normal(size=layer.bias.shape).astype(np.float32)
    return {
        "direct": builders.direct(input_shape=(12, 12), n_units=50, fan_in=10, hidden=(8, 4),
                                  seed=1),
        "direct-mean_prob": builders.direct(input_shape=(12, 12), n_units=30, fan_in=10,
                                            hidden=(8,), aggregate="mean_prob",
                                            wiring="random", seed=1),
        "direct-vote": builders.direct(input_shape=(12, 12), n_units=40, fan_in=12,
                                       hidden=(6,), aggregate="vote", wiring="partitions",
                                       seed=2),
        "hierarchy": builders.hierarchy(input_shape=(12, 12), levels=2, n_units=60,
                                        channels=(4, 6), head_hidden=(5,), seed=2),
        "hierarchy-3": builders.hierarchy(input_shape=(12, 12), levels=3, n_units=40,
                                          wiring="partitions", channels=(3, 4, 4), seed=3),
        "partition_ensemble": builders.partition_ensemble(input_shape=(12, 12), part_size=13,
                                                          hidden=(8,)),
        "dense_mlp": builders.dense_mlp(input_shape=(12, 12), hidden=(16, 8)),
        "ragged": ragged,
        # 784 inputs (uint16 indices) and 70,560 connections (uint32 indptr)
        "direct-28x28": builders.direct(input_shape=(28, 28), n_units=1568, fan_in=45,
                                        hidden=(2,), seed=4),
    }


def inputs(network, n, seed=0):
    return np.random.default_rng(seed).random((n, network.n_in), dtype=np.float32)


_TRAINED = {}


def trained_mnist():
    """A small direct network trained briefly on the embedded MNIST subset (cached), and the
    subset as float32: (network, x_train, y_train, x_test, y_test)."""
    if not _TRAINED:
        from sparsefan import builders, datasets
        from sparsefan.train import TrainConfig, as_float_inputs, train

        xtr, ytr, xte, yte = datasets.load_embedded()
        xtr, xte = as_float_inputs(xtr), as_float_inputs(xte)
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
        net = builders.direct(input_shape=(28, 28), n_units=196, fan_in=28, hidden=(8,),
                              seed=0)
        train(net, xtr[:6000], ytr[:6000], TrainConfig(epochs=1, batch_size=64, lr=3e-2,
                                                       seed=0),
              progress=False, log=lambda *a, **k: None)
        _TRAINED["v"] = (net, xtr, ytr, xte, yte)
    return _TRAINED["v"]


def sanitizers_work(cc="cc"):
    """True if ``cc`` can build and run a program with -fsanitize=address,undefined."""
    import tempfile

    if compiler(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        exe = os.path.join(d, "t")
        p = subprocess.run([cc, "-fsanitize=address,undefined", src, "-o", exe],
                           capture_output=True)
        if p.returncode != 0:
            return False
        return subprocess.run([exe], capture_output=True).returncode == 0


def check_against_engine(net, scores, logits, classes, x):
    """An export's outputs vs the engine: logits and scores within 1e-4 (probabilities within
    1e-5 for mean_prob, whose log-scores are compared where not tiny), identical classes."""
    assert np.abs(logits - net.unit_logits(x)).max() <= 1e-4
    ref = net.scores(x)
    if net.aggregate == "mean_prob":
        np.testing.assert_allclose(np.exp(scores), np.exp(ref), rtol=0, atol=1e-5)
        ok = ref > -20
        assert np.abs(scores[ok] - ref[ok]).max() <= 1e-4
    else:
        assert np.abs(scores - ref).max() <= 1e-4
    np.testing.assert_array_equal(classes, net.predict(x))
