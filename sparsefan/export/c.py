"""C99 export: NAME.h / NAME.c holding a network's tables as const arrays, plus the runtime.

The generated NAME.c holds data only (index tables, weights, biases, scales and one table of
layer descriptors); the layer loop is the shared runtime ``sf_runtime.c``, copied next to it
from the package (see :func:`sparsefan.export.runtime_dir`). Same model -> same bytes.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

import numpy as np

from sparsefan._files import atomic_write
from sparsefan.export.quantize import QuantizedNetwork
from sparsefan.network import Network

AGGREGATE_CODES = {"mean_logits": "SF_MEAN_LOGITS", "mean_prob": "SF_MEAN_PROB",
                   "vote": "SF_VOTE"}
RUNTIME_FILES = ("sf_runtime.h", "sf_runtime.c")
_C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern
float for goto if inline int long register restrict return short signed sizeof static struct
switch typedef union unsigned void volatile while _Bool _Complex _Imaginary""".split())
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_TOTAL = 2**31 - 1


def check_name(name: str) -> str:
    """``name`` must be a C identifier usable as a prefix: returns it, or raises ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _IDENT.match(name) or len(name) > 48:
        raise ValueError(f"name must be a C identifier (letters, digits, '_', not starting "
                         f"with a digit, at most 48 characters), got {name!r}")
    if name in _C_KEYWORDS or name.lower().startswith("sf_") or name.startswith("__"):
        raise ValueError(f"name {name!r} is reserved (a C keyword, or the runtime's "
                         f"'sf_' prefix)")
    return name


def _uint_bytes(max_value):
    if max_value < 2**8:
        return 1
    if max_value < 2**16:
        return 2
    if max_value < 2**32:
        return 4
    raise ValueError(f"an index table value {max_value} does not fit 32 bits")


_CTYPES = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t"}
_NPTYPES = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _format_float(v):
    s = "%.9g" % v  # 9 significant digits: every float32 reads back exactly
    if not any(ch in s for ch in ".en"):
        s += ".0"
    return s + "f"


def _c_array(ctype, name, values, per_line):
    values = np.asarray(values).ravel()
    if ctype == "float":
        items = [_format_float(v) for v in values.astype(np.float32).tolist()]
    else:
        items = [str(v) for v in values.tolist()]
    if not items:  # C99 forbids empty arrays: one unused element keeps the pointer valid
        items = ["0"]
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(items)}] = {{\n    {body}\n}};\n"


@dataclass
class Footprint:
    """Bytes of a model's constant tables (flash) and scratch (RAM), on any target."""

    const_bytes: int    # index tables, weights, biases, scales
    scratch_bytes: int  # NAME_SCRATCH_BYTES
    quantized: bool

    def as_dict(self) -> dict[str, int | bool]:
        return {"const_bytes": self.const_bytes, "scratch_bytes": self.scratch_bytes,
                "quantized": self.quantized}


@dataclass
class CExport:
    """What :func:`export_c` wrote."""

    name: str
    header: str
    source: str
    runtime: list[str]
    footprint: Footprint

    @property
    def files(self) -> list[str]:
        return [self.header, self.source] + list(self.runtime)


def scratch_bytes(network: Network, quantized: bool) -> int:
    """Bytes of scratch the runtime needs (mirrors ``plan_scratch`` in sf_runtime.c)."""
    sizes = [layer.n_out * layer.c_out for layer in network.layers]
    L = len(sizes)
    need = [0, 0]
    if not quantized:
        for i, s in enumerate(sizes):
            need[i % 2] = max(need[i % 2], 4 * s)
        return need[0] + need[1] + 4 * network.n_classes
    need[0] = network.n_in
    for i in range(L - 1):
        need[(i + 1) % 2] = max(need[(i + 1) % 2], sizes[i])
    up4 = lambda n: (n + 3) & ~3  # noqa: E731
    return (4 * network.n_units * network.n_classes + 4 * network.n_classes
            + up4(need[0]) + up4(need[1]))


