"""Datasets: a checked IDX reader, MNIST from a directory (or a checksummed download), and an
embedded MNIST subset that needs no download.

MNIST is looked up, in order, in: the ``path`` argument, the ``SPARSEFAN_MNIST`` environment
variable, and the cache directory ``$XDG_CACHE_HOME/sparsefan/mnist`` (default
``~/.cache/sparsefan/mnist``). Each of the four standard files may be gzip-compressed
(``*.gz``) or raw; known files are verified against their SHA-256.

``read_idx`` treats every file as untrusted: sizes are checked, with exact integer arithmetic,
against ``MAX_IDX_BYTES`` and the real file size before anything is allocated; gzip input is
decompressed as a stream, never beyond the size its header declares; every failure is a
``DatasetError`` naming the file. Downloads are capped at ``MAX_DOWNLOAD_BYTES``.

Other data sets: ``load_idx`` reads four IDX files with MNIST's names and no checksum
(Fashion-MNIST, KMNIST and other drop-in replacements); ``load_npz`` reads an ``.npz`` holding
``x_train``, ``y_train``, ``x_test`` and ``y_test``. Both check sizes before they allocate, as
``read_idx`` does, and then each array's shape, dtype and values; ``load`` picks a reader from a
spec string (``"npz:FILE"``, ``"idx:DIR"``, ...), the form the command line's ``--data`` takes.

The embedded subset (``load_embedded``) ships inside the package: the first 10,000 training and
the first 2,000 test images of MNIST (uint8, 28x28), about 2 MB compressed. It is chosen over
scikit-learn's 8x8 digits because it is the same data format and resolution as the full
benchmark, so the README's demo exercises the real 2N-unit design (N = 784), not a toy.
MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0).
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import stat
import struct
import sys
import urllib.request
import zipfile
import zlib
from importlib import resources

import numpy as np

from sparsefan._files import atomic_write

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

# Limits for untrusted files. Every size is computed with Python ints (no wrap-around) and
# checked against these caps, and against the file's real size, before anything is allocated.
MAX_IDX_BYTES = 1 << 30
"""Largest IDX data section ``read_idx`` accepts by default (1 GiB; the largest MNIST file holds
47 MB, EMNIST's largest 547 MB). Pass ``max_bytes=`` to raise or lower it per call."""
MAX_IDX_NDIM = 32
"""Most dimensions an IDX header may declare (NumPy 1.x's limit; the format allows 255)."""
MAX_DOWNLOAD_BYTES = 64 << 20
"""Largest file ``download_mnist`` accepts from a mirror (the largest MNIST .gz is 9.9 MB)."""
# Deflate's maximum expansion is 1032:1 (two bits per 258-byte match), so a gzip file of n bytes
# decompresses to at most 1032 * n bytes: a header claiming more is rejected unread.
_GZIP_MAX_RATIO = 1032
_CHUNK = 1 << 20  # read granularity: memory grows with the data actually delivered, by this much

# IDX type codes -> big-endian numpy dtypes
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# The embedded subset's members, as the module docstring promises them (uint8, C order).
_EMBEDDED = "data/mnist_subset.npz"
_EMBEDDED_SHAPES = {"x_train": (10000, 28, 28), "y_train": (10000,),
                    "x_test": (2000, 28, 28), "y_test": (2000,)}
# What reading an untrusted file can raise besides DatasetError (gzip.BadGzipFile is an OSError).
_READ_ERRORS = (OSError, EOFError, zlib.error, struct.error, OverflowError)


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupt or fails its checksum, or its arrays are not
    a data set (shapes, dtypes or values)."""


DataArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""What every loader returns: (x_train, y_train, x_test, y_test)."""
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
"""The arrays an .npz data set holds (:func:`load_npz`)."""
MAX_CLASSES = 1000
"""Labels of a data set lie in 0..MAX_CLASSES - 1 (a larger label is more likely a corrupt or
mislabelled array than a real class)."""


def _describe(e):
    """``zlib.error: ...``, ``gzip.BadGzipFile: ...``, ``OSError: ...``."""
    kind = type(e)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return f"{name}: {e}"


def _hash_stream(f):
    h = hashlib.sha256()
    for block in iter(lambda: f.read(_CHUNK), b""):
        h.update(block)
    return h.hexdigest()


def _sha256(path):
    with open(path, "rb") as f:
        return _hash_stream(f)


def _read_at_most(f, n):
    """Up to ``n`` bytes from ``f`` (fewer only at end of stream), as a writable bytearray.
    Read in chunks, so memory follows what the stream delivers, never what a header claims."""
    buf = bytearray()
    while len(buf) < n:
        block = f.read(min(_CHUNK, n - len(buf)))
        if not block:
            break
        buf += block
    return buf


def _open_regular(path):
    """Open ``path`` for reading if it is a regular file (never blocking on a FIFO or device);
    returns (file object, size in bytes)."""
    flags = (os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DatasetError(f"{path}: not a regular file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_idx(path: str | os.PathLike[str], sha256: str | None = None,
             max_bytes: int | None = None, verify: bool = True) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array.

    Safe for untrusted files: verifies the magic number, the type code, the number of dimensions
    (1..``MAX_IDX_NDIM``), that the data size the header declares is at most ``max_bytes``
    (default ``MAX_IDX_BYTES``) and fits the file — checked before anything is allocated — and
    that the data matches the header's dimensions exactly (no truncation, no trailing bytes).
    A gzip file is decompressed as a stream and never past the size its header declares.
    Also verifies the SHA-256 of the file as stored — ``sha256`` if given, else the known
    checksum for the standard MNIST file names; ``verify=False`` skips the checksum (files that
    share MNIST's names but not its content, such as Fashion-MNIST's). Every failure is a
    :class:`DatasetError` naming the file.
    """
    path = os.fspath(path)
    limit = MAX_IDX_BYTES if max_bytes is None else int(max_bytes)
    expected = (sha256 or KNOWN_SHA256.get(os.path.basename(path))) if verify else None
    f, size = _open_regular(path)
    try:
        with f:
            if expected is not None:
                got = _hash_stream(f)
                if got != expected.lower():
                    raise DatasetError(f"{path}: SHA-256 mismatch (expected {expected}, got "
                                       f"{got}); the file is corrupt or not the canonical one")
                f.seek(0)
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if not gz:
                return _parse_idx(f, path, limit, raw_size=size)
            with gzip.GzipFile(fileobj=f, mode="rb") as g:
                return _parse_idx(g, path, limit, gz_size=size)
    except DatasetError:
        raise
    except MemoryError:
        raise DatasetError(f"{path}: not enough memory to read it") from None
    except EOFError as e:  # gzip: the compressed stream or its trailer is cut short
        raise DatasetError(f"{path}: truncated gzip stream ({e})") from None
    except _READ_ERRORS as e:
        raise DatasetError(f"{path}: unreadable ({_describe(e)})") from None


def _parse_idx(f, path, limit, raw_size=None, gz_size=None):
    head = f.read(4)
    if not head or head[:2] != b"\0\0"[:len(head)]:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    if len(head) < 4:
        raise DatasetError(f"{path}: truncated IDX header ({len(head)} bytes)")
    code, ndim = head[2], head[3]
    if code not in _IDX_TYPES:
        raise DatasetError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim < 1:
        raise DatasetError(f"{path}: IDX file with no dimensions")
    if ndim > MAX_IDX_NDIM:
        raise DatasetError(f"{path}: IDX header declares {ndim} dimensions, more than "
                           f"{MAX_IDX_NDIM}")
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    dtype = _IDX_TYPES[code]
    header = 4 + 4 * ndim
    nbytes = math.prod(dims) * dtype.itemsize  # exact: Python ints do not wrap
    if nbytes > limit:
        raise DatasetError(f"{path}: header declares dimensions {dims} of {dtype.itemsize}-byte "
                           f"values, {nbytes} bytes of data: more than the limit of {limit} "
                           "bytes (max_bytes / MAX_IDX_BYTES)")
    # NumPy refuses a shape whose nonzero dimensions overflow intp even when one of them is 0
    if math.prod(d for d in dims if d) * dtype.itemsize > sys.maxsize:
        raise DatasetError(f"{path}: dimensions {dims} are too large for an array")
    if raw_size is not None and raw_size != header + nbytes:
        if raw_size < header + nbytes:
            raise DatasetError(f"{path}: truncated: header promises {nbytes} bytes of data, "
                               f"found {raw_size - header}")
        raise DatasetError(f"{path}: trailing bytes after the data "
                           f"({raw_size - header - nbytes} bytes)")
    if gz_size is not None and header + nbytes > _GZIP_MAX_RATIO * gz_size:
        raise DatasetError(f"{path}: truncated: header promises {nbytes} bytes of data, more "
                           f"than a {gz_size}-byte gzip file can hold")
    data = _read_at_most(f, nbytes)
    if len(data) != nbytes:
        raise DatasetError(f"{path}: truncated: header promises {nbytes} bytes of data, "
                           f"found {len(data)}")
    try:
        extra = f.read(1)  # for gzip, reading to the end also verifies the CRC and length
    except gzip.BadGzipFile as e:
        if "Not a gzipped file" not in str(e):
            raise
        extra = None
    if extra is None:
        raise DatasetError(f"{path}: trailing bytes after the gzip stream")
    if extra:
        raise DatasetError(f"{path}: trailing bytes after the data")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def cache_dir() -> str:
    """Where ``download_mnist`` stores MNIST: ``$XDG_CACHE_HOME/sparsefan/mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparsefan", "mnist")


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None


def _is_cached(path, expected):
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_DOWNLOAD_BYTES:
            return False
        return _sha256(path) == expected
    except OSError:
        return False


def _download(url, dest, expected):
    """Fetch ``url`` into ``dest`` atomically (sparsefan._files.atomic_write): stream at most
    ``MAX_DOWNLOAD_BYTES`` into the temporary while hashing, and check the SHA-256 before the
    rename. On any failure ``dest`` is left untouched."""
    def fill(out):
        h, n = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(url, timeout=60) as src:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    n += len(block)
                    if n > MAX_DOWNLOAD_BYTES:
                        raise DatasetError(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes; "
                                           "not an MNIST file")
                    h.update(block)
                    out.write(block)
        except DatasetError:
            raise
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError: OSError
            raise DatasetError(f"{url}: download failed ({_describe(e)})") from None
        got = h.hexdigest()
        if got != expected:
            raise DatasetError(f"{url}: SHA-256 mismatch (expected {expected}, got {got})")

    try:
        atomic_write(dest, fill)
    except OSError as e:
        raise DatasetError(f"{dest}: cannot store the download ({_describe(e)})") from None


def download_mnist(directory: str | os.PathLike[str] | None = None,
                   mirror: str = DEFAULT_MIRROR) -> str:
    """Download the four gzip files from ``mirror`` (any URL urllib opens, file:// included)
    into ``directory`` (default: the cache), verifying each SHA-256 and refusing files over
    ``MAX_DOWNLOAD_BYTES``; each file is written atomically (fsynced, then renamed). Files already
    there with the right checksum are kept. Returns the directory."""
    directory = os.fspath(directory) if directory else cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"{directory}: cannot create the download directory ({e})") from None
    for stem in MNIST_FILES.values():
        name = stem + ".gz"
        dest = os.path.join(directory, name)
        if not _is_cached(dest, KNOWN_SHA256[name]):
            _download(mirror + name, dest, KNOWN_SHA256[name])
    return directory


def _find_all(directory):
    """The four MNIST-named files in ``directory`` (each ``.gz`` or raw), keyed as MNIST_FILES."""
    found = {key: _find(directory, stem) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[key] + "[.gz]" for key, p in found.items() if p is None]
    if missing:
        raise DatasetError(f"{directory}: missing {', '.join(missing)} (an IDX data set is four "
                           "files with MNIST's names)")
    return found


def load_mnist(path: str | os.PathLike[str] | None = None, download: bool = False,
               mirror: str = DEFAULT_MIRROR) -> DataArrays:
    """MNIST as (x_train (60000, 28, 28) uint8, y_train (60000,) uint8, x_test, y_test).

    ``path`` or ``$SPARSEFAN_MNIST`` or the cache directory must hold the four files; with
    ``download=True`` missing files are fetched into the cache (checksummed)."""
    candidates = [os.fspath(p) for p in (path, os.environ.get("SPARSEFAN_MNIST"), cache_dir())
                  if p]
    for directory in candidates:
        if all(_find(directory, s) for s in MNIST_FILES.values()):
            break
    else:
        if not download:
            raise DatasetError(
                "MNIST not found in " + ", ".join(map(repr, candidates)) + "; pass its "
                "directory, set SPARSEFAN_MNIST, or use download=True")
        directory = download_mnist(mirror=mirror)
    x, y, xt, yt = load_idx(directory, verify=True)
    if max(y.max(), yt.max()) > 9:
        raise DatasetError(f"{directory}: labels outside 0..9")
    return x, y, xt, yt


def load_idx(directory: str | os.PathLike[str], verify: bool = False) -> DataArrays:
    """A data set stored as MNIST is: the four IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` in
    ``directory``, each gzip-compressed (``.gz``, taken first) or raw, as (x_train, y_train,
    x_test, y_test). Fashion-MNIST and KMNIST ship in this form.

    Each file is read by :func:`read_idx` (sizes checked before anything is allocated), without
    a checksum unless ``verify=True`` (then MNIST's own files are checked against their SHA-256,
    as :func:`load_mnist` does). The arrays are checked as :func:`load_npz` checks its arrays;
    every failure is a :class:`DatasetError` naming the file."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DatasetError(f"{directory}: no such directory")
    paths = _find_all(directory)
    arrays = [read_idx(paths[key], verify=verify) for key in MNIST_FILES]
    return _check_split(arrays, [paths[key] for key in MNIST_FILES])


def load_npz(path: str | os.PathLike[str], max_bytes: int | None = None) -> DataArrays:
    """A data set of your own from an ``.npz`` file (``numpy.savez`` or ``savez_compressed``)
    holding the arrays ``x_train``, ``y_train``, ``x_test`` and ``y_test``:

    - images (``x_*``): shape (n, features), (n, H, W) or (n, H, W, C), the same per-image shape
      in both; uint8 pixels (0..255, scaled to [0, 1] by :func:`sparsefan.train.as_float_inputs`,
      as MNIST's are) or floats already in [0, 1] (the box the attacks and certificates assume);
    - labels (``y_*``): 1-D integers in 0..``MAX_CLASSES`` - 1, one per image, the test labels
      no larger than the largest training label.

    Read as an untrusted file: nothing is unpickled (object arrays are refused, as by
    ``np.load(allow_pickle=False)``), and each array's header is checked against the archive's
    recorded sizes and ``max_bytes`` (default ``MAX_IDX_BYTES``) before its data is read —
    ``np.load`` allocates whatever a header claims. Other members are ignored. Every failure is
    a :class:`DatasetError` naming the file and the array."""
    path = os.fspath(path)
    limit = MAX_IDX_BYTES if max_bytes is None else int(max_bytes)
    f, _ = _open_regular(path)
    try:
        with f, zipfile.ZipFile(f) as z:
            arrays = [_npy_member(z, name, path, limit=limit) for name in NPZ_ARRAYS]
    except DatasetError:
        raise
    except MemoryError:
        raise DatasetError(f"{path}: not enough memory to read it") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, RuntimeError,
            NotImplementedError) + _READ_ERRORS as e:
        raise DatasetError(f"{path}: not a readable .npz file ({_describe(e)})") from None
    return _check_split(arrays, [f"{path}: {name}" for name in NPZ_ARRAYS])


def _check_images(x, name):
    if x.ndim not in (2, 3, 4):
        raise DatasetError(f"{name}: images must be an array of shape (n, features), (n, H, W) "
                           f"or (n, H, W, C), got shape {x.shape}")
    if len(x) == 0 or 0 in x.shape[1:]:
        raise DatasetError(f"{name}: no images (shape {x.shape})")
    if x.dtype == np.uint8:
        return
    if x.dtype.kind != "f":
        raise DatasetError(f"{name}: images must hold uint8 pixels (0..255) or floats in [0, 1], "
                           f"got dtype {x.dtype}")
    lo, hi = x.min(), x.max()
    if not (lo >= 0 and hi <= 1):  # NaN fails both
        raise DatasetError(f"{name}: float pixels must lie in [0, 1], got {lo:g} .. {hi:g}; "
                           "scale them, or store uint8 pixels (0..255)")


def _check_labels(y, name, n_images, images):
    if y.ndim != 1:
        raise DatasetError(f"{name}: labels must be a 1-D array, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if len(y) != n_images:
        raise DatasetError(f"{name}: {len(y)} labels for the {n_images} images of {images}")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise DatasetError(f"{name}: labels must lie in 0..{MAX_CLASSES - 1}, got "
                           f"{y.min()} .. {y.max()}")


def _check_split(arrays, names):
    """(x_train, y_train, x_test, y_test), checked for use as a data set; ``names`` name the
    four arrays in the errors."""
    x, y, xt, yt = arrays
    for i in (0, 2):
        _check_images(arrays[i], names[i])
        _check_labels(arrays[i + 1], names[i + 1], len(arrays[i]), names[i])
    if xt.shape[1:] != x.shape[1:]:
        raise DatasetError(f"{names[2]}: images of shape {xt.shape[1:]}, but the training images "
                           f"({names[0]}) are {x.shape[1:]}")
    if yt.max() > y.max():
        raise DatasetError(f"{names[3]}: label {yt.max()} is larger than every training label "
                           f"(the largest in {names[1]} is {y.max()})")
    return x, y, xt, yt


def _read_npy_header(m, name, where):
    version = np.lib.format.read_magic(m)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(m)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(m)
    raise DatasetError(f"{where}: {name}.npy has unknown .npy version {version}")


def _npy_member(z, name, where, shape=None, limit=MAX_IDX_BYTES):
    """Member ``name``.npy of the open zip ``z`` as a native-order, C-ordered array; its header
    (version, dtype, shape) is checked against the zip's recorded size and ``limit`` before the
    data is read. With ``shape`` it must be a C-ordered uint8 array of that shape (the embedded
    subset); else any array of booleans or numbers."""
    try:
        info = z.getinfo(name + ".npy")
    except KeyError:
        raise DatasetError(f"{where}: member {name}.npy is missing") from None
    if shape is not None and info.file_size > math.prod(shape) + (1 << 16):
        raise DatasetError(f"{where}: {name}.npy is {info.file_size} bytes, too large for "
                           f"a uint8 array of shape {shape}")
    with z.open(info) as m:
        hshape, fortran, dtype = _read_npy_header(m, name, where)
        hshape = tuple(hshape)
        if shape is not None:
            if dtype != np.uint8 or fortran or hshape != shape:
                raise DatasetError(f"{where}: {name}.npy must be a C-ordered uint8 array of "
                                   f"shape {shape}, got {dtype} {hshape}"
                                   f"{' (Fortran order)' if fortran else ''}")
        elif dtype.kind not in "biuf" or dtype.fields is not None:
            raise DatasetError(f"{where}: {name}.npy holds {dtype} values, not numbers "
                               "(Python objects are never unpickled)")
        nbytes = math.prod(hshape) * dtype.itemsize  # exact: Python ints do not wrap
        if nbytes > min(limit, sys.maxsize):
            raise DatasetError(f"{where}: {name}.npy declares shape {hshape} of {dtype}, "
                               f"{nbytes} bytes: more than the limit of {limit} bytes")
        if nbytes > info.file_size:
            raise DatasetError(f"{where}: {name}.npy is truncated")
        data = _read_at_most(m, nbytes)
        if len(data) != nbytes:
            raise DatasetError(f"{where}: {name}.npy is truncated")
        if m.read(1):
            raise DatasetError(f"{where}: {name}.npy has trailing bytes")
    flat = np.frombuffer(data, dtype=dtype)
    arr = flat.reshape(hshape[::-1]).T if fortran else flat.reshape(hshape)
    return np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))


def load_embedded() -> DataArrays:
    """The embedded MNIST subset: (x_train (10000, 28, 28) uint8, y_train, x_test (2000, 28,
    28), y_test). No file access outside the package, no download. The archive is read with the
    same checks as ``read_idx`` (shapes and sizes before reading, no pickles); a damaged copy is a
    ``DatasetError``."""
    return _read_subset(resources.files("sparsefan").joinpath(_EMBEDDED))


def _read_subset(src):
    """The four arrays of an MNIST-subset .npz (``src``: anything with ``open("rb")``)."""
    where = str(src)
    try:
        with src.open("rb") as f, zipfile.ZipFile(f) as z:
            out = [_npy_member(z, name, where, shape)
                   for name, shape in _EMBEDDED_SHAPES.items()]
    except DatasetError:
        raise
    except MemoryError:
        raise DatasetError(f"{where}: not enough memory to read it") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, RuntimeError,
            NotImplementedError) + _READ_ERRORS as e:
        raise DatasetError(f"{where}: the embedded subset is unreadable "
                           f"({_describe(e)})") from None
    x, y, xt, yt = out
    if y.max() > 9 or yt.max() > 9:
        raise DatasetError(f"{where}: labels outside 0..9")
    return x, y, xt, yt


SPEC_FORMS = "embedded, mnist, mnist:DIR, idx:DIR or npz:FILE"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a data set spec into (kind, location): ``"embedded"`` (:func:`load_embedded`),
    ``"mnist"`` or ``"mnist:DIR"`` (:func:`load_mnist`, checksummed), ``"idx:DIR"``
    (:func:`load_idx`, no checksum) or ``"npz:FILE"`` (:func:`load_npz`). Only the form is
    checked here, not the files; anything else is a ValueError."""
    if not isinstance(spec, str):
        raise TypeError(f"a data set spec must be a str, got {type(spec).__name__}")
    kind, colon, where = spec.partition(":")
    if kind in ("embedded", "mnist") and not colon:
        return kind, None
    if kind in ("mnist", "idx", "npz") and colon:
        if not where:
            raise ValueError(f"{spec!r}: give the {'file' if kind == 'npz' else 'directory'} "
                             "after the colon")
        return kind, where
    raise ValueError(f"a data set is {SPEC_FORMS}; got {spec!r}")


def load(spec: str, path: str | os.PathLike[str] | None = None, download: bool = False,
         limit: int | None = None) -> DataArrays:
    """(x_train, y_train, x_test, y_test) of the data set ``spec`` names (see
    :func:`parse_spec`): ``"embedded"``, ``"mnist"`` (from ``path``, ``$SPARSEFAN_MNIST`` or the
    cache; ``download=True`` fetches it), ``"mnist:DIR"``, ``"idx:DIR"`` or ``"npz:FILE"``.
    ``limit`` keeps the first ``limit`` images of each split (both, so a quick run stays quick
    end to end)."""
    kind, where = parse_spec(spec)
    if path is not None and (kind != "mnist" or where):
        raise ValueError(f"path applies to the spec 'mnist' alone, got {spec!r}")
    if download and kind != "mnist":
        raise ValueError(f"download applies to MNIST alone, got {spec!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))):
        raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if kind == "embedded":
        arrays = load_embedded()
    elif kind == "mnist":
        arrays = load_mnist(where or path, download=download)
    else:
        assert where is not None  # parse_spec gives idx and npz their location
        arrays = load_idx(where) if kind == "idx" else load_npz(where)
    if limit is None:
        return arrays
    x, y, xt, yt = (a[:limit] for a in arrays)
    return x, y, xt, yt
