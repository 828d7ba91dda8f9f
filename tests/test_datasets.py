import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile

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


def test_verify_false_skips_the_checksum_of_known_names(tmp_path):
    """Fashion-MNIST and KMNIST use MNIST's file names: read_idx(verify=False) takes them."""
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8)))
    assert np.array_equal(read_idx(p, verify=False), np.arange(10))
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        read_idx(p)
    with pytest.raises(DatasetError, match="truncated"):  # the size checks stay
        p.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8))[:-1])
        read_idx(p, verify=False)


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
    for spec in (f"mnist:{MNIST_DIR}", f"idx:{MNIST_DIR}"):  # the same files, by spec
        assert np.array_equal(datasets.load(spec, limit=100)[2], xt[:100])


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


# -- untrusted IDX files ------------------------------------------------------------------------
# Each test below fails (in at least one of its cases) on the reader as it was before the size
# checks: a bare MemoryError, a plain ValueError or a zlib.error escaped, an array came back, or
# the error named the wrong problem.

def _header(code, dims):
    return bytes([0, 0, code, len(dims)]) + np.array(dims, ">u4").tobytes()


@pytest.mark.parametrize("compress,dims,nbytes", [
    (False, (65536,) * 4, 2 ** 64),                # int64 product wraps to 0
    (True, (2 ** 32 - 1, 2 ** 32 - 1, 3), 3 * (2 ** 32 - 1) ** 2),  # wraps negative
    (False, (2 ** 32 - 1,) * 3, (2 ** 32 - 1) ** 3),  # wraps to 12.9 GB, under the old cap
])
def test_read_idx_dimension_product_is_exact(tmp_path, compress, dims, nbytes):
    data = _header(0x08, dims)
    p = tmp_path / "x.idx"
    p.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DatasetError, match=f"{nbytes} bytes of data: more than the limit"):
        read_idx(p)


_LIMITED = r"""
import re, resource, sys
from sparsefan.datasets import DatasetError, read_idx
vm = int(re.search(r"VmSize:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) << 10
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), hard))
for p in sys.argv[1:]:
    try:
        read_idx(p)
        r = "returned"
    except DatasetError as e:
        r = f"DatasetError: {e}"
    except BaseException as e:
        r = f"{type(e).__name__}: {e}"
    print(r, flush=True)
"""