def _tables(model):
    """Per layer, the arrays that go into the C file: [(c type, suffix, array, per_line)]."""
    network = model  # a QuantizedNetwork has the Network's structure (layers, sizes, name)
    qlayers = model.layers if isinstance(model, QuantizedNetwork) else None
    out = []
    for i, layer in enumerate(network.layers):
        conn = layer.connectivity
        ptr_bytes = _uint_bytes(int(conn.nnz))
        idx_bytes = _uint_bytes(int(conn.n_in) - 1)
        arrays = [
            (_CTYPES[ptr_bytes], "indptr", conn.indptr.astype(_NPTYPES[ptr_bytes]), 16),
            (_CTYPES[idx_bytes], "indices", conn.indices.astype(_NPTYPES[idx_bytes]), 16),
            ("float", "bias", layer.bias, 8),
        ]
        if qlayers is None:
            arrays.append(("float", "weight", layer.weight, 8))
        else:
            arrays.append(("int8_t", "qweight", qlayers[i].qweight, 20))
            arrays.append(("float", "multiplier", qlayers[i].multiplier, 8))
        out.append((ptr_bytes, idx_bytes, arrays))
    return network, qlayers, out


def _array_bytes(ctype, arr):
    size = {"uint8_t": 1, "int8_t": 1, "uint16_t": 2, "uint32_t": 4, "float": 4}[ctype]
    return size * max(1, np.asarray(arr).size)


def footprint(model: Network | QuantizedNetwork, certificates: bool = False) -> Footprint:
    """:class:`Footprint` of ``model`` (a Network for float32, a QuantizedNetwork for int8);
    with ``certificates``, the certificate tables of NAME_predict_certified included."""
    network, qlayers, tables = _tables(_check_model(model))
    const = sum(_array_bytes(ct, a) for _, _, arrays in tables for ct, _, a, _ in arrays)
    if certificates:
        K, cum = _certificate_tables(model)
        const += 4 * (K.size + cum.size)
    return Footprint(const, scratch_bytes(network, qlayers is not None), qlayers is not None)


def _check_model(model):
    if isinstance(model, (QuantizedNetwork, Network)):
        network = model
    else:
        raise TypeError(f"model must be a sparsefan Network or QuantizedNetwork, got "
                        f"{type(model).__name__}")
    for i, layer in enumerate(network.layers):
        if layer.connectivity.nnz * layer.c_in * layer.c_out > _MAX_TOTAL or \
                layer.n_out * layer.c_out * 4 > _MAX_TOTAL:
            raise ValueError(f"layer {i} is too large for the C export (32-bit sizes)")
    if scratch_bytes(network, isinstance(model, QuantizedNetwork)) > _MAX_TOTAL:
        raise ValueError("the model's scratch exceeds 2 GiB: too large for the C export")
    return model


def _comment_text(text):
    return str(text).replace("*/", "* /").replace("\n", " ")


def _certificate_tables(model):
    from sparsefan import certify

    if isinstance(model, QuantizedNetwork) or model.aggregate != "mean_logits":
        raise ValueError("certificates (NAME_predict_certified) need a float32 mean_logits "
                         "model: int8 arithmetic is not the network the bounds hold for")
    return certify.certificate_tables(model)


