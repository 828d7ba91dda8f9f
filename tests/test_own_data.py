"""Data sets of your own: ``--data npz:FILE`` / ``datasets.load_npz``, ``--data idx:DIR`` /
``datasets.load_idx`` (MNIST's file names, no checksum: Fashion-MNIST, KMNIST) and ``--limit``.
Fixtures are written into tmp_path from the embedded subset; bad files must give one-line
errors that name the file and the array."""
import gzip
import io as pyio
import re
import zipfile

import numpy as np
import pytest

from sparsefan import builders, cli, datasets, io
from sparsefan.datasets import DatasetError
from test_datasets import idx_bytes  # the IDX writer the reader's own tests use


@pytest.fixture(scope="module")
def subset():
    x, y, xt, yt = datasets.load_embedded()
    return x[:400], y[:400], xt[:100], yt[:100]


def write_npz(path, subset, compressed=True, **override):
    arrays = dict(zip(datasets.NPZ_ARRAYS, subset))
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D,
             "float64": 0x0E}


def write_idx_dir(directory, subset, gz=(True, False, True, False)):
    """The four arrays as IDX files with MNIST's names, some gzip-compressed, some raw."""
    directory.mkdir(exist_ok=True)
    for stem, arr, compress in zip(datasets.MNIST_FILES.values(), subset, gz):
        blob = idx_bytes(arr, IDX_CODES[arr.dtype.name])
        path = directory / (stem + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(blob) if compress else blob)
    return directory


def run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(err, command):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sparsefan {command}: error: "), err
    assert "Traceback" not in err


# -- load_npz -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compressed", [True, False], ids=["savez_compressed", "savez"])
def test_load_npz_round_trip(tmp_path, subset, compressed):
    path = write_npz(tmp_path / "d.npz", subset, compressed)
    got = datasets.load_npz(path)
    for a, b in zip(got, subset):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert got[0].flags.c_contiguous and got[0].flags.writeable


def test_load_npz_takes_other_shapes_dtypes_and_orders(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((30, 6, 5, 3)).astype(">f4")  # (n, H, W, C), big-endian floats in [0, 1]
    xt = np.asfortranarray(rng.random((10, 6, 5, 3)))  # float64, Fortran order
    y = (np.arange(30) % 4).astype(np.int16)
    yt = (np.arange(10) % 4).astype(">i8")
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt, notes=np.array([1, 2]))
    gx, gy, gxt, gyt = datasets.load_npz(path)
    assert gx.dtype == np.float32 and gx.dtype.isnative and np.array_equal(gx, x)
    assert gxt.flags.c_contiguous and np.array_equal(gxt, xt)
    assert np.array_equal(gy, y) and np.array_equal(gyt, yt) and gyt.dtype.isnative
    flat = tmp_path / "flat.npz"  # (n, features)
    np.savez(flat, x_train=x.reshape(30, -1), y_train=y, x_test=xt.reshape(10, -1), y_test=yt)
    assert datasets.load_npz(flat)[0].shape == (30, 90)


def _bad_arrays(subset):
    x, y, xt, yt = subset
    return [
        ({"y_test": None}, "member y_test.npy is missing"),
        ({"y_train": np.array([{"a": 1}] * 400, dtype=object)},
         "y_train.npy holds object values, not numbers"),
        ({"x_train": x.astype(np.int64)}, "x_train: images must hold uint8 pixels"),
        ({"x_train": x.astype(np.float32)}, r"x_train: float pixels must lie in \[0, 1\], "
                                            r"got 0 \.\. 255"),
        ({"x_test": np.full((100, 28, 28), np.nan, np.float32)}, "x_test: float pixels"),
        ({"x_train": x.astype(bool)}, "x_train: images must hold uint8 pixels"),
        ({"x_train": x[:, 0, 0]}, r"x_train: images must be an array of shape \(n, features\)"),
        ({"x_train": x[:0], "y_train": y[:0]}, r"x_train: no images \(shape \(0, 28, 28\)\)"),
        ({"y_train": y.astype(np.float32)}, "y_train: labels must be integers"),
        ({"y_train": y[:, None]}, "y_train: labels must be a 1-D array"),
        ({"y_test": yt[:99]}, "y_test: 99 labels for the 100 images of .*x_test"),
        ({"y_train": y.astype(np.int32) - 1}, r"y_train: labels must lie in 0\.\.999, got -1"),
        ({"y_train": np.full(400, 5000, np.int32)}, r"labels must lie in 0\.\.999"),
        ({"x_test": xt[:, :27]}, r"x_test: images of shape \(27, 28\), but the training "
                                 r"images .* are \(28, 28\)"),
        ({"y_train": np.minimum(y, 4)}, "y_test: label 9 is larger than every training label"),
    ]


