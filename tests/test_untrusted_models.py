"""Model files from strangers: every malformed file is a ModelFileError naming the problem,
nothing passes silently, nothing is decompressed or allocated beyond the file's real size."""
import io as pyio
import json
import os
import struct
import tempfile
import zipfile

import numpy as np
import pytest

from sparsefan import builders
from sparsefan.io import ModelFileError, load_model, save_model
from sparsefan.network import Network


@pytest.fixture
def good(tmp_path):
    net = builders.direct((6, 6), 3, n_units=7, fan_in=4, hidden=(3,), seed=3)
    path = tmp_path / "good.npz"
    save_model(net, path, metadata={"note": "x"})
    return path


def members(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def write(path, items, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in items:
            z.writestr(name, data)
    return path


def npy(arr):
    buf = pyio.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr))
    return buf.getvalue()


def meta_npy(meta):
    return npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))


def with_meta(items, change):
    out = []
    for name, data in items:
        if name == "meta.json":
            meta = json.loads(np.lib.format.read_array(pyio.BytesIO(data)).tobytes())
            change(meta)
            data = meta_npy(meta)
        out.append((name, data))
    return out


def header(shape, descr="<f4"):
    """A hand-written .npy v1 header claiming ``shape``, padded like numpy's."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (63 - (len(text) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def replace(items, name, data):
    return [(n, data if n == name else d) for n, d in items]


def patch_zip(path, offset_of, value_bytes):
    """Overwrite a field of every local and central header of the archive in place."""
    raw = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", offset_of[0]), (b"PK\x01\x02", offset_of[1])):
        start = 0
        while (i := raw.find(sig, start)) >= 0:
            raw[i + off:i + off + len(value_bytes)] = value_bytes
            start = i + 4
    path.write_bytes(bytes(raw))


def test_metadata_nested_deeper_than_the_cap(good, tmp_path):
    net = load_model(good)
    deep = {}
    for _ in range(2000):
        deep = {"a": deep}
    with pytest.raises(ValueError, match="nested deeper than"):
        save_model(net, tmp_path / "deep.npz", metadata=deep)
    assert not (tmp_path / "deep.npz").exists()
    raw = ('{"format": "sparsefan-model", "metadata": ' + '{"a": ' * 2000 + "1"
           + "}" * 2001).encode()
    bad = write(tmp_path / "b.npz", replace(members(good), "meta.json",
                                            npy(np.frombuffer(raw, np.uint8))))
    with pytest.raises(ModelFileError, match="nested"):
        load_model(bad)
    ok = {}
    for _ in range(60):
        ok = {"a": ok}
    save_model(net, tmp_path / "ok.npz", metadata=ok)
    assert load_model(tmp_path / "ok.npz").metadata == ok


def test_compressed_members_are_refused(good, tmp_path):
    for method in (zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        bad = write(tmp_path / f"c{method}.npz", members(good), compression=method)
        with pytest.raises(ModelFileError, match="is compressed"):
            load_model(bad)


def test_unknown_compression_method_and_encryption_flag(good, tmp_path):
    bad = write(tmp_path / "m.npz", members(good))
    patch_zip(bad, (8, 10), struct.pack("<H", 77))  # compression method field
    with pytest.raises(ModelFileError, match=r"is compressed \(method 77\)"):
        load_model(bad)
    bad = write(tmp_path / "e.npz", members(good))
    patch_zip(bad, (6, 8), struct.pack("<H", 1))  # general purpose flag: encrypted
    with pytest.raises(ModelFileError, match="is encrypted"):
        load_model(bad)


@pytest.mark.parametrize("shape,match", [
    ("(18446744073709551616,)", "malformed .npy header"),  # 2**64: more digits than allowed
    ("(9223372036854775807,)", "must have shape"),  # 2**63 - 1
    ("(4294967296, 4294967296, 1)", "must have shape"),  # wraps to 0 in int64
])
def test_huge_or_wrapping_npy_shapes(good, tmp_path, shape, match):
    bad = write(tmp_path / "h.npz", replace(members(good), "layers/0/weight", header(shape)))
    with pytest.raises(ModelFileError, match=match):
        load_model(bad)


def test_shapes_whose_product_wraps_in_the_layer_spec(good, tmp_path):
    def change(meta):
        meta["layers"][0]["c_out"] = 2**62
        meta["layers"][0]["nnz"] = 2**40
    bad = write(tmp_path / "w.npz", with_meta(members(good), change))
    with pytest.raises(ModelFileError):
        load_model(bad)


@pytest.mark.parametrize("junk", [b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,",
                                  b"{'descr': '<f4', 'fortran_order': False, 'shape': ((3,),)}",
                                  b"{'descr': '''", b"\xff\xfe", b"{" * 3000])
def test_npy_headers_are_parsed_by_a_bounded_parser(good, tmp_path, junk):
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(junk)) + junk
    bad = write(tmp_path / "j.npz", replace(members(good), "layers/0/bias", data))
    with pytest.raises(ModelFileError, match="layers/0/bias"):
        load_model(bad)


@pytest.mark.parametrize("name", ["meta.json", "layers/0/weight"])
def test_duplicate_members_are_refused(good, tmp_path, name):
    items = members(good)
    items.append((name, dict(items)[name]))
    with pytest.warns(UserWarning, match="Duplicate name"):
        bad = write(tmp_path / "d.npz", items)
    with pytest.raises(ModelFileError, match="appears more than once"):
        load_model(bad)


def test_an_input_shape_whose_product_wraps(good, tmp_path):
    wraps = [2, 2**63 + 18]  # 2 * (2**63 + 18) = 2**64 + 36: 36 in uint64
    assert int(np.prod(np.array(wraps, dtype=np.uint64))) == 36

    def change(meta):
        meta["input_shape"] = wraps
    bad = write(tmp_path / "s.npz", with_meta(members(good), change))
    with pytest.raises(ModelFileError, match="input_shape"):
        load_model(bad)
    net = load_model(good)
    with pytest.raises(ValueError, match="does not hold"):
        Network(net.layers, 3, input_shape=wraps)


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_version_must_be_the_integer_one(good, tmp_path, version):
    bad = write(tmp_path / "v.npz", with_meta(members(good),
                                              lambda m: m.__setitem__("version", version)))
    with pytest.raises(ModelFileError, match="format version"):
        load_model(bad)


@pytest.mark.parametrize("key,value", [("metadata", [1, 2]), ("metadata", "text"),
                                       ("name", 5), ("name", {"a": 1})])
def test_metadata_of_the_wrong_json_type(good, tmp_path, key, value):
    bad = write(tmp_path / "t.npz", with_meta(members(good),
                                              lambda m: m.__setitem__(key, value)))
    with pytest.raises(ModelFileError, match=key):
        load_model(bad)


def test_trailing_bytes_after_an_array(good, tmp_path):
    items = members(good)
    bad = write(tmp_path / "t.npz", replace(items, "layers/1/bias",
                                            dict(items)["layers/1/bias"] + b"\0" * 8))
    with pytest.raises(ModelFileError, match="bytes after its data"):
        load_model(bad)


def test_the_cli_info_of_a_file_with_bad_metadata_is_a_message(good, tmp_path, capsys):
    from sparsefan.cli import main

    bad = write(tmp_path / "t.npz", with_meta(members(good),
                                              lambda m: m.__setitem__("metadata", [1])))
    assert main(["info", str(bad)]) == 1  # an error, not a usage error
    assert "metadata" in capsys.readouterr().err


# -- mutation fuzzing: the only exception is ModelFileError --------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _good_bytes():
    net = builders.direct((4, 4), 3, n_units=5, fan_in=3, hidden=(2,), seed=1)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.npz")
        save_model(net, p, metadata={"k": [1, 2, {"z": None}]})
        with open(p, "rb") as f:
            return f.read()


GOOD = _good_bytes()


def _load_bytes(data, tmp_path_factory):
    p = tmp_path_factory.mktemp("fuzz") / "m.npz"
    p.write_bytes(data)
    try:
        load_model(p)
    except ModelFileError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1,
                max_size=8))
def test_mutated_files_raise_only_model_file_errors(tmp_path_factory, edits):
    data = bytearray(GOOD)
    for pos, val in edits:
        data[pos] = val
    _load_bytes(bytes(data), tmp_path_factory)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_members_with_valid_crcs_raise_only_model_file_errors(tmp_path_factory, data):
    """Mutations inside a member, the archive rewritten around it (valid CRCs): the reader's
    own parsers see the damage, not zipfile's checks."""
    with zipfile.ZipFile(pyio.BytesIO(GOOD)) as z:
        items = [(i.filename, z.read(i)) for i in z.infolist()]
    k = data.draw(st.integers(0, len(items) - 1))
    name, payload = items[k]
    payload = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["set", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(payload) - 1, 0)))
        if op == "set" and payload:
            payload[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del payload[pos:pos + data.draw(st.integers(1, 16))]
        else:
            payload[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    items[k] = (name, bytes(payload))
    buf = pyio.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in items:
            z.writestr(n, d)
    _load_bytes(buf.getvalue(), tmp_path_factory)
