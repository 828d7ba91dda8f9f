"""`sparsefan export`: the command line face of sparsefan.export."""
import os

import numpy as np
import pytest

from _export_helpers import build_harness, compiler, run_harness, trained_mnist, zoo
from sparsefan import cli, io
from sparsefan.export import CExport, footprint


def run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # a usage error
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def mnist_model(tmp_path_factory):
    net = trained_mnist()[0]
    path = tmp_path_factory.mktemp("m") / "mnist-small.npz"
    io.save_model(net, path)
    return net, path


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--help"])
    assert e.value.code == 0
    assert "--quantize" in capsys.readouterr().out


def test_export_c_float32(tmp_path, capsys, mnist_model):
    net, path = mnist_model
    code, out, err = run(["export", str(path), str(tmp_path), "--name", "digits"], capsys)
    assert code == 0, err
    for f in ("digits.h", "digits.c", "sf_runtime.h", "sf_runtime.c"):
        assert (tmp_path / f).is_file()
    fp = footprint(net)
    assert f"flash (const tables) {fp.const_bytes:,} bytes" in out
    assert f"RAM (scratch) {fp.scratch_bytes:,} bytes" in out
    if compiler("cc"):
        e = CExport("digits", str(tmp_path / "digits.h"), str(tmp_path / "digits.c"),
                    [str(tmp_path / "sf_runtime.h"), str(tmp_path / "sf_runtime.c")], fp)
        x = trained_mnist()[3][:50]
        _, logits, classes = run_harness(build_harness(e), net, x)
        np.testing.assert_array_equal(classes, net.predict(x))


def test_export_c_int8_reports_accuracy(tmp_path, capsys, mnist_model):
    _, path = mnist_model
    arm = compiler("arm-none-eabi-gcc") and compiler("arm-none-eabi-size")
    code, out, err = run(["export", str(path), str(tmp_path), "--quantize", "int8",
                          "--calibration", "embedded:300"] + ["--cortex-m4"] * bool(arm), capsys)
    assert code == 0, err
    assert (tmp_path / "mnist_small.c").is_file()  # default name: the file's, as a C identifier
    assert "int8: calibrated on 300 inputs" in out
    assert "test accuracy on 2000 images (embedded): float32" in out and "int8" in out
    assert "float32 (for comparison)" in out
    assert ("Cortex-M4 (arm-none-eabi-gcc" in out) == bool(arm)


def test_cortex_m4_without_the_cross_compiler_is_an_error(tmp_path, capsys, mnist_model,
                                                          monkeypatch):
    """Asked for the Cortex-M4 sizes and unable to measure them: exit 1 before anything is
    written, not a silent export without them."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    _, path = mnist_model
    code, out, err = run(["export", str(path), str(tmp_path / "o"), "--cortex-m4"], capsys)
    assert code == 1 and out == ""
    assert err == ("sparsefan export: error: --cortex-m4: arm-none-eabi-gcc is not on PATH "
                   "(Debian/Ubuntu: apt-get install gcc-arm-none-eabi); leave out --cortex-m4 "
                   "to export without the Cortex-M4 sizes\n")
    assert not (tmp_path / "o").exists()


def test_calibration_from_npy(tmp_path, capsys, mnist_model):
    _, path = mnist_model
    calib = tmp_path / "calib.npy"
    np.save(calib, trained_mnist()[1][:100])
    code, out, err = run(["export", str(path), str(tmp_path / "o"), "--quantize", "int8",
                          "--calibration", str(calib), "--no-eval"], capsys)
    assert code == 0, err
    assert "calibrated on 100 inputs" in out and "test accuracy" not in out


def test_export_onnx(tmp_path, capsys, mnist_model):
    pytest.importorskip("onnx")
    _, path = mnist_model
    code, out, err = run(["export", "--format", "onnx", str(path), str(tmp_path),
                          "--name", "digits"], capsys)
    assert code == 0, err
    assert (tmp_path / "digits.onnx").is_file()


@pytest.mark.parametrize("argv, status, message", [
    (["MISSING", "OUT"], 1, "not found"),
    (["MODEL", "OUT", "--name", "1x"], 2, "argument --name: name must be a C identifier"),
    (["MODEL", "OUT", "--quantize", "int8"], 2, "needs --calibration"),
    (["MODEL", "OUT", "--calibration", "embedded"], 2, "give --quantize int8 too"),
    (["MODEL", "OUT", "--quantize", "int8", "--calibration", "embedded:x"], 2, "must be an int"),
    (["MODEL", "OUT", "--quantize", "int8", "--calibration", "embedded:0"], 2, "must be an int"),
    (["MODEL", "OUT", "--quantize", "int8", "--calibration", "calib.txt"], 2, ".npy"),
    (["MODEL", "OUT", "--quantize", "int8", "--calibration", "missing.npy"], 1, "missing.npy"),
    (["MODEL", "OUT", "--quantize", "int8", "--calibration", "embedded", "--data",
      "npz:missing.npz"], 1, "missing.npz: no such file"),
    (["--format", "onnx", "MODEL", "OUT", "--quantize", "int8", "--calibration", "embedded"],
     2, "--quantize int8 applies to the C export only"),
    (["--format", "onnx", "MODEL", "OUT", "--certificates"], 2, "C export only"),
    (["--format", "onnx", "MODEL", "OUT", "--cortex-m4"], 2, "C export only"),
    (["MODEL", "OUT", "--data", "embedded", "--data-dir", "OUT"], 2, "--data-dir"),
    (["MODEL", "FILE"], 1, "not a directory"),
])
def test_bad_arguments(tmp_path, capsys, mnist_model, argv, status, message):
    _, path = mnist_model
    (tmp_path / "FILE").write_text("x")
    subst = {"MODEL": str(path), "OUT": str(tmp_path / "out"), "FILE": str(tmp_path / "FILE"),
             "MISSING": str(tmp_path / "missing.npz"), "missing.npy": str(tmp_path / "missing.npy"),
             "npz:missing.npz": f"npz:{tmp_path / 'missing.npz'}"}
    code, out, err = run(["export"] + [subst.get(a, a) for a in argv], capsys)
    assert code == status
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("sparsefan export: error: ")
    assert message in errors[0] and "Traceback" not in err
    if status == 1:
        assert err == errors[0] + "\n"
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_calibration_of_the_wrong_size(tmp_path, capsys):
    net = zoo()["direct"]  # 144 inputs
    path = tmp_path / "small.npz"
    io.save_model(net, path)
    code, _, err = run(["export", str(path), str(tmp_path / "o"), "--quantize", "int8",
                        "--calibration", "embedded:10"], capsys)
    assert code == 1 and "784" in err and "144" in err
    assert not os.path.exists(tmp_path / "o" / "small.c")