def test_load_npz_refuses_bad_arrays_naming_them(tmp_path, subset):
    for override, match in _bad_arrays(subset):
        path = write_npz(tmp_path / "bad.npz", subset, **override)
        with pytest.raises(DatasetError, match=match) as e:
            datasets.load_npz(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def _npz_with_member(path, name, header_shape, payload, dtype="|u1"):
    """A one-member .npz whose .npy header claims ``header_shape``."""
    member = pyio.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": dtype, "fortran_order": False,
                                                  "shape": header_shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name + ".npy", member.getvalue() + payload)
    return path


def test_load_npz_refuses_bad_files(tmp_path, subset):
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    good = write_npz(tmp_path / "good.npz", subset).read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    huge = _npz_with_member(tmp_path / "huge.npz", "x_train", (2**40,), b"\0" * 10)
    short = _npz_with_member(tmp_path / "short.npz", "x_train", (1000,), b"\0" * 10)
    long_ = _npz_with_member(tmp_path / "long.npz", "x_train", (10,), b"\0" * 11)
    for path, match in [(text, "not a readable .npz file"), (cut, "not a readable .npz file"),
                        (huge, r"x_train.npy declares shape \(1099511627776,\) of uint8, "
                               r"1099511627776 bytes: more than the limit"),
                        (short, "x_train.npy is truncated"),
                        (long_, "x_train.npy has trailing bytes"),
                        (tmp_path / "absent.npz", "absent.npz: no such file"),
                        (tmp_path, "not a regular file")]:
        with pytest.raises(DatasetError, match=match) as e:
            datasets.load_npz(path)
        assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match="more than the limit of 999 bytes"):
        datasets.load_npz(write_npz(tmp_path / "d.npz", subset), max_bytes=999)


# -- load_idx -----------------------------------------------------------------------------------

def test_load_idx_reads_gzip_and_raw_files_without_a_checksum(tmp_path, subset):
    d = write_idx_dir(tmp_path / "fashion", subset)
    got = datasets.load_idx(d)
    for a, b in zip(got, subset):
        assert np.array_equal(a, b)
    # MNIST's names, not MNIST's content: the checksum (load_mnist's, verify=True) refuses them
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        datasets.load_idx(d, verify=True)
    assert np.array_equal(datasets.load(f"idx:{d}")[3], subset[3])


def test_load_idx_refuses_bad_directories(tmp_path, subset):
    with pytest.raises(DatasetError, match="no such directory"):
        datasets.load_idx(tmp_path / "absent")
    d = write_idx_dir(tmp_path / "d", subset)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        datasets.load_idx(d)
    x, y, xt, yt = subset
    cases = [
        (dict(subset=(x, y[:399], xt, yt)), "train-labels-idx1-ubyte: 399 labels for the 400 "
                                            "images of .*train-images-idx3-ubyte.gz"),
        (dict(subset=(x, y.astype(np.float32), xt, yt)),
         "train-labels-idx1-ubyte: labels must be integers"),
        (dict(subset=(x, y, xt[:, :, :20], yt)), r"images of shape \(28, 20\)"),
    ]
    for kw, match in cases:
        d = write_idx_dir(tmp_path / "bad", **kw)
        with pytest.raises(DatasetError, match=match):
            datasets.load_idx(d)
    p = d / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-30])  # the strict reader's errors name the file
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz: truncated"):
        datasets.load_idx(d)


# -- load(spec) and limit -----------------------------------------------------------------------

@pytest.mark.parametrize("spec,parsed", [
    ("embedded", ("embedded", None)), ("mnist", ("mnist", None)),
    ("mnist:/data/m", ("mnist", "/data/m")), ("idx:fashion", ("idx", "fashion")),
    ("npz:C:/d.npz", ("npz", "C:/d.npz")),
])
def test_parse_spec(spec, parsed):
    assert datasets.parse_spec(spec) == parsed


@pytest.mark.parametrize("spec,match", [
    ("npz", "a data set is embedded"), ("npz:", "give the file after the colon"),
    ("idx:", "give the directory"), ("embedded:5", "a data set is"), ("cifar", "a data set is"),
    ("", "a data set is"),
])
def test_parse_spec_refuses(spec, match):
    with pytest.raises(ValueError, match=match):
        datasets.parse_spec(spec)


def test_load_limit_and_option_checks(tmp_path, subset):
    path = write_npz(tmp_path / "d.npz", subset)
    x, y, xt, yt = datasets.load(f"npz:{path}", limit=50)
    assert len(x) == len(y) == len(xt) == len(yt) == 50
    assert np.array_equal(x, subset[0][:50]) and np.array_equal(yt, subset[3][:50])
    assert len(datasets.load(f"npz:{path}", limit=10**9)[0]) == 400
    for limit, exc in [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]:
        with pytest.raises(exc, match="limit"):
            datasets.load("embedded", limit=limit)
    with pytest.raises(ValueError, match="path applies to the spec 'mnist' alone"):
        datasets.load(f"npz:{path}", path=str(tmp_path))
    with pytest.raises(ValueError, match="download applies to MNIST"):
        datasets.load(f"npz:{path}", download=True)


# -- the command line ---------------------------------------------------------------------------

