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

An int8 model (:func:`sparsefan.quantize`) is the same container with
``"format": "sparsefan-int8-model", "version": 1``; meta.json adds ``"calibration_size"``,
``"percentile"`` and, per layer, ``"in_scale"`` and ``"out_scale"`` (JSON numbers, exact for
float64; ``out_scale`` null for the last layer), and each layer holds

    layers/<i>/indptr        int64 (n_out + 1,)
    layers/<i>/indices       int32 (nnz,)
    layers/<i>/qweight       int8 (nnz, c_in, c_out)     values in [-127, 127]
    layers/<i>/weight_scale  float32 (n_out, c_out)      positive
    layers/<i>/bias          float32 (n_out, c_out)

The multipliers the kernels apply are recomputed from the scales on loading, as
:func:`sparsefan.quantize` computes them, so a round trip is exact. Loading also checks the
scales (positive, finite, each layer's out_scale the next layer's in_scale), the int8 range and
that no int32 accumulator can overflow -- what the kernels rely on. :func:`save_model` writes
either kind; :func:`load_model` reads float models, :func:`load_quantized` int8 models.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsefan._files import atomic_write, check_output_path  # noqa: F401 (public here)
from sparsefan.connectivity import Connectivity
from sparsefan.layers import ACTIVATIONS, FanIn
from sparsefan.network import Network
from sparsefan.quantized import QuantizedLayer, QuantizedNetwork

if TYPE_CHECKING:
    from sparsefan.train import Optimizer, TrainConfig

MODEL_FORMAT = "sparsefan-model"
INT8_FORMAT = "sparsefan-int8-model"
INT8_VERSION = 1
CHECKPOINT_FORMAT = "sparsefan-checkpoint"
VERSION = 1
_MAX_META_BYTES = 16 << 20
_DTYPES = {"int32": np.dtype("<i4"), "int64": np.dtype("<i8"), "float32": np.dtype("<f4"),
           "uint8": np.dtype("u1"), "int8": np.dtype("i1")}


class ModelFileError(ValueError):
    """A model or checkpoint file is malformed, of another version, or inconsistent."""


# -- writing ------------------------------------------------------------------------------------