def _read_with_memory_limit(paths):
    """read_idx on each path in a fresh interpreter limited to 256 MiB of address space beyond
    what it holds after importing sparsefan: the outcome per path."""
    resource = pytest.importorskip("resource")
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status")
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY and hard < 4 << 30:
        pytest.skip("RLIMIT_AS hard limit too low")
    root = os.path.dirname(os.path.dirname(os.path.abspath(datasets.__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _LIMITED, *map(str, paths)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(paths), out.stdout + out.stderr
    return lines


def test_read_idx_huge_claims_allocate_nothing(tmp_path):
    """Headers claiming far more data than a 4 KB (or 1 MB) file holds fail on the header,
    before any allocation: under a 256 MiB address-space limit the old reader raised a bare
    MemoryError reserving the claimed 768 MiB or 12.9 GB."""
    cases = {
        "wrap12G.idx": _header(0x08, (2 ** 32 - 1,) * 3) + bytes(4096),
        "claim768M.idx": _header(0x08, (768, 1024, 1024)) + bytes(4096),
        "claim768M.idx.gz": gzip.compress(_header(0x08, (768, 1024, 1024)) + bytes(4096)),
        # 1 MiB of incompressible data: within deflate's 1032:1 bound, so the stream is read
        "random768M.idx.gz": gzip.compress(
            _header(0x08, (768, 1024, 1024))
            + np.random.default_rng(0).bytes(1 << 20), compresslevel=1),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    results = _read_with_memory_limit([tmp_path / n for n in cases])
    expect = ["more than the limit", "truncated: header promises 805306368 bytes of data, "
              "found 4096", "more than a \\d+-byte gzip file can hold",
              "truncated: header promises 805306368 bytes of data, found 1048576"]
    for outcome, name, pattern in zip(results, cases, expect):
        assert outcome.startswith("DatasetError: "), (name, outcome)
        assert name in outcome and re.search(pattern, outcome), (name, outcome)


def _zeros_gzip(n):
    """n zero bytes as concatenated gzip members of 1 MiB each: about 1 KB per MiB."""
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    q, r = divmod(n, 1 << 20)
    return member * q + gzip.compress(bytes(r))


def test_read_idx_gzip_bomb(tmp_path):
    """A 1.2 MB gzip file whose header claims, and whose stream really holds, 1.2 GB is refused
    on the header (the old reader reserved the 1.2 GB); one whose header claims 4 KB and then
    holds 1 GiB more is refused after decompressing just past the claimed 4 KB."""
    big = tmp_path / "bomb.idx.gz"
    big.write_bytes(gzip.compress(_header(0x08, (1200, 1000, 1000)))
                    + _zeros_gzip(1200 * 1000 * 1000))
    assert big.stat().st_size < 2 << 20
    tail = tmp_path / "tail.idx.gz"
    tail.write_bytes(gzip.compress(_header(0x08, (64, 64))) + _zeros_gzip(4096 + (1 << 30)))
    r1, r2 = _read_with_memory_limit([big, tail])
    assert r1.startswith("DatasetError: ") and "1200000000 bytes of data: more than the limit" \
        in r1, r1
    assert r2.startswith("DatasetError: ") and "trailing bytes after the data" in r2, r2


def test_read_idx_reports_every_truncation(tmp_path):
    data = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    packed = gzip.compress(data)
    p = tmp_path / "x.idx"
    for blob, start in ((data, 1), (packed, 2)):
        for cut in range(start, len(blob)):
            p.write_bytes(blob[:cut])
            with pytest.raises(DatasetError, match="truncated") as e:
                read_idx(p)
            assert str(p) in str(e.value)


@pytest.mark.parametrize("blob,match", [
    (gzip.compress(idx_bytes(np.zeros((2, 3), np.uint8))) + b"junk",
     "trailing bytes after the gzip stream"),
    (gzip.compress(idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x00"),
     "trailing bytes after the data"),
    (_header(0x08, (65536,) * 4) + bytes(24), "more than the limit"),  # old: 0 bytes + trailing
    (idx_bytes(np.zeros((2, 3), np.uint8)) + bytes(5), "trailing bytes after the data"
     " \\(5 bytes\\)"),
], ids=["gzip-junk", "gzip-data", "wrapped-dims", "raw"])
def test_read_idx_reports_trailing_bytes(tmp_path, blob, match):
    p = tmp_path / "x.idx"
    p.write_bytes(blob)
    with pytest.raises(DatasetError, match=match):
        read_idx(p)


def _bad_deflate():
    b = bytearray(gzip.compress(idx_bytes(np.zeros((2, 3), np.uint8))))
    b[10] = 0x07  # first deflate block: reserved block type 3
    return bytes(b)


def _bad_crc():
    b = bytearray(gzip.compress(idx_bytes(np.zeros((2, 3), np.uint8))))
    b[-8] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("blob,match", [
    (_header(0x08, (1,) * 255) + b"\x00", "255 dimensions, more than 32"),
    (_header(0x08, (1,) * 33) + b"\x00", "33 dimensions, more than 32"),
    (_header(0x0E, (0, 2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1)), "too large for an array"),
    (_header(0x42, (2, 3)) + bytes(6), "unknown IDX type code 0x42"),
    (b"\x00\x01\x08\x01\x00\x00\x00\x01\x00", "bad magic number"),
    (_header(0x08, ()), "no dimensions"),
    (_bad_deflate(), "unreadable \\(zlib.error: .*invalid block type"),
    (_bad_crc(), "unreadable \\(gzip.BadGzipFile: CRC check failed"),
    (b"\x1f\x8b\x09" + bytes(20), "unreadable \\(gzip.BadGzipFile: Unknown compression method"),
], ids=["ndim255", "ndim33", "zero-dim-overflow", "type", "magic", "ndim0", "deflate", "crc",
        "gzip-method"])
def test_read_idx_rejects_bad_headers_and_streams(tmp_path, blob, match):
    p = tmp_path / "x.idx"
    p.write_bytes(blob)
    with pytest.raises(DatasetError, match=match) as e:
        read_idx(p)
    assert str(e.value).startswith(str(p) + ": ")


def test_read_idx_refuses_non_regular_files(tmp_path):
    with pytest.raises(DatasetError, match="not a regular file"):
        read_idx(tmp_path)
    if hasattr(os, "mkfifo"):  # must not block waiting for a writer
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(DatasetError, match="not a regular file"):
            read_idx(tmp_path / "fifo")
    with pytest.raises(DatasetError, match="no such file"):
        read_idx(tmp_path / "absent")


def test_read_idx_max_bytes(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(idx_bytes(np.zeros((10, 10), np.uint8)))
    assert read_idx(p, max_bytes=100).shape == (10, 10)
    with pytest.raises(DatasetError, match="100 bytes of data: more than the limit of 99"):
        read_idx(p, max_bytes=99)


# -- the embedded subset's reader and downloads -------------------------------------------------

def _subset(tmp_path, **override):
    arrays = {k: np.zeros(s, np.uint8) for k, s in datasets._EMBEDDED_SHAPES.items()}
    arrays.update(override)
    p = tmp_path / "subset.npz"
    np.savez_compressed(p, **arrays)
    return p


def test_subset_reader_checks_members(tmp_path):
    x, y, xt, yt = datasets._read_subset(_subset(tmp_path))
    assert x.shape == (10000, 28, 28) and yt.shape == (2000,) and x.flags.writeable
    for override, match in [
        ({"y_test": np.zeros(1999, np.uint8)}, "y_test.npy must be a C-ordered uint8 array of "
                                               "shape \\(2000,\\)"),
        ({"y_test": np.zeros(2000, np.int64)}, "must be a C-ordered uint8"),
        ({"y_test": np.zeros(2000, object)}, "must be a C-ordered uint8"),
        ({"x_test": np.asfortranarray(np.zeros((2000, 28, 28), np.uint8))}, "Fortran order"),
        ({"y_train": np.full(10000, 10, np.uint8)}, "labels outside 0..9"),
    ]:
        with pytest.raises(DatasetError, match=match):
            datasets._read_subset(_subset(tmp_path, **override))
    p = _subset(tmp_path)
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="subset.npz: the embedded subset is unreadable"):
        datasets._read_subset(p)
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x_train.npy", b"")
    with pytest.raises(DatasetError, match="unreadable \\(ValueError: EOF: reading magic"):
        datasets._read_subset(p)
    member = io.BytesIO()
    np.save(member, np.zeros((10000, 28, 28), np.uint8))
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x_train.npy", member.getvalue())
    with pytest.raises(DatasetError, match="member y_train.npy is missing"):
        datasets._read_subset(p)


def _fake_mirror(tmp_path, monkeypatch, size=1000):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for i, stem in enumerate(datasets.MNIST_FILES.values()):
        blob = bytes([i]) * size
        (mirror / (stem + ".gz")).write_bytes(blob)
        monkeypatch.setitem(datasets.KNOWN_SHA256, stem + ".gz",
                            hashlib.sha256(blob).hexdigest())
    return mirror


def test_download_is_fsynced_and_atomic(tmp_path, monkeypatch):
    mirror = _fake_mirror(tmp_path, monkeypatch)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd)) or real_fsync(fd))
    dest = tmp_path / "dest"
    datasets.download_mnist(str(dest), mirror=f"file://{mirror}/")
    names = sorted(s + ".gz" for s in datasets.MNIST_FILES.values())
    assert sorted(os.listdir(dest)) == names  # no temporaries left behind
    # each file fsynced before its rename, then the directory after it
    kinds = ["dir" if stat.S_ISDIR(st.st_mode) else st.st_size for st in synced]
    assert kinds == [1000, "dir"] * 4
    synced.clear()
    datasets.download_mnist(str(dest), mirror="file:///nonexistent/")  # all cached: no fetch
    assert synced == []


def test_download_caps_and_reports_failures(tmp_path, monkeypatch):
    mirror = _fake_mirror(tmp_path, monkeypatch, size=1000)
    dest = tmp_path / "dest"
    monkeypatch.setattr(datasets, "MAX_DOWNLOAD_BYTES", 999)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: more than 999 bytes"):
        datasets.download_mnist(str(dest), mirror=f"file://{mirror}/")
    assert os.listdir(dest) == []
    monkeypatch.setattr(datasets, "MAX_DOWNLOAD_BYTES", 1 << 20)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: download failed"):
        datasets.download_mnist(str(dest), mirror=f"file://{tmp_path}/nowhere/")
    with pytest.raises(DatasetError, match="download failed"):
        datasets.download_mnist(str(dest), mirror="nosuchscheme://x/")
    assert os.listdir(dest) == []
