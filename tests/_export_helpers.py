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