def generate(model: Network | QuantizedNetwork, name: str,
             certificates: bool = False) -> tuple[str, str]:
    """(header text, source text) for ``model`` under the C prefix ``name``; with
    ``certificates`` also NAME_predict_certified and its constant tables."""
    model = _check_model(model)
    name = check_name(name)
    network, qlayers, tables = _tables(model)
    quantized = qlayers is not None
    up = name.upper()
    fp = footprint(model, certificates)
    kind = "int8" if quantized else "float32"
    desc = _comment_text(network.name)

    certified = None
    certified_decl = ""
    if certificates:
        certified = _certificate_tables(model)
        certified_decl = f"""
/* the predicted class with its certificates: no perturbation of L2 norm below *l2_radius, no
 * change of at most *l0_radius pixels (inputs in [0, 1]) changes it; as sparsefan's
 * Network.predict_certified, to float32 rounding */
int {name}_predict_certified(const float *input, int32_t *label, float *l2_radius,
                             int32_t *l0_radius, void *scratch);
"""
    header = f"""/*
 * {name}: a sparsefan network exported to C99 ({kind}).
 *   network   {desc}
 *   input     {network.n_in} floats{' ' + str(tuple(network.input_shape)) if len(network.input_shape) > 1 else ''}, scaled as in training
 *   output    {network.n_units} units x {network.n_classes} classes, aggregate {network.aggregate}
 *
 * Build {name}.c together with sf_runtime.c (same directory) and link with -lm (the runtime
 * calls expf/logf for mean_prob models). No malloc, no stdio: the caller passes a scratch area
 * of {up}_SCRATCH_BYTES bytes, aligned for float; declaring it as
 * `static float scratch[{up}_SCRATCH_FLOATS];` does both.
 * Every function returns SF_OK (0) or a negative SF_ERR_* code (sf_runtime.h).
 */
#ifndef {up}_H
#define {up}_H

#include <stdint.h>

#include "sf_runtime.h"

#ifdef __cplusplus
extern "C" {{
#endif

#define {up}_N_INPUTS {network.n_in}u
#define {up}_N_UNITS {network.n_units}u
#define {up}_N_CLASSES {network.n_classes}u
/* RAM the caller provides per call (not kept between calls) */
#define {up}_SCRATCH_BYTES {fp.scratch_bytes}u
#define {up}_SCRATCH_FLOATS {(fp.scratch_bytes + 3) // 4}u
/* bytes of the const tables below (flash), descriptors excluded */
#define {up}_CONST_BYTES {fp.const_bytes}u

extern const sf_model {name}_model;

/* scores[{up}_N_CLASSES]: the aggregate ({network.aggregate}); argmax = the prediction */
int {name}_predict(const float *input, float *scores, void *scratch);

/* logits[{up}_N_UNITS * {up}_N_CLASSES]: every output unit's class scores, [unit][class] */
int {name}_logits(const float *input, float *logits, void *scratch);

/* the predicted class (ties -> lowest), or a negative SF_ERR_* code */
int {name}_classify(const float *input, void *scratch);
{certified_decl}
#ifdef __cplusplus
}}
#endif

#endif /* {up}_H */
"""

    parts = [f"""/*
 * {name}: tables of a sparsefan network exported to C99 ({kind}); the layer loop is in
 * sf_runtime.c. Generated from the model file: edit the model, not this file.
 */
#include "{name}.h"

#include <stddef.h>
"""]
    descs = []
    for i, (layer, (ptr_bytes, idx_bytes, arrays)) in enumerate(zip(network.layers, tables)):
        conn = layer.connectivity
        parts.append(f"\n/* layer {i}: {conn.n_in} -> {conn.n_out} units, {layer.c_in} -> "
                     f"{layer.c_out} channels, {conn.nnz} connections, "
                     f"activation {layer.activation or 'none'} */\n")
        for ctype, suffix, arr, per_line in arrays:
            parts.append(_c_array(ctype, f"l{i}_{suffix}", arr, per_line))
        if quantized:
            q = qlayers[i]
            weight, qweight, mult = "NULL", f"l{i}_qweight", f"l{i}_multiplier"
            out_inv = _format_float(float(q.out_inv_scale))
        else:
            weight, qweight, mult, out_inv = f"l{i}_weight", "NULL", "NULL", "0.0f"
        descs.append(
            f"    {{{conn.n_in}u, {conn.n_out}u, {layer.c_in}u, {layer.c_out}u, "
            f"{1 if layer.activation == 'relu' else 0}u, {ptr_bytes}u, {idx_bytes}u,\n"
            f"     l{i}_indptr, l{i}_indices, l{i}_bias, {weight}, {qweight}, {mult}, "
            f"{out_inv}}}")
    in_inv = _format_float(float(model.in_inv_scale)) if quantized else "0.0f"
    parts.append(f"""
static const sf_layer layers[{len(descs)}] = {{
{(',' + chr(10)).join(descs)}
}};

const sf_model {name}_model = {{
    {len(descs)}u, {network.n_in}u, {network.n_units}u, {network.n_classes}u,
    {AGGREGATE_CODES[network.aggregate]}, {1 if quantized else 0}u, {in_inv},
    {up}_SCRATCH_BYTES, layers
}};

int {name}_predict(const float *input, float *scores, void *scratch)
{{
    return sf_predict(&{name}_model, input, scores, scratch);
}}

int {name}_logits(const float *input, float *logits, void *scratch)
{{
    return sf_logits(&{name}_model, input, logits, scratch);
}}

int {name}_classify(const float *input, void *scratch)
{{
    return sf_classify(&{name}_model, input, scratch);
}}
""")
    if certified:
        K, cum = certified
        C, R = network.n_classes, cum.shape[2] - 1
        parts.append(f"""
/* certificates: constants from sparsefan.certify.certificate_tables, rounded up to float */
{_c_array("float", "cert_K", _round_up(K), 8)}{_c_array("float", "cert_cum", _round_up(cum), 8)}
static const sf_certificates certificates = {{{C}u, {R}u, cert_K, cert_cum}};

int {name}_predict_certified(const float *input, int32_t *label, float *l2_radius,
                             int32_t *l0_radius, void *scratch)
{{
    return sf_predict_certified(&{name}_model, &certificates, input, label, l2_radius, l0_radius,
                                scratch);
}}
""")
    return header, "".join(parts)


