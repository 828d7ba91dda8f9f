"""Model files: exact round trips, atomic writes, and clear errors for crafted files."""
import io as pyio
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from sparsefan import builders
from sparsefan.io import ModelFileError, load_model, save_model


@pytest.fixture
def net():
    n = builders.hierarchy((6, 6), 3, levels=2, n_units=7, fan_in=3, channels=(2, 3), seed=3)
    rng = np.random.default_rng(0)
    for layer in n.layers:
        layer.bias = rng.standard_normal(layer.bias_shape).astype(np.float32)
    return n


@pytest.mark.parametrize("builder", ["direct", "hierarchy", "partition_ensemble", "dense_mlp"])
def test_round_trip_is_exact(builder, tmp_path, rng):
    net = builders.BUILDERS[builder](input_shape=(6, 6), n_classes=3, seed=1)
    path = tmp_path / "m.npz"
    save_model(net, path, metadata={"note": "hello", "acc": 0.5})
    back = load_model(path)
    assert back.name == net.name and back.aggregate == net.aggregate
    assert back.input_shape == net.input_shape and back.metadata == {"note": "hello", "acc": 0.5}
    for a, b in zip(net.layers, back.layers):
        assert a.connectivity == b.connectivity
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert (a.c_in, a.c_out, a.activation) == (b.c_in, b.c_out, b.activation)
    x = rng.random((20, 36), dtype=np.float32)
    assert np.array_equal(net.unit_logits(x), back.unit_logits(x))