def test_train_eval_robustness_export_on_an_npz(tmp_path, subset, capsys):
    data = write_npz(tmp_path / "digits.npz", subset)
    model = tmp_path / "m.npz"
    code, out, err = run(["train", "--data", f"npz:{data}", "--limit", "200", "--units", "49",
                          "--fan-in", "9", "--hidden", "4", "--epochs", "1", "--batch-size",
                          "50", "--quiet", "--out", str(model)], capsys)
    assert code == 0, err
    assert f"(100 examples, npz:{data}); training" in out and ", 4 steps" in out  # 200 / 50
    net = io.load_model(model)
    assert net.metadata["dataset"] == f"npz:{data}" and net.metadata["limit"] == 200
    code, out, err = run(["eval", str(model), "--data", f"npz:{data}"], capsys)
    assert code == 0 and "on 100 examples" in out, err
    code, out, err = run(["robustness", str(model), "--data", f"npz:{data}", "--limit", "30",
                          "--n", "8", "--ddn-steps", "3", "--rs-queries", "2",
                          "--out", str(tmp_path / "report")], capsys)
    assert code == 0, err
    assert '"n": 8' in (tmp_path / "report" / "results.json").read_text()
    code, out, err = run(["export", str(model), str(tmp_path / "c"), "--quantize", "int8",
                          "--calibration", "data:50", "--data", f"npz:{data}"], capsys)
    assert code == 0, err
    assert "calibrated on 50 inputs" in out
    assert f"test accuracy on 100 images (npz:{data}): float32" in out


def test_train_on_an_idx_directory_of_other_images(tmp_path, capsys):
    """Not MNIST: 12x12 images of 3 classes, in MNIST's file names."""
    rng = np.random.default_rng(0)
    y, yt = rng.integers(0, 3, 90).astype(np.uint8), rng.integers(0, 3, 30).astype(np.uint8)
    x = (rng.random((90, 12, 12)) * 60 + 60 * y[:, None, None]).astype(np.uint8)
    xt = (rng.random((30, 12, 12)) * 60 + 60 * yt[:, None, None]).astype(np.uint8)
    d = write_idx_dir(tmp_path / "idx", (x, y, xt, yt))
    model = tmp_path / "m.npz"
    code, out, err = run(["train", "--data", f"idx:{d}", "--units", "16", "--fan-in", "9",
                          "--hidden", "4", "--epochs", "3", "--quiet", "--out", str(model)],
                         capsys)
    assert code == 0, err
    net = io.load_model(model)
    assert net.n_in == 144 and net.n_classes == 3
    code, out, err = run(["eval", str(model), "--data", f"idx:{d}", "--limit", "7"], capsys)
    assert code == 0 and "on 7 examples" in out, err


@pytest.mark.parametrize("command", ["train", "eval", "robustness"])
def test_bad_data_files_are_one_line_errors(tmp_path, subset, capsys, command):
    model = tmp_path / "m.npz"
    io.save_model(builders.direct((28, 28), 10, n_units=20, fan_in=4, hidden=(2,), seed=0),
                  model)
    head = {"train": ["train", "--epochs", "1", "--out", str(tmp_path / "new.npz")],
            "eval": ["eval", str(model)],
            "robustness": ["robustness", str(model), "--out", str(tmp_path / "r")]}[command]
    for override, match in _bad_arrays(subset)[:4]:
        data = write_npz(tmp_path / "bad.npz", subset, **override)
        code, out, err = run(head + ["--data", f"npz:{data}"], capsys)
        assert code == 1 and re.search(match, err)
        assert_one_error_line(err, command)
        assert str(data) in err and "output units" not in out
    code, out, err = run(head + ["--data", f"idx:{tmp_path / 'nowhere'}"], capsys)
    assert code == 1 and "no such directory" in err
    assert_one_error_line(err, command)
    assert not (tmp_path / "r").exists() and not (tmp_path / "new.npz").exists()


def test_data_that_does_not_fit_the_model(tmp_path, capsys):
    model = tmp_path / "m.npz"
    io.save_model(builders.direct((28, 28), 10, n_units=20, fan_in=4, hidden=(2,), seed=0),
                  model)
    rng = np.random.default_rng(0)
    small = tmp_path / "small.npz"
    np.savez(small, x_train=rng.random((20, 8, 8, 3)), y_train=np.arange(20) % 10,
             x_test=rng.random((5, 8, 8, 3)), y_test=np.arange(5))
    code, _, err = run(["eval", str(model), "--data", f"npz:{small}"], capsys)
    assert code == 1 and "the model reads 784 inputs" in err and "hold 192 values" in err
    many = tmp_path / "many.npz"
    np.savez(many, x_train=rng.random((20, 28, 28)), y_train=np.arange(20),
             x_test=rng.random((5, 28, 28)), y_test=np.arange(5) + 12)
    code, _, err = run(["eval", str(model), "--data", f"npz:{many}"], capsys)
    assert code == 1 and "predicts 10 classes" in err and "label 16" in err
    assert_one_error_line(err, "eval")