def _atomic_zip(path, members):
    """Write {name: array} as an uncompressed .npz-style zip to ``path`` atomically."""
    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, arr in members.items():
                with z.open(name, "w", force_zip64=True) as m:
                    np.lib.format.write_array(m, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write(path, write)


def _check_metadata(metadata):
    """What the reader accepts, refused at write time: a JSON object of bounded depth."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    if _json_depth(metadata) > _MAX_META_DEPTH - 1:
        raise ValueError(f"metadata is nested deeper than {_MAX_META_DEPTH - 1} levels")
    try:
        size = len(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serializable (finite numbers): {e}") from None
    if size > _MAX_META_BYTES // 2:
        raise ValueError(f"metadata takes {size} bytes as JSON (at most "
                         f"{_MAX_META_BYTES // 2})")


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


def _quantized_meta(q, metadata):
    return {
        "format": INT8_FORMAT, "version": INT8_VERSION, "name": q.name,
        "n_classes": q.n_classes, "aggregate": q.aggregate, "input_shape": list(q.input_shape),
        "calibration_size": q.calibration_size, "percentile": q.percentile,
        "layers": [{"n_in": l.n_in, "n_out": l.n_out, "nnz": l.connectivity.nnz,
                    "c_in": l.c_in, "c_out": l.c_out, "activation": l.activation,
                    "in_scale": l.in_scale, "out_scale": l.out_scale}
                   for l in q.layers],
        "metadata": metadata or {},
    }


def _save_quantized(q, path, metadata):
    members = {"meta.json": _json_member(_quantized_meta(q, metadata))}
    for i, l in enumerate(q.layers):
        members[f"layers/{i}/indptr"] = l.connectivity.indptr
        members[f"layers/{i}/indices"] = l.connectivity.indices
        members[f"layers/{i}/qweight"] = l.qweight
        members[f"layers/{i}/weight_scale"] = l.weight_scale
        members[f"layers/{i}/bias"] = l.bias
    _atomic_zip(path, members)


def save_model(network: Network | QuantizedNetwork, path: str | os.PathLike[str],
               metadata: dict[str, Any] | None = None) -> None:
    """Write ``network`` -- a Network, or an int8 QuantizedNetwork (:func:`sparsefan.quantize`)
    -- to ``path`` (atomically). ``metadata``: a JSON-serializable dict kept in the file (for
    example training settings and test accuracy)."""
    if isinstance(network, QuantizedNetwork):
        _check_metadata(metadata)
        _save_quantized(network, path, metadata)
        return
    if not isinstance(network, Network):
        raise TypeError(f"network must be a sparsefan Network or QuantizedNetwork, got "
                        f"{type(network).__name__}")
    _check_metadata(metadata)
    members = {"meta.json": _json_member(_network_meta(network, MODEL_FORMAT, metadata))}
    members.update(_network_members(network))
    _atomic_zip(path, members)


# -- reading ------------------------------------------------------------------------------------

# The reader trusts nothing in the file. Members must be stored (the writer never compresses, so
# no decompression bomb can be read), named exactly as expected, once each, and not encrypted;
# every .npy header is parsed by the bounded parser below (never tokenize / literal_eval), and
# every size is a Python int checked against the member's real size before anything is read.
_MAX_HEADER = 4096  # bytes of an .npy header (numpy's own writer needs under 200 here)
_MAX_META_DEPTH = 64  # nesting of meta.json (the writer refuses deeper metadata too)
_NPY_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[<>|=][a-zA-Z]\d{0,2})', 'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<shape>(?:\d{1,19}, )*\d{0,19},?)\), \} *\n")
_DESCRS = {"<i4": "int32", "<i8": "int64", "<f4": "float32", "|u1": "uint8", "|i1": "int8"}


def _parse_npy_header(data, where):
    """(dtype name, shape, offset of the data) of an .npy member's bytes, or ModelFileError."""
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        raise ModelFileError(f"{where} is not an .npy array")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise ModelFileError(f"{where}: the .npy header is truncated")
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    else:
        raise ModelFileError(f"{where}: unknown .npy version {major}.{data[7]}")
    if hlen > _MAX_HEADER:
        raise ModelFileError(f"{where}: the .npy header is {hlen} bytes (at most {_MAX_HEADER})")
    if start + hlen > len(data):
        raise ModelFileError(f"{where}: the .npy header is truncated")
    try:
        header = data[start:start + hlen].decode("ascii")
    except UnicodeDecodeError:
        raise ModelFileError(f"{where}: the .npy header is not ASCII") from None
    m = _NPY_HEADER.fullmatch(header)
    if m is None:
        raise ModelFileError(f"{where}: malformed .npy header {header[:80]!r}")
    dtype = _DESCRS.get(m["descr"])
    if dtype is None:  # a name for the message only (a short, pattern-checked string)
        try:
            with warnings.catch_warnings():  # deprecated aliases ('|a1') still name a type
                warnings.simplefilter("ignore")
                dtype = str(np.dtype(m["descr"]))
        except TypeError:
            dtype = repr(m["descr"])
    if m["fortran"] == "True":
        raise ModelFileError(f"{where} must be C-ordered")
    dims = [d for d in m["shape"].replace(" ", "").split(",") if d]
    if len(dims) == 1 and not m["shape"].endswith(","):
        raise ModelFileError(f"{where}: malformed .npy shape ({m['shape']})")
    return dtype, tuple(int(d) for d in dims), start + hlen


def _json_depth(obj):
    """Nesting depth of a parsed JSON value (iterative: no recursion on hostile input)."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in o)
    return depth


class _Reader:
    """Reads the .npy members of a zip archive by their headers, checking names, storage,
    dtype and shape before any data is read."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            self.zip = zipfile.ZipFile(self.path, "r")
            infos = self.zip.infolist()
        except OSError as e:
            raise ModelFileError(f"{self.path}: cannot read the file: {e}") from None
        except (zipfile.BadZipFile, ValueError, EOFError, struct.error, OverflowError,
                NotImplementedError, RuntimeError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{self.path}: not a sparsefan file (not a zip archive: "
                                 f"{e})") from None
        try:
            self.infos = {}
            for info in infos:
                where = f"{self.path}: member {info.filename!r}"
                if info.filename in self.infos:
                    raise ModelFileError(f"{where} appears more than once")
                if info.flag_bits & 0x1:
                    raise ModelFileError(f"{where} is encrypted")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ModelFileError(f"{where} is compressed (method {info.compress_type}); "
                                         f"sparsefan files store their members uncompressed")
                if info.file_size > size:
                    raise ModelFileError(f"{where} claims {info.file_size} bytes, more than the "
                                         f"file holds")
                self.infos[info.filename] = info
        except BaseException:
            self.zip.close()
            raise

    def close(self):
        self.zip.close()

    def names(self):
        return set(self.infos)

    def _bytes(self, name):
        info = self.infos.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: member {name!r} is missing")
        try:
            with self.zip.open(info) as f:
                data = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error,
                NotImplementedError, RuntimeError, zlib.error) as e:
            raise ModelFileError(f"{self.path}: {name} is unreadable: {e}") from None
        if len(data) != info.file_size:
            raise ModelFileError(f"{self.path}: {name} is truncated")
        return data

    def array(self, name, dtype, shape):
        """The member as a fresh array of ``dtype``; ``shape`` (or None: any 1-D length)."""
        where = f"{self.path}: {name}"
        data = self._bytes(name)
        hdtype, hshape, offset = _parse_npy_header(data, where)
        if hdtype != dtype:
            raise ModelFileError(f"{where} must have dtype {dtype}, got {hdtype}")
        if shape is None:
            if len(hshape) != 1:
                raise ModelFileError(f"{where} must be one-dimensional")
        elif hshape != tuple(shape):
            raise ModelFileError(f"{where} must have shape {tuple(shape)}, got {hshape}")
        want = _DTYPES[dtype]
        nbytes = math.prod(hshape) * want.itemsize  # Python ints: no wrap-around
        if offset + nbytes > len(data):
            raise ModelFileError(f"{where} is truncated: {len(data) - offset} data bytes, its "
                                 f"header says {nbytes}")
        if offset + nbytes < len(data):
            raise ModelFileError(f"{where} has {len(data) - offset - nbytes} bytes after its "
                                 f"data")
        return np.frombuffer(data, dtype=want, offset=offset).reshape(hshape).copy()

    def json(self, name):
        info = self.infos.get(name)
        if info is None:
            raise ModelFileError(f"{self.path}: member {name!r} is missing")
        if info.file_size > _MAX_META_BYTES:
            raise ModelFileError(f"{self.path}: {name} is too large")
        raw = self.array(name, "uint8", None)
        try:
            obj = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{self.path}: {name} is not valid JSON: {e}") from None
        except RecursionError:
            raise ModelFileError(f"{self.path}: {name} is nested too deeply") from None
        if not isinstance(obj, dict):
            raise ModelFileError(f"{self.path}: {name} must hold a JSON object")
        if _json_depth(obj) > _MAX_META_DEPTH:
            raise ModelFileError(f"{self.path}: {name} is nested deeper than "
                                 f"{_MAX_META_DEPTH} levels")
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


def _check_version(meta, expected, path, what="format"):
    version = meta.get("version")
    if type(version) is not int or version != expected:
        raise ModelFileError(f"{path}: {what} version {version!r} is not supported "
                             f"(this sparsefan reads version {expected})")


def _layer_specs(meta, path):
    specs = _field(meta, "layers", list, path)
    if not specs:
        raise ModelFileError(f"{path}: no layers")
    return specs


def _layer_header(spec, i, path):
    """Layer i's entry of meta.json: (where, (n_in, n_out, nnz, c_in, c_out), activation), the
    sizes checked before any array is read."""
    where = f"meta.json layers[{i}]"
    if not isinstance(spec, dict):
        raise ModelFileError(f"{path}: {where} must be an object")
    sizes = tuple(_field(spec, k, int, path, where) for k in ("n_in", "n_out", "nnz", "c_in",
                                                              "c_out"))
    n_in, n_out, nnz, c_in, c_out = sizes
    if min(n_in, n_out, c_in, c_out) < 1 or nnz < 0 or max(n_in, n_out) >= 2**31:
        raise ModelFileError(f"{path}: {where} has invalid sizes")
    return where, sizes, spec.get("activation")


def _connectivity(reader, i, n_in, n_out, nnz):
    indptr = reader.array(f"layers/{i}/indptr", "int64", (n_out + 1,))
    indices = reader.array(f"layers/{i}/indices", "int32", (nnz,))
    return Connectivity(n_in, indptr, indices)


def _network_fields(meta, path, n_in):
    """(input_shape, name) of meta.json, checked against the first layer's n_in."""
    input_shape = _field(meta, "input_shape", list, path)
    if not all(type(s) is int and s > 0 for s in input_shape):
        raise ModelFileError(f"{path}: input_shape must list positive ints")
    if math.prod(input_shape) != n_in:
        raise ModelFileError(f"{path}: input_shape {input_shape} does not hold the first "
                             f"layer's {n_in} inputs")
    name = meta.get("name", "network")
    if not isinstance(name, str) or len(name) > 1000:
        raise ModelFileError(f"{path}: meta.json 'name' must be a string")
    if not isinstance(meta.get("metadata", {}), dict):
        raise ModelFileError(f"{path}: meta.json 'metadata' must be an object")
    return input_shape, name


def _read_network(reader, fmt):
    path = reader.path
    meta = reader.json("meta.json")
    _check_format(meta, fmt, path)
    _check_version(meta, VERSION, path)
    layers = []
    try:
        for i, spec in enumerate(_layer_specs(meta, path)):
            where, (n_in, n_out, nnz, c_in, c_out), act = _layer_header(spec, i, path)
            if act not in ACTIVATIONS:
                raise ModelFileError(f"{path}: {where} activation {act!r} is unknown")
            conn = _connectivity(reader, i, n_in, n_out, nnz)
            weight = reader.array(f"layers/{i}/weight", "float32", (nnz, c_in, c_out))
            bias = reader.array(f"layers/{i}/bias", "float32", (n_out, c_out))
            layers.append(FanIn(conn, c_in, c_out, activation=act, weight=weight, bias=bias))
        input_shape, name = _network_fields(meta, path, layers[0].n_in)
        network = Network(layers, _field(meta, "n_classes", int, path),
                          _field(meta, "aggregate", str, path), input_shape, name=name)
    except ModelFileError:
        raise
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: {e}") from None
    return network, meta


def _check_format(meta, fmt, path):
    if meta.get("format") == fmt:
        return
    hint = {(MODEL_FORMAT, INT8_FORMAT): " (an int8 model: read it with "
                                         "sparsefan.io.load_quantized)",
            (INT8_FORMAT, MODEL_FORMAT): " (a float32 model: read it with "
                                         "sparsefan.io.load_model)"}.get((fmt, meta.get("format")), "")
    raise ModelFileError(f"{path}: format is {meta.get('format')!r}, expected {fmt!r}{hint}")


def _expected_members(n_layers):
    return {"meta.json"} | {f"layers/{i}/{a}" for i in range(n_layers)
                            for a in ("indptr", "indices", "weight", "bias")}


def load_model(path: str | os.PathLike[str]) -> Network:
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


# -- int8 models --------------------------------------------------------------------------------

def _scale_field(spec, key, path, where, allow_none=False):
    if key not in spec:
        raise ModelFileError(f"{path}: {where} lacks {key!r}")
    value = spec[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelFileError(f"{path}: {where} {key!r} has the wrong type")
    return float(value)


def _read_quantized(reader):
    path = reader.path
    meta = reader.json("meta.json")
    _check_format(meta, INT8_FORMAT, path)
    _check_version(meta, INT8_VERSION, path, "int8 format")
    layers = []
    try:
        for i, spec in enumerate(_layer_specs(meta, path)):
            where, (n_in, n_out, nnz, c_in, c_out), act = _layer_header(spec, i, path)
            if act not in (None, "relu"):
                raise ModelFileError(f"{path}: {where} activation {act!r} is not an int8 "
                                     f"activation (None or 'relu')")
            in_scale = _scale_field(spec, "in_scale", path, where)
            out_scale = _scale_field(spec, "out_scale", path, where, allow_none=True)
            conn = _connectivity(reader, i, n_in, n_out, nnz)
            qweight = reader.array(f"layers/{i}/qweight", "int8", (nnz, c_in, c_out))
            w_scale = reader.array(f"layers/{i}/weight_scale", "float32", (n_out, c_out))
            bias = reader.array(f"layers/{i}/bias", "float32", (n_out, c_out))
            try:
                layers.append(QuantizedLayer(conn, c_in, c_out, act, qweight, w_scale, bias,
                                             in_scale, out_scale))
            except (ValueError, TypeError) as e:
                raise ModelFileError(f"{path}: layers[{i}]: {e}") from None
        input_shape, name = _network_fields(meta, path, layers[0].n_in)
        calibration_size = _field(meta, "calibration_size", int, path)
        percentile = meta.get("percentile")
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
            raise ModelFileError(f"{path}: meta.json 'percentile' has the wrong type")
        q = QuantizedNetwork(layers, _field(meta, "n_classes", int, path),
                             _field(meta, "aggregate", str, path), input_shape, name=name,
                             calibration_size=calibration_size, percentile=percentile)
    except ModelFileError:
        raise
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: {e}") from None
    return q, meta


def load_quantized(path: str | os.PathLike[str]) -> QuantizedNetwork:
    """Read an int8 model file written by :func:`save_model` (of a :class:`QuantizedNetwork`);
    returns the QuantizedNetwork, exactly as saved.

    Raises :class:`ModelFileError` (a ValueError) for anything malformed."""
    reader = _Reader(path)
    try:
        q, meta = _read_quantized(reader)
        expected = {"meta.json"} | {f"layers/{i}/{a}" for i in range(len(q.layers))
                                    for a in ("indptr", "indices", "qweight", "weight_scale",
                                              "bias")}
        extra = reader.names() - expected
        if extra:
            raise ModelFileError(f"{reader.path}: unexpected members {sorted(extra)}")
    finally:
        reader.close()
    q.metadata = meta.get("metadata", {})
    return q


# -- checkpoints --------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike[str], network: Network, optimizer: Optimizer,
                    config: TrainConfig, epoch: int, history: list[dict[str, Any]],
                    best: tuple[float, int, list[tuple[np.ndarray, np.ndarray]]] | None) -> None:
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


def _check_state(state, path):
    def bad(key):
        raise ModelFileError(f"{path}: state.json {key!r} is missing or of the wrong type")

    for key in ("epoch", "t"):
        if type(state.get(key)) is not int or state[key] < 0:
            bad(key)
    if not isinstance(state.get("history"), list) or \
            not all(isinstance(h, dict) for h in state["history"]):
        bad("history")
    if not isinstance(state.get("config"), str):
        bad("config")
    if state.get("best_epoch") is not None:
        if type(state["best_epoch"]) is not int:
            bad("best_epoch")
        if type(state.get("best_accuracy")) not in (int, float):
            bad("best_accuracy")


def load_checkpoint(path: str | os.PathLike[str], network: Network, optimizer: Optimizer,
                    config: TrainConfig) -> dict[str, Any] | None:
    """Restore ``network`` and ``optimizer`` from a checkpoint; None if ``path`` does not exist.

    The checkpoint must come from the same architecture (identical connectivity) and the same
    training configuration (``n_threads`` aside, which cannot change results)."""
    if not os.path.exists(path):
        return None
    reader = _Reader(path)
    try:
        saved, _ = _read_network(reader, CHECKPOINT_FORMAT)
        state = reader.json("state.json")
        _check_state(state, path)
        if len(saved.layers) != len(network.layers) or any(
                a.connectivity != b.connectivity or a.weight_shape != b.weight_shape
                for a, b in zip(saved.layers, network.layers)):
            raise ModelFileError(f"{path}: the checkpoint is of a different architecture")
        want = json.loads(config.to_json())
        try:
            have = json.loads(state["config"])
        except (json.JSONDecodeError, RecursionError):
            raise ModelFileError(f"{path}: state.json 'config' is not valid JSON") from None
        if not isinstance(have, dict):
            raise ModelFileError(f"{path}: state.json 'config' must be a JSON object")
        # settings added since the checkpoint was written take their defaults
        have = {**json.loads(type(config)().to_json()), **have}
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