def test_write_is_atomic(net, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save_model(net, path)
    before = path.read_bytes()
    # a failure half-way through writing leaves the old file intact and no temporary behind
    import numpy.lib.format as fmt

    calls = {"n": 0}
    real = fmt.write_array

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(fmt, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        save_model(net, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


# -- crafted files ------------------------------------------------------------------------------

def members_of(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def npy(arr):
    buf = pyio.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=True)
    return buf.getvalue()


def write(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


def meta_of(members):
    raw = np.lib.format.read_array(pyio.BytesIO(members["meta.json"]))
    return json.loads(raw.tobytes())


def with_meta(members, meta):
    m = dict(members)
    m["meta.json"] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return m


def crafted(kind, members):
    m = dict(members)
    if kind == "index_out_of_range":
        idx = np.lib.format.read_array(pyio.BytesIO(m["layers/0/indices"]))
        idx[0] = 36
        m["layers/0/indices"] = npy(idx)
    elif kind == "negative_index":
        idx = np.lib.format.read_array(pyio.BytesIO(m["layers/1/indices"]))
        idx[-1] = -5
        m["layers/1/indices"] = npy(idx)
    elif kind == "repeated_index":
        idx = np.lib.format.read_array(pyio.BytesIO(m["layers/0/indices"]))
        idx[1] = idx[0]
        m["layers/0/indices"] = npy(idx)
    elif kind == "bad_indptr":
        p = np.lib.format.read_array(pyio.BytesIO(m["layers/0/indptr"]))
        p[2] = p[1] - 1
        m["layers/0/indptr"] = npy(p)
    elif kind == "wrong_weight_shape":
        w = np.lib.format.read_array(pyio.BytesIO(m["layers/1/weight"]))
        m["layers/1/weight"] = npy(w[:-1])
    elif kind == "wrong_dtype":
        w = np.lib.format.read_array(pyio.BytesIO(m["layers/0/weight"]))
        m["layers/0/weight"] = npy(w.astype(np.float64))
    elif kind == "nan_weight":
        w = np.lib.format.read_array(pyio.BytesIO(m["layers/0/weight"]))
        w.flat[3] = np.nan
        m["layers/0/weight"] = npy(w)
    elif kind == "truncated_member":
        m["layers/0/weight"] = m["layers/0/weight"][:-8]
    elif kind == "pickled_object":
        m["layers/0/weight"] = npy(np.array([{"evil": 1}], dtype=object))
    elif kind == "pickle_meta":
        m["meta.json"] = pickle.dumps({"format": "sparsefan-model"})
    elif kind == "missing_member":
        del m["layers/2/bias"]
    elif kind == "extra_member":
        m["payload"] = npy(np.zeros(3, np.float32))
    elif kind == "bad_version":
        meta = meta_of(m)
        meta["version"] = 99
        m = with_meta(m, meta)
    elif kind == "bad_format":
        meta = meta_of(m)
        meta["format"] = "something-else"
        m = with_meta(m, meta)
    elif kind == "bad_json":
        m["meta.json"] = npy(np.frombuffer(b"{not json", np.uint8))
    elif kind == "layer_chain_mismatch":
        meta = meta_of(m)
        meta["layers"][1]["c_in"] = 5
        m = with_meta(m, meta)
    elif kind == "huge_claimed_shape":
        meta = meta_of(m)
        meta["layers"][0]["nnz"] = 10**12
        m = with_meta(m, meta)
    elif kind == "bad_activation":
        meta = meta_of(m)
        meta["layers"][0]["activation"] = "os.system"
        m = with_meta(m, meta)
    return m


KINDS = {
    "index_out_of_range": r"indices must lie in \[0, n_in=36\)",
    "negative_index": r"indices must lie in",
    "repeated_index": r"reads input \d+ more than once",
    "bad_indptr": r"indptr must be non-decreasing",
    "wrong_weight_shape": r"layers/1/weight must have shape",
    "wrong_dtype": r"layers/0/weight must have dtype float32",
    "nan_weight": r"weight contains NaN or Inf",
    "truncated_member": r"layers/0/weight is truncated",
    "pickled_object": r"layers/0/weight must have dtype float32, got object",
    "pickle_meta": r"meta.json is not an .npy array",
    "missing_member": r"member 'layers/2/bias' is missing",
    "extra_member": r"unexpected members \['payload'\]",
    "bad_version": r"format version 99 is not supported",
    "bad_format": r"format is 'something-else'",
    "bad_json": r"meta.json is not valid JSON",
    "layer_chain_mismatch": r"layers/1/weight must have shape \(21, 5, 3\), got \(21, 2, 3\)",
    "huge_claimed_shape": r"layers/0/indices must have shape \(1000000000000,\), got \(21,\)",
    "bad_activation": r"activation 'os.system' is unknown",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crafted_files_raise_clear_errors(kind, net, tmp_path):
    good = tmp_path / "good.npz"
    save_model(net, good)
    bad = tmp_path / "bad.npz"
    write(bad, crafted(kind, members_of(good)))
    with pytest.raises(ModelFileError, match=KINDS[kind]):
        load_model(bad)


def test_not_a_zip(tmp_path):
    p = tmp_path / "m.npz"
    p.write_bytes(b"hello world")
    with pytest.raises(ModelFileError, match="not a zip archive"):
        load_model(p)
    p.write_bytes(pickle.dumps({"a": np.zeros(3)}))
    with pytest.raises(ModelFileError, match="not a sparsefan file"):
        load_model(p)


def test_truncated_file(net, tmp_path):
    p = tmp_path / "m.npz"
    save_model(net, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(p)


def test_checkpoint_is_not_a_model(net, tmp_path):
    from sparsefan import datasets
    from sparsefan.train import TrainConfig, train

    x, y, _, _ = datasets.load_embedded()
    net = builders.direct((28, 28), 10, n_units=20, fan_in=5, hidden=(2,), seed=0)
    ck = tmp_path / "c.ckpt"
    train(net, x[:64], y[:64].astype(np.int64), TrainConfig(epochs=1), checkpoint=ck,
          progress=False, log=lambda s: None)
    with pytest.raises(ModelFileError, match="format is 'sparsefan-checkpoint'"):
        load_model(ck)
