import gzip
import os
import shutil

import numpy as np
import pytest

from sparsefan import datasets
from sparsefan.datasets import DatasetError, read_idx

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
have_mnist = pytest.mark.skipif(not os.path.isdir(MNIST_DIR),
                                reason="../shared/data/mnist not present")


def idx_bytes(arr, code=0x08):
    arr = np.asarray(arr)
    head = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_round_trip(tmp_path, compress):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    p = tmp_path / "x.idx"
    p.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(p)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)
    f = np.array([[1.5, -2.0]], np.float32)
    p.write_bytes(idx_bytes(f, 0x0D))
    assert np.array_equal(read_idx(p), f)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d[:-1], "truncated: header promises 24 bytes of data, found 23"),
    (lambda d: d + b"\x00", "trailing bytes after the data"),
    (lambda d: b"\x01" + d[1:], "bad magic number"),
    (lambda d: d[:2] + b"\x42" + d[3:], "unknown IDX type code 0x42"),
    (lambda d: d[:10], "truncated IDX header"),
    (lambda d: b"", "bad magic number"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, mutate, match):
    p = tmp_path / "x.idx"
    p.write_bytes(mutate(idx_bytes(np.zeros((2, 3, 4), np.uint8))))
    with pytest.raises(DatasetError, match=match):
        read_idx(p)


def test_read_idx_truncated_gzip(tmp_path):
    p = tmp_path / "x.idx.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 50), np.uint8)))[:-20])
    with pytest.raises(DatasetError, match="truncated|unreadable"):
        read_idx(p)


def test_checksum_mismatch_for_known_names(tmp_path):
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(idx_bytes(np.zeros(10, np.uint8)))
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        read_idx(p)
    q = tmp_path / "other"
    q.write_bytes(idx_bytes(np.zeros(10, np.uint8)))
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        read_idx(q, sha256="0" * 64)


def test_missing_mnist_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSEFAN_MNIST", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="MNIST not found"):
        datasets.load_mnist(str(tmp_path / "nowhere"))


@have_mnist
def test_load_mnist_from_directory_and_env(monkeypatch):
    x, y, xt, yt = datasets.load_mnist(MNIST_DIR)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    monkeypatch.setenv("SPARSEFAN_MNIST", MNIST_DIR)
    assert np.array_equal(datasets.load_mnist()[3], yt)


@have_mnist
def test_download_from_a_file_url(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARSEFAN_MNIST", raising=False)
    mirror = "file://" + os.path.abspath(MNIST_DIR) + "/"
    x, y, xt, yt = datasets.load_mnist(str(tmp_path / "absent"), download=True, mirror=mirror)
    assert len(x) == 60000
    assert sorted(os.listdir(tmp_path / "cache" / "sparsefan" / "mnist")) == sorted(
        s + ".gz" for s in datasets.MNIST_FILES.values())


@have_mnist
def test_download_rejects_a_corrupt_mirror(tmp_path, monkeypatch):
    mirror_dir = tmp_path / "mirror"
    shutil.copytree(MNIST_DIR, mirror_dir)
    with open(mirror_dir / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: SHA-256 mismatch"):
        datasets.download_mnist(str(tmp_path / "dest"), mirror=f"file://{mirror_dir}/")
    assert not (tmp_path / "dest" / "t10k-labels-idx1-ubyte.gz").exists()


def test_embedded_subset():
    x, y, xt, yt = datasets.load_embedded()
    assert x.shape == (10000, 28, 28) and xt.shape == (2000, 28, 28)
    assert x.dtype == np.uint8 and set(np.unique(y)) == set(range(10))


@have_mnist
def test_embedded_subset_is_the_head_of_mnist():
    x, y, xt, yt = datasets.load_embedded()
    fx, fy, fxt, fyt = datasets.load_mnist(MNIST_DIR)
    assert np.array_equal(x, fx[:10000]) and np.array_equal(yt, fyt[:2000])
