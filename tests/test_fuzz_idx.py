"""Property tests for read_idx on untrusted input: for arbitrary bytes, and for mutated valid IDX
files (raw, gzipped, mutated before or after compression), the reader either returns an array
whose shape, dtype and contents match the file's own header, or raises DatasetError naming the
file — nothing else. (tests/fuzz/fuzz_idx.py is the same contract under atheris.)"""
import gzip
import struct

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from sparsefan.datasets import DatasetError, read_idx  # noqa: E402

# the IDX type codes, independently of the reader's own table
TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def check(path, blob):
    """The contract, with an oracle that decodes the header itself. Returns the array or None."""
    path.write_bytes(blob)
    try:
        arr = read_idx(path)
    except DatasetError as e:
        assert str(e).startswith(f"{path}: "), e
        return None
    raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    assert raw[:2] == b"\x00\x00" and raw[2] in TYPES and 1 <= raw[3] <= 32
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(TYPES[raw[2]])
    assert arr.shape == dims
    assert arr.dtype == dtype.newbyteorder("=") and arr.dtype.isnative
    data = raw[4 + 4 * ndim:]
    assert len(data) == arr.size * dtype.itemsize
    assert arr.tobytes() == np.frombuffer(data, dtype).astype(arr.dtype).tobytes()
    return arr


def idx_file(code, shape, payload):
    dtype = np.dtype(TYPES[code])
    n = int(np.prod(shape)) * dtype.itemsize
    data = (payload * (n // max(len(payload), 1) + 1))[:n] if payload else bytes(n)
    return bytes([0, 0, code, len(shape)]) + np.array(shape, ">u4").tobytes() + data


@st.composite
def mutated(draw, blob):
    """``blob`` with a few random edits: flip, overwrite, insert, delete, truncate, append, or
    overwrite a 4-byte word with a large or boundary value (hits the header's dimensions)."""
    b = bytearray(blob)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append",
                                   "word"]))
        i = draw(st.integers(0, max(len(b) - 1, 0)))
        if op == "flip" and b:
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and b:
            b[i] = draw(st.integers(0, 255))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and b:
            del b[i:i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del b[i:]
        elif op == "append":
            b += draw(st.binary(min_size=1, max_size=16))
        elif op == "word" and len(b) >= 4:
            j = draw(st.integers(0, (len(b) - 4) // 4)) * 4
            w = draw(st.sampled_from([0, 1, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1]))
            b[j:j + 4] = struct.pack(">I", w)
    return bytes(b)


valid = st.builds(idx_file, st.sampled_from(sorted(TYPES)),
                  st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple),
                  st.binary(max_size=32))


@SETTINGS
@given(blob=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=300).map(lambda b: b"\x1f\x8b" + b),
                      st.binary(max_size=300).map(lambda b: b"\x00\x00" + b)))
def test_arbitrary_bytes(tmp_path, blob):
    check(tmp_path / "x.idx", blob)


@SETTINGS
@given(data=st.data(), blob=valid)
def test_mutated_raw(tmp_path, data, blob):
    assert check(tmp_path / "x.idx", blob) is not None  # the unmutated file is read
    check(tmp_path / "x.idx", data.draw(mutated(blob)))


@SETTINGS
@given(data=st.data(), blob=valid, before=st.booleans())
def test_mutated_gzip(tmp_path, data, blob, before):
    assert check(tmp_path / "x.idx.gz", gzip.compress(blob, mtime=0)) is not None
    if before:  # a well-formed gzip stream of a damaged IDX file
        blob = gzip.compress(data.draw(mutated(blob)), mtime=0)
    else:  # a damaged gzip stream
        blob = data.draw(mutated(gzip.compress(blob, mtime=0)))
    check(tmp_path / "x.idx.gz", blob)