def _round_up(a):
    """float32 values >= the float64 ones (a bound must not shrink in the cast)."""
    a = np.asarray(a, dtype=np.float64)
    f = a.astype(np.float32)
    low = f.astype(np.float64) < a
    f[low] = np.nextafter(f[low], np.float32(np.inf))
    return f


def _prepare_dir(out_dir):
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"output directory {out_dir!r} exists and is not a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output directory {out_dir!r}: {e.strerror or e}") \
            from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"output directory {out_dir!r} is not writable")
    return out_dir


def _write_text(path, text):
    """Write ASCII ``text`` atomically (sparsefan._files.atomic_write)."""
    data = text.encode("ascii")
    atomic_write(path, lambda f: f.write(data))


def export_c(model: Network | QuantizedNetwork, out_dir: str | os.PathLike[str],
             name: str = "model", runtime: bool = True,
             certificates: bool = False) -> CExport:
    """Write ``NAME.h`` and ``NAME.c`` for ``model`` into ``out_dir`` (created if needed).

    Parameters
    ----------
    model : Network (float32 export) or QuantizedNetwork (int8 export, see
        :func:`sparsefan.quantize`; also one read by :func:`sparsefan.io.load_quantized`)
    out_dir : path of a directory
    name : str
        A C identifier: the file names and the prefix of every symbol (``NAME_predict``...).
    runtime : bool
        Also copy ``sf_runtime.h`` / ``sf_runtime.c`` into ``out_dir`` (default).
    certificates : bool
        Also write ``NAME_predict_certified`` (float32 mean_logits models): the class with its
        certified L2 and L0 radii, from constant tables of C*C*(R+2) floats (R = 200 or n_in).

    Returns a :class:`CExport` (the paths written and the :class:`Footprint`).
    Networks with MaxMin activations are refused (ValueError).
    """
    from sparsefan.export import check_exportable

    check_exportable(model)
    from sparsefan.export import runtime_dir

    name = check_name(name)
    model = _check_model(model)
    header, source = generate(model, name, certificates)
    out_dir = _prepare_dir(out_dir)
    h_path = os.path.join(out_dir, f"{name}.h")
    c_path = os.path.join(out_dir, f"{name}.c")
    _write_text(h_path, header)
    _write_text(c_path, source)
    copied = []
    if runtime:
        src = runtime_dir()
        for f in RUNTIME_FILES:
            dst = os.path.join(out_dir, f)
            shutil.copyfile(os.path.join(src, f), dst)
            copied.append(dst)
    return CExport(name, h_path, c_path, copied, footprint(model, certificates))
