"""Atheris fuzz harness for ``sparsefan.datasets.read_idx``.

Contract: for any input file the reader returns an array matching the file's own header or
raises ``DatasetError``; any other exception (MemoryError, OverflowError, zlib.error, EOFError,
gzip.BadGzipFile, struct.error, a plain ValueError, ...) is a finding.

The first input byte picks how the rest becomes the file: 0 = as is, 1 = gzip-compressed (so the
fuzzer reaches the IDX parser behind a valid gzip stream), 2 = as is behind a gzip magic number.
Without a corpus directory on the command line a small seed corpus of valid files is generated.

    PYTHONPATH=. python tests/fuzz/fuzz_idx.py -max_total_time=60 [-atheris_runs=N] [corpus/]

Not collected by pytest (the file is not named test_*.py); tests/test_fuzz_idx.py holds the same
contract as hypothesis properties.
"""
import os
import shutil
import struct
import sys
import tempfile

import atheris

# gzip (pure Python over zlib) is instrumented too, for coverage feedback through its header and
# multi-member parsing; it is first imported here, by sparsefan.datasets
with atheris.instrument_imports(include=["sparsefan", "gzip"]):
    import gzip
    from sparsefan.datasets import DatasetError, read_idx

import numpy as np  # noqa: E402  (not instrumented)

TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# libFuzzer exits without running Python's atexit handlers: one fixed scratch directory, emptied
# at each start, instead of a new temporary directory per run
WORK = os.path.join(tempfile.gettempdir(), f"sparsefan-fuzz_idx-{os.getuid()}"
                    if hasattr(os, "getuid") else "sparsefan-fuzz_idx")
shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
PATH = os.path.join(WORK, "input.idx")


def to_file(data):
    mode, body = data[0] % 3, data[1:]
    if mode == 1:
        return gzip.compress(body, compresslevel=1, mtime=0)
    if mode == 2:
        return b"\x1f\x8b" + body
    return body


def TestOneInput(data):
    if not data:
        return
    blob = to_file(data)
    with open(PATH, "wb") as f:
        f.write(blob)
    try:
        arr = read_idx(PATH)
    except DatasetError:
        return
    raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(TYPES[raw[2]])
    if arr.shape != dims or arr.dtype != dtype.newbyteorder("=") or \
            len(raw) != 4 + 4 * ndim + arr.size * dtype.itemsize:
        raise AssertionError(f"read_idx returned {arr.dtype} {arr.shape} for header "
                             f"{raw[:4 + 4 * ndim].hex()} and {len(raw)} bytes")


def seed_corpus():
    directory = os.path.join(WORK, "corpus")
    os.makedirs(directory)
    for i, (code, t) in enumerate(sorted(TYPES.items())):
        for j, shape in enumerate([(3,), (2, 3), (2, 2, 2), (0, 4)]):
            arr = np.arange(int(np.prod(shape)), dtype=np.dtype(t).newbyteorder("=")) \
                .reshape(shape)
            body = bytes([0, 0, code, len(shape)]) + np.array(shape, ">u4").tobytes() + \
                arr.astype(np.dtype(t)).tobytes()
            for mode in (0, 1):
                with open(os.path.join(directory, f"seed-{i}-{j}-{mode}"), "wb") as f:
                    f.write(bytes([mode]) + body)
    return directory


def main():
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(seed_corpus())
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
