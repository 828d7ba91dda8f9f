"""The C99 export (float32): compile the generated code with a test harness and compare it with
the engine on every builder's network."""
import os
import subprocess

import numpy as np
import pytest

from _export_helpers import (STRICT, build_harness, check_against_engine, compiler, inputs,
                             run_harness, sanitizers_work, trained_mnist, zoo)
from sparsefan.export import export_c, footprint, measure_cortex_m4, quantize_int8, runtime_dir
from sparsefan.export.c import check_name, generate

pytestmark = pytest.mark.skipif(compiler("cc") is None, reason="no C compiler (cc)")

ZOO = zoo()
N_EXAMPLES = 300


def check_c_against_engine(net, scores, logits, classes, x):
    """float32 C vs the engine, and the C class is the argmax of the C scores."""
    check_against_engine(net, scores, logits, classes, x)
    np.testing.assert_array_equal(scores.argmax(axis=1), classes)


@pytest.mark.parametrize("key", list(ZOO))
def test_float32_matches_engine(tmp_path, key):
    net = ZOO[key]
    e = export_c(net, tmp_path, "net")
    exe = build_harness(e)
    x = inputs(net, N_EXAMPLES if net.n_in < 500 else 100)
    check_c_against_engine(net, *run_harness(exe, net, x), x)


def test_trained_mnist_model_matches_engine(tmp_path):
    net, _, _, xte, yte = trained_mnist()
    e = export_c(net, tmp_path, "mnist")
    scores, logits, classes = run_harness(build_harness(e), net, xte[:N_EXAMPLES])
    check_c_against_engine(net, scores, logits, classes, xte[:N_EXAMPLES])


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("quantized", [False, True], ids=["float32", "int8"])
def test_compiles_warning_free(tmp_path, cc, quantized):
    if compiler(cc) is None:
        pytest.skip(f"{cc} is not installed")
    for key in ("hierarchy", "ragged", "direct-vote", "direct-mean_prob"):
        net = ZOO[key]
        model = quantize_int8(net, inputs(net, 50)) if quantized else net
        e = export_c(model, tmp_path / key, "net")
        for src in (e.source, os.path.join(tmp_path / key, "sf_runtime.c")):
            for opt in ("-O0", "-O2"):
                p = subprocess.run([cc, *STRICT, opt, "-c", src, "-o", str(tmp_path / "o.o")],
                                   capture_output=True, text=True)
                assert p.returncode == 0, p.stderr
                assert p.stderr == ""


def test_sanitizers_clean(tmp_path):
    if not sanitizers_work():
        pytest.skip("the compiler cannot build with -fsanitize=address,undefined here")
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
    for key in ("ragged", "hierarchy", "partition_ensemble"):
        net = ZOO[key]
        x = inputs(net, 50)
        for model in (net, quantize_int8(net, x)):
            tag = "q" if model is not net else "f"
            e = export_c(model, tmp_path / f"{key}-{tag}", "net")
            exe = build_harness(e, extra=flags)
            scores, logits, classes = run_harness(exe, net, x)
            if model is net:
                check_c_against_engine(net, scores, logits, classes, x)


def test_generated_code_is_deterministic(tmp_path):
    net = ZOO["hierarchy"]
    a = export_c(net, tmp_path / "a", "net")
    b = export_c(net, tmp_path / "b", "net")
    for f, g in zip(a.files, b.files):
        assert open(f, "rb").read() == open(g, "rb").read()


def test_smallest_index_types():
    _, src = generate(ZOO["direct"], "m")  # 144 inputs, 500 connections
    assert "static const uint8_t l0_indices" in src
    assert "static const uint16_t l0_indptr" in src
    _, src = generate(ZOO["direct-28x28"], "m")
    assert "static const uint16_t l0_indices" in src
    assert "static const uint32_t l0_indptr" in src


def test_header_constants(tmp_path):
    net = ZOO["hierarchy"]
    e = export_c(net, tmp_path, "tiny")
    h = open(e.header).read()
    fp = footprint(net)
    assert f"#define TINY_SCRATCH_BYTES {fp.scratch_bytes}u" in h
    assert f"#define TINY_N_INPUTS {net.n_in}u" in h
    assert f"#define TINY_N_CLASSES {net.n_classes}u" in h
    # no malloc, stdio or OpenMP anywhere the device compiles
    for f in e.files:
        text = open(f).read()
        for bad in ("malloc(", "<stdio.h>", "#pragma omp", "<omp.h>", "printf("):
            assert bad not in text, (f, bad)


def test_footprint_counts_the_tables():
    net = ZOO["hierarchy"]
    fp = footprint(net)
    expected = 0
    for layer in net.layers:
        conn = layer.connectivity
        expected += (1 if conn.nnz < 256 else 2 if conn.nnz < 65536 else 4) * (conn.n_out + 1)
        expected += (1 if conn.n_in <= 256 else 2) * conn.nnz
        expected += 4 * (layer.weight.size + layer.bias.size)
    assert fp.const_bytes == expected
    q = footprint(quantize_int8(net, inputs(net, 20)))
    assert q.const_bytes < fp.const_bytes


def test_cortex_m4_sizes(tmp_path):
    net = ZOO["hierarchy"]
    e = export_c(net, tmp_path, "net")
    sizes = measure_cortex_m4(e)
    if sizes is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    fp = e.footprint
    # the model object holds the tables plus small descriptors (56 bytes per layer, 36 for
    # the model on this 32-bit target) and alignment padding between arrays
    L = len(net.layers)
    assert fp.const_bytes <= sizes["model"][".rodata"] <= fp.const_bytes + 64 * (L + 1) + 20 * L
    assert sizes["total"][".data"] == 0 and sizes["total"][".bss"] == 0
    assert sizes["runtime"][".text"] > 0


def test_shipped_runtime_is_the_source():
    """The runtime the package ships is csrc/runtime, byte for byte (one copy)."""
    repo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc",
                        "runtime")
    if not os.path.isdir(repo):
        pytest.skip("not run from a source checkout")
    for f in ("sf_runtime.h", "sf_runtime.c"):
        assert open(os.path.join(runtime_dir(), f), "rb").read() == \
            open(os.path.join(repo, f), "rb").read()


# -- bad arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["1net", "my-net", "", "int", "sf_model", "a b", "x" * 49,
                                  "__x", "néural"])
def test_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        export_c(ZOO["direct"], tmp_path, name)


def test_name_not_a_string(tmp_path):
    with pytest.raises(TypeError, match="name"):
        export_c(ZOO["direct"], tmp_path, 3)


def test_good_names():
    for name in ("net", "Net_2", "_m", "mnist_int8"):
        assert check_name(name) == name


def test_bad_model(tmp_path):
    with pytest.raises(TypeError, match="Network"):
        export_c("model.npz", tmp_path, "net")


def test_out_dir_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        export_c(ZOO["direct"], f, "net")
    with pytest.raises(OSError, match="cannot create"):
        export_c(ZOO["direct"], f / "sub", "net")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write anywhere")
def test_out_dir_not_writable(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            export_c(ZOO["direct"], d, "net")
    finally:
        d.chmod(0o700)
