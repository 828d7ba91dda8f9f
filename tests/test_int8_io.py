"""int8 model files: exact round trips, and crafted files refused with a ModelFileError that
names the problem (the reader checks what the int8 kernels rely on)."""
import io as pyio
import json
import os
import tempfile
import zipfile

import numpy as np
import pytest

import sparsefan as sf
from sparsefan import builders
from sparsefan.io import ModelFileError, load_model, load_quantized, save_model


def quantized(builder="hierarchy", seed=1):
    net = builders.BUILDERS[builder](input_shape=(6, 6), n_classes=3, seed=seed)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        layer.bias = (0.2 * rng.standard_normal(layer.bias_shape)).astype(np.float32)
    return sf.quantize(net, rng.random((40, 36), dtype=np.float32), percentile=99.5)


@pytest.mark.parametrize("builder", ["direct", "hierarchy", "partition_ensemble", "dense_mlp"])
def test_round_trip_is_exact(builder, tmp_path, rng):
    q = quantized(builder)
    path = tmp_path / "q.npz"
    save_model(q, path, metadata={"note": "int8", "acc": 0.5})
    back = load_quantized(path)
    assert isinstance(back, sf.QuantizedNetwork)
    assert (back.name, back.aggregate, back.input_shape, back.n_classes) == \
        (q.name, q.aggregate, q.input_shape, q.n_classes)
    assert (back.calibration_size, back.percentile) == (40, 99.5)
    assert back.metadata == {"note": "int8", "acc": 0.5}
    for a, b in zip(q.layers, back.layers):
        assert a.connectivity == b.connectivity
        assert (a.c_in, a.c_out, a.activation) == (b.c_in, b.c_out, b.activation)
        assert a.in_scale == b.in_scale and a.out_scale == b.out_scale
        for name in ("qweight", "weight_scale", "bias", "multiplier"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    x = rng.random((25, 36), dtype=np.float32)
    assert np.array_equal(q.unit_logits(x), back.unit_logits(x))
    # and a second save writes the same bytes
    save_model(back, tmp_path / "again.npz", metadata={"note": "int8", "acc": 0.5})
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()


def test_exported_c_of_a_loaded_model_is_the_same(tmp_path):
    from sparsefan.export import export_c

    q = quantized()
    save_model(q, tmp_path / "q.npz")
    a = export_c(q, tmp_path / "a", "net")
    b = export_c(load_quantized(tmp_path / "q.npz"), tmp_path / "b", "net")
    for fa, fb in zip(a.files, b.files):
        assert open(fa, "rb").read() == open(fb, "rb").read()


def test_the_two_kinds_point_at_each_other(tmp_path):
    q = quantized()
    save_model(q, tmp_path / "q.npz")
    with pytest.raises(ModelFileError, match="load_quantized"):
        load_model(tmp_path / "q.npz")
    save_model(builders.direct((6, 6), 3, n_units=5, fan_in=4, hidden=(3,)), tmp_path / "f.npz")
    with pytest.raises(ModelFileError, match="load_model"):
        load_quantized(tmp_path / "f.npz")


def test_write_is_atomic(tmp_path, monkeypatch):
    q = quantized()
    path = tmp_path / "q.npz"
    save_model(q, path)
    before = path.read_bytes()
    import numpy.lib.format as fmt

    calls = {"n": 0}
    real = fmt.write_array

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(fmt, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        save_model(q, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["q.npz"]


def test_bad_metadata_is_refused_at_write_time(tmp_path):
    with pytest.raises(TypeError, match="metadata"):
        save_model(quantized(), tmp_path / "q.npz", metadata=[1])
    with pytest.raises(TypeError, match="QuantizedNetwork"):
        save_model("q", tmp_path / "q.npz")


# -- crafted files ------------------------------------------------------------------------------

@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.npz"
    save_model(quantized(), path)
    return path


def items_of(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def npy(arr):
    buf = pyio.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr))
    return buf.getvalue()


def read_npy(data):
    return np.lib.format.read_array(pyio.BytesIO(data))


def rewrite(path, items):
    out = path.parent / "bad.npz"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)
    return out


def with_meta(path, change):
    items = items_of(path)
    meta = json.loads(read_npy(items["meta.json"]).tobytes())
    change(meta)
    items["meta.json"] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return rewrite(path, items)


def with_member(path, name, change):
    items = items_of(path)
    items[name] = npy(change(read_npy(items[name]).copy()))
    return rewrite(path, items)


def set_item(a, index, value):
    a[index] = value
    return a


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(version=2), "int8 format version 2"),
    (lambda m: m.update(version=True), "format version"),
    (lambda m: m.update(format="other"), "format is 'other'"),
    (lambda m: m["layers"][0].update(in_scale=-1.0), "in_scale"),
    (lambda m: m["layers"][0].update(in_scale=0), "in_scale"),
    (lambda m: m["layers"][0].update(in_scale="1"), "in_scale"),
    (lambda m: m["layers"][0].update(in_scale=1e300), "in_scale"),
    (lambda m: m["layers"][0].pop("out_scale"), "out_scale"),
    (lambda m: m["layers"][0].update(out_scale=12.5), "out_scale"),
    (lambda m: m["layers"][-1].update(out_scale=1.0), "out_scale must be None"),
    (lambda m: m["layers"][0].update(activation="maxmin"), "activation"),
    (lambda m: m["layers"][0].update(c_out=5), "must have shape"),
    (lambda m: m["layers"][0].update(n_out=2**40), "invalid sizes"),
    (lambda m: m.update(percentile=0.0), "percentile"),
    (lambda m: m.update(percentile=None), "percentile"),
    (lambda m: m.update(calibration_size=-1), "calibration_size"),
    (lambda m: m.pop("calibration_size"), "calibration_size"),
    (lambda m: m.update(aggregate="max"), "aggregate"),
    (lambda m: m.update(input_shape=[5, 5]), "input_shape"),
    (lambda m: m.update(layers=[]), "no layers"),
])
def test_bad_meta_is_refused(good, change, match):
    with pytest.raises(ModelFileError, match=match):
        load_quantized(with_meta(good, change))


