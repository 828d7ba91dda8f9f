"""Datasets: a checked IDX reader, MNIST from a directory (or a checksummed download), and an
embedded MNIST subset that needs no download.

MNIST is looked up, in order, in: the ``path`` argument, the ``SPARSEFAN_MNIST`` environment
variable, and the cache directory ``$XDG_CACHE_HOME/sparsefan/mnist`` (default
``~/.cache/sparsefan/mnist``). Each of the four standard files may be gzip-compressed
(``*.gz``) or raw; known files are verified against their SHA-256.

The embedded subset (``load_embedded``) ships inside the package: the first 10,000 training and
the first 2,000 test images of MNIST (uint8, 28x28), about 2 MB compressed. It is chosen over
scikit-learn's 8x8 digits because it is the same data format and resolution as the full
benchmark, so the README's demo exercises the real 2N-unit design (N = 784), not a toy.
MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from importlib import resources

import numpy as np

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the canonical files, gzip-compressed and raw.
KNOWN_SHA256 = {
    "train-images-idx3-ubyte.gz": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte.gz": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte.gz": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte.gz": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# IDX type codes -> big-endian numpy dtypes
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MAX_IDX_BYTES = 1 << 34


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupt or fails its checksum."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_idx(path, sha256=None):
    """Read an IDX file (gzip-compressed or raw) into a numpy array.

    Verifies the magic number, the type code, that the data size matches the header's
    dimensions exactly (no truncation, no trailing bytes) and the SHA-256 of the file as stored
    — ``sha256`` if given, else the known checksum for the standard MNIST file names.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    expected = sha256 or KNOWN_SHA256.get(os.path.basename(path))
    if expected is not None:
        got = _sha256(path)
        if got != expected:
            raise DatasetError(f"{path}: SHA-256 mismatch (expected {expected}, got {got}); "
                               "the file is corrupt or not the canonical one")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DatasetError(f"{path}: not an IDX file (bad magic number)")
            code, ndim = head[2], head[3]
            if code not in _IDX_TYPES:
                raise DatasetError(f"{path}: unknown IDX type code 0x{code:02x}")
            if ndim < 1:
                raise DatasetError(f"{path}: IDX file with no dimensions")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DatasetError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            dtype = _IDX_TYPES[code]
            nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            if nbytes > _MAX_IDX_BYTES:
                raise DatasetError(f"{path}: header claims {nbytes} bytes of data")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise DatasetError(f"{path}: truncated: header promises {nbytes} bytes of data, "
                                   f"found {len(data)}")
            if f.read(1):
                raise DatasetError(f"{path}: trailing bytes after the data")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: unreadable ({e})") from None
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparsefan", "mnist")


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None


def download_mnist(directory=None, mirror=DEFAULT_MIRROR):
    """Download the four gzip files from ``mirror`` (any URL urllib opens, file:// included)
    into ``directory`` (default: the cache), verifying each SHA-256; each file is written
    atomically. Returns the directory."""
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    for stem in MNIST_FILES.values():
        name = stem + ".gz"
        dest = os.path.join(directory, name)
        if os.path.isfile(dest) and _sha256(dest) == KNOWN_SHA256[name]:
            continue
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name,
                                                                    timeout=60) as src:
                shutil.copyfileobj(src, out)
            got = _sha256(tmp)
            if got != KNOWN_SHA256[name]:
                raise DatasetError(f"{mirror}{name}: SHA-256 mismatch (got {got})")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return directory


def load_mnist(path=None, download=False, mirror=DEFAULT_MIRROR):
    """MNIST as (x_train (60000, 28, 28) uint8, y_train (60000,) uint8, x_test, y_test).

    ``path`` or ``$SPARSEFAN_MNIST`` or the cache directory must hold the four files; with
    ``download=True`` missing files are fetched into the cache (checksummed)."""
    candidates = [p for p in (path, os.environ.get("SPARSEFAN_MNIST"), cache_dir()) if p]
    for directory in candidates:
        if all(_find(directory, s) for s in MNIST_FILES.values()):
            break
    else:
        if not download:
            raise DatasetError(
                "MNIST not found in " + ", ".join(map(repr, candidates)) + "; pass its "
                "directory, set SPARSEFAN_MNIST, or use download=True")
        directory = download_mnist(mirror=mirror)
    arrays = {key: read_idx(_find(directory, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{directory}: {split} images {x.shape} and labels {y.shape} "
                               "do not match")
        if y.size and y.max() > 9:
            raise DatasetError(f"{directory}: {split} labels outside 0..9")
    return (arrays["train_images"], arrays["train_labels"], arrays["test_images"],
            arrays["test_labels"])


def load_embedded():
    """The embedded MNIST subset: (x_train (10000, 28, 28) uint8, y_train, x_test (2000, 28,
    28), y_test). No file access outside the package, no download."""
    with resources.files("sparsefan").joinpath("data/mnist_subset.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]


def load(name, path=None, download=False):
    """``name`` = "embedded" or "mnist": (x_train, y_train, x_test, y_test)."""
    if name == "embedded":
        return load_embedded()
    if name == "mnist":
        return load_mnist(path, download=download)
    raise ValueError(f"dataset must be 'embedded' or 'mnist', got {name!r}")
