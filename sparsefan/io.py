"""Model files and training checkpoints: versioned, pickle-free, validated, written atomically.

A model file is a zip archive of ``.npy`` members (the ``.npz`` layout), read here by a strict
parser, never by pickle:

    meta.json            uint8 (n,)  UTF-8 JSON: {"format": "sparsefan-model", "version": 1,
                                     "name", "n_classes", "aggregate", "input_shape",
                                     "layers": [{"n_in", "n_out", "nnz", "c_in", "c_out",
                                     "activation"}...], "metadata": {...}}
    layers/<i>/indptr    int64 (n_out + 1,)
    layers/<i>/indices   int32 (nnz,)
    layers/<i>/weight    float32 (nnz, c_in, c_out)
    layers/<i>/bias      float32 (n_out, c_out)

All arrays are little-endian and C-ordered. Loading checks, before any C code runs: the format
name and version, that exactly the expected members exist, each member's dtype and shape
against meta.json (read from the ``.npy`` header before any data is allocated), index bounds and
repeats (via Connectivity), finite weights, and that consecutive layers fit together.
A checkpoint is the same container with ``"format": "sparsefan-checkpoint"`` and extra members
for the optimizer state and the best weights so far.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from sparsefan.connectivity import Connectivity
from sparsefan.layers import ACTIVATIONS, FanIn
from sparsefan.network import Network

MODEL_FORMAT = "sparsefan-model"
CHECKPOINT_FORMAT = "sparsefan-checkpoint"
VERSION = 1
_MAX_META_BYTES = 16 << 20
_DTYPES = {"int32": np.dtype("<i4"), "int64": np.dtype("<i8"), "float32": np.dtype("<f4"),
           "uint8": np.dtype("u1")}


class ModelFileError(ValueError):
    """A model or checkpoint file is malformed, of another version, or inconsistent."""


# -- writing ------------------------------------------------------------------------------------

def _atomic_zip(path, members):
    """Write {name: array} as an uncompressed .npz-style zip to ``path`` atomically: a temporary
    file in the same directory, flushed and fsynced, then renamed over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
                for name, arr in members.items():
                    with z.open(name, "w", force_zip64=True) as m:
                        np.lib.format.write_array(m, np.ascontiguousarray(arr),
                                                  allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _json_member(obj):
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def _network_meta(network, fmt, metadata):
    return {
        "format": fmt, "version": VERSION, "name": network.name,
        "n_classes": network.n_classes, "aggregate": network.aggregate,
        "input_shape": list(network.input_shape),
        "layers": [{"n_in": l.n_in, "n_out": l.n_out, "nnz": l.connectivity.nnz,
                    "c_in": l.c_in, "c_out": l.c_out, "activation": l.activation}
                   for l in network.layers],
        "metadata": metadata or {},
    }


def _network_members(network):
    members = {}
    for i, l in enumerate(network.layers):
        members[f"layers/{i}/indptr"] = l.connectivity.indptr
        members[f"layers/{i}/indices"] = l.connectivity.indices
        members[f"layers/{i}/weight"] = l.weight
        members[f"layers/{i}/bias"] = l.bias
    return members


def save_model(network, path, metadata=None):
    """Write ``network`` to ``path`` (atomically). ``metadata``: a JSON-serializable dict kept
    in the file (for example training settings and test accuracy)."""
    if not isinstance(network, Network):
        raise TypeError(f"network must be a sparsefan Network, got {type(network).__name__}")
    members = {"meta.json": _json_member(_network_meta(network, MODEL_FORMAT, metadata))}
    members.update(_network_members(network))
    _atomic_zip(path, members)


# -- reading ------------------------------------------------------------------------------------

class _Reader:
    """Reads .npy members of a zip by their headers, checking dtype and shape before reading."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self.zip = zipfile.ZipFile(self.path, "r")
            self.infos = {i.filename: i for i in self.zip.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ModelFileError(f"{self.path}: not a sparsefan file (not a zip archive: {e})")

    def close(self):
        self.zip.close()

    def names(self):
        return set(self.infos)

    def array(self, name, dtype, shape):
        if name not in self.infos:
            raise ModelFileError(f"{self.path}: member {name!r} is missing")
        info = self.infos[name]
        try:
            with self.zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ModelFileError(f"{self.path}: {name}: unknown .npy version {version}")
                want = _DTYPES[dtype]
                if hdtype.hasobject or hdtype != want:
                    raise ModelFileError(
                        f"{self.path}: {name} must have dtype {dtype}, got {hdtype}")
                if fortran:
                    raise ModelFileError(f"{self.path}: {name} must be C-ordered")
                if shape is not None and tuple(hshape) != tuple(shape):
                    raise ModelFileError(
                        f"{self.path}: {name} must have shape {tuple(shape)}, got {hshape}")
                nbytes = int(np.prod(hshape, dtype=np.int64)) * want.itemsize
                if nbytes > info.file_size:
                    raise ModelFileError(f"{self.path}: {name} is truncated")
                data = f.read(nbytes)
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise ModelFileError(f"{self.path}: {name} is unreadable: {e}")
        if len(data) != nbytes:
            raise ModelFileError(f"{self.path}: {name} is truncated")
        return np.frombuffer(data, dtype=want).reshape(hshape).copy()

    def json(self, name):
        info = self.infos.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: member {name!r} is missing")
        if info.file_size > _MAX_META_BYTES:
            raise ModelFileError(f"{self.path}: {name} is too large")
        raw = self.array(name, "uint8", None)
        if raw.ndim != 1:
            raise ModelFileError(f"{self.path}: {name} must be one-dimensional")
        try:
            obj = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{self.path}: {name} is not valid JSON: {e}")
        if not isinstance(obj, dict):
            raise ModelFileError(f"{self.path}: {name} must hold a JSON object")
        return obj


def _field(meta, key, kind, path, where="meta.json"):
    if key not in meta:
        raise ModelFileError(f"{path}: {where} lacks {key!r}")
    value = meta[key]
    ok = (isinstance(value, kind) and not isinstance(value, bool)) if kind is int else \
        isinstance(value, kind)
    if not ok:
        raise ModelFileError(f"{path}: {where} {key!r} has the wrong type")
    return value


def _read_network(reader, fmt):
    path = reader.path
    meta = reader.json("meta.json")
    if meta.get("format") != fmt:
        raise ModelFileError(f"{path}: format is {meta.get('format')!r}, expected {fmt!r}")
    version = meta.get("version")
    if version != VERSION:
        raise ModelFileError(f"{path}: format version {version!r} is not supported "
                             f"(this sparsefan reads version {VERSION})")
    specs = _field(meta, "layers", list, path)
    if not specs:
        raise ModelFileError(f"{path}: no layers")
    layers = []
    try:
        for i, spec in enumerate(specs):
            where = f"meta.json layers[{i}]"
            if not isinstance(spec, dict):
                raise ModelFileError(f"{path}: {where} must be an object")
            n_in, n_out, nnz, c_in, c_out = (
                _field(spec, k, int, path, where) for k in ("n_in", "n_out", "nnz", "c_in",
                                                            "c_out"))
            if min(n_in, n_out, c_in, c_out) < 1 or nnz < 0 or n_in >= 2**31:
                raise ModelFileError(f"{path}: {where} has invalid sizes")
            act = spec.get("activation")
            if act not in ACTIVATIONS:
                raise ModelFileError(f"{path}: {where} activation {act!r} is unknown")
            indptr = reader.array(f"layers/{i}/indptr", "int64", (n_out + 1,))
            indices = reader.array(f"layers/{i}/indices", "int32", (nnz,))
            weight = reader.array(f"layers/{i}/weight", "float32", (nnz, c_in, c_out))
            bias = reader.array(f"layers/{i}/bias", "float32", (n_out, c_out))
            conn = Connectivity(n_in, indptr, indices)
            layers.append(FanIn(conn, c_in, c_out, activation=act, weight=weight, bias=bias))
        input_shape = _field(meta, "input_shape", list, path)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape):
            raise ModelFileError(f"{path}: input_shape must list positive ints")
        network = Network(layers, _field(meta, "n_classes", int, path),
                          _field(meta, "aggregate", str, path), input_shape,
                          name=str(meta.get("name", "network")))
    except ModelFileError:
        raise
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: {e}") from None
    return network, meta


def _expected_members(n_layers):
    return {"meta.json"} | {f"layers/{i}/{a}" for i in range(n_layers)
                            for a in ("indptr", "indices", "weight", "bias")}


def load_model(path):
    """Read a model file written by :func:`save_model`; returns a :class:`Network`.

    Raises :class:`ModelFileError` (a ValueError) for anything malformed."""
    reader = _Reader(path)
    try:
        network, meta = _read_network(reader, MODEL_FORMAT)
        extra = reader.names() - _expected_members(len(network.layers))
        if extra:
            raise ModelFileError(f"{reader.path}: unexpected members {sorted(extra)}")
    finally:
        reader.close()
    network.metadata = meta.get("metadata", {})
    return network


# -- checkpoints --------------------------------------------------------------------------------

def save_checkpoint(path, network, optimizer, config, epoch, history, best):
    state = {"epoch": epoch, "t": optimizer.t, "history": history, "config": config.to_json(),
             "best_accuracy": None if best is None else best[0],
             "best_epoch": None if best is None else best[1]}
    meta = _network_meta(network, CHECKPOINT_FORMAT, {})
    members = {"meta.json": _json_member(meta), "state.json": _json_member(state)}
    members.update(_network_members(network))
    for i, bufs in enumerate(optimizer.state):
        for j, b in enumerate(bufs):
            members[f"optimizer/{i}/{j}"] = b
    if best is not None:
        for i, (w, b) in enumerate(best[2]):
            members[f"best/{i}/weight"] = w
            members[f"best/{i}/bias"] = b
    _atomic_zip(path, members)


def load_checkpoint(path, network, optimizer, config):
    """Restore ``network`` and ``optimizer`` from a checkpoint; None if ``path`` does not exist.

    The checkpoint must come from the same architecture (identical connectivity) and the same
    training configuration (``n_threads`` aside, which cannot change results)."""
    if not os.path.exists(path):
        return None
    reader = _Reader(path)
    try:
        saved, _ = _read_network(reader, CHECKPOINT_FORMAT)
        state = reader.json("state.json")
        if len(saved.layers) != len(network.layers) or any(
                a.connectivity != b.connectivity or a.weight_shape != b.weight_shape
                for a, b in zip(saved.layers, network.layers)):
            raise ModelFileError(f"{path}: the checkpoint is of a different architecture")
        want = json.loads(config.to_json())
        have = json.loads(state.get("config", "{}"))
        want.pop("n_threads", None)
        have.pop("n_threads", None)
        if want != have:
            raise ModelFileError(f"{path}: the checkpoint was written with another training "
                                 f"configuration: {have}")
        bufs = [[reader.array(f"optimizer/{i}/{j}", "float32", b.shape)
                 for j, b in enumerate(st)] for i, st in enumerate(optimizer.state)]
        best = None
        if state.get("best_epoch") is not None:
            best = (float(state["best_accuracy"]), int(state["best_epoch"]),
                    [(reader.array(f"best/{i}/weight", "float32", l.weight_shape),
                      reader.array(f"best/{i}/bias", "float32", l.bias_shape))
                     for i, l in enumerate(network.layers)])
    finally:
        reader.close()
    for layer, s in zip(network.layers, saved.layers):
        with layer.edit() as (w, b):  # in place: the optimizer state refers to these layers
            w[...] = s.weight
            b[...] = s.bias
    for st, loaded in zip(optimizer.state, bufs):
        for b, l in zip(st, loaded):
            b[...] = l
    optimizer.t = int(state["t"])
    return {"epoch": int(state["epoch"]), "history": list(state["history"]), "best": best}