def test_nan_scales_in_json_are_refused(good):
    items = items_of(good)
    text = read_npy(items["meta.json"]).tobytes().decode()
    meta = json.loads(text)
    old = json.dumps(meta["layers"][0]["in_scale"])
    items["meta.json"] = npy(np.frombuffer(text.replace(old, "NaN", 1).encode(), np.uint8))
    with pytest.raises(ModelFileError, match="in_scale"):
        load_quantized(rewrite(good, items))


@pytest.mark.parametrize("name,change,match", [
    ("layers/0/qweight", lambda a: set_item(a, (0, 0, 0), -128), r"\[-127, 127\]"),
    ("layers/0/qweight", lambda a: a.astype(np.int16), "dtype int8"),
    ("layers/0/qweight", lambda a: a.astype(np.uint8), "dtype int8"),
    ("layers/0/weight_scale", lambda a: set_item(a, (0, 0), 0.0), "positive"),
    ("layers/0/weight_scale", lambda a: set_item(a, (0, 0), -1.0), "positive"),
    ("layers/0/weight_scale", lambda a: set_item(a, (0, 0), np.nan), "weight_scale"),
    ("layers/1/bias", lambda a: set_item(a, (0, 0), np.inf), "bias"),
    ("layers/1/bias", lambda a: a.astype(np.float64), "dtype float32"),
    ("layers/0/indices", lambda a: set_item(a, 0, 10**6), "indices"),
    ("layers/0/indptr", lambda a: a[:-1], "shape"),
])
def test_bad_arrays_are_refused(good, name, change, match):
    with pytest.raises(ModelFileError, match=match):
        load_quantized(with_member(good, name, change))


def test_accumulators_that_could_overflow_are_refused(tmp_path):
    # one unit of 140,000 terms of 127: 127 * 127 * 140,000 > 2**31 - 1
    n = 140_000
    conn0 = sf.Connectivity.from_rows(1, [[0]])
    ident = sf.Connectivity.identity(1)
    l0 = sf.quantized.QuantizedLayer(conn0, 1, n, "relu", np.full((1, 1, n), 127, np.int8),
                                     np.ones((1, n), np.float32), np.zeros((1, n), np.float32),
                                     1.0, 1.0)
    l1 = sf.quantized.QuantizedLayer(ident, n, 2, None, np.full((1, n, 2), 1, np.int8),
                                     np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32),
                                     1.0, None)
    path = tmp_path / "q.npz"
    save_model(sf.QuantizedNetwork([l0, l1], 2), path)
    bad = with_member(path, "layers/1/qweight", lambda a: np.full_like(a, 127))
    with pytest.raises(ModelFileError, match="overflow int32"):
        load_quantized(bad)


def test_missing_and_extra_members(good):
    items = items_of(good)
    del items["layers/1/weight_scale"]
    with pytest.raises(ModelFileError, match="weight_scale' is missing"):
        load_quantized(rewrite(good, items))
    items = items_of(good)
    items["layers/1/weight"] = npy(np.zeros(3, np.float32))
    with pytest.raises(ModelFileError, match="unexpected members"):
        load_quantized(rewrite(good, items))


def test_compressed_members_are_refused(good):
    items = items_of(good)
    out = good.parent / "z.npz"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, d in items.items():
            z.writestr(n, d)
    with pytest.raises(ModelFileError, match="compressed"):
        load_quantized(out)


def test_not_a_file(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        load_quantized(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="not a zip"):
        load_quantized(tmp_path / "junk.npz")


# -- mutation fuzzing: the only exception is ModelFileError --------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _good_bytes():
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "q.npz")
        net = builders.direct((4, 4), 3, n_units=5, fan_in=3, hidden=(2,), seed=1)
        q = sf.quantize(net, np.random.default_rng(0).random((10, 16), dtype=np.float32))
        save_model(q, p, metadata={"k": [1, 2, {"z": None}]})
        with open(p, "rb") as f:
            return f.read()


GOOD = _good_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_members_raise_only_model_file_errors(tmp_path_factory, data):
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
    p = tmp_path_factory.mktemp("fuzz") / "q.npz"
    p.write_bytes(buf.getvalue())
    try:
        q = load_quantized(p)
    except ModelFileError:
        return
    # what loads runs: the kernels' preconditions held
    q.predict(np.random.default_rng(0).random((3, 16), dtype=np.float32))
