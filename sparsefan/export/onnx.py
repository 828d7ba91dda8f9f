"""ONNX export: a standard-opset (17) graph that ONNX Runtime and its serving systems can run.

Inputs and outputs (the batch dimension ``batch`` is dynamic):

    input   float32 [batch, n_in]        one flat example per row, scaled as in training
    scores  float32 [batch, C]           the aggregate (as Network.scores)
    logits  float32 [batch, M, C]        every output unit's class scores
    label   int64   [batch]              argmax of scores (ties -> lowest)

Each FanIn layer, on activations X [batch, n_in, c_in]:

    Gather(X, indices, axis=1) -> Reshape [batch, n_out, k*c_in]   (rows padded to the longest
                                                                     with zero weights)
    c_out == 1:  Mul(., W[n_out, k*c_in]) -> ReduceSum(axis 2)
    otherwise:   Transpose -> MatMul(., W[n_out, k*c_in, c_out]) -> Transpose  (one block per unit)
    -> Add(bias [n_out, c_out]) -> Relu

Identity connectivity skips the Gather; a single output unit (a dense layer) is one MatMul.
Aggregation: ReduceMean (mean_logits), Softmax -> ReduceMean -> Log (mean_prob), or
ArgMax -> Equal -> Cast -> ReduceMean (vote).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from sparsefan.network import Network

if TYPE_CHECKING:
    import onnx

OPSET = 17


def _require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("the ONNX export needs the 'onnx' package: "
                          "pip install 'sparsefan[export]'") from e
    return onnx


def _layer_blocks(layer):
    """(gather indices [n_out*k] or None for identity, W [n_out, k*c_in, c_out], k)."""
    conn = layer.connectivity
    fan = conn.fan_in()
    k = max(1, int(fan.max()) if fan.size else 1)
    ci, co = layer.c_in, layer.c_out
    identity = (k == 1 and conn.n_in == conn.n_out and (fan == 1).all()
                and (conn.indices == np.arange(conn.n_out)).all())
    idx = np.zeros((conn.n_out, k), dtype=np.int64)
    W = np.zeros((conn.n_out, k, ci, co), dtype=np.float32)
    slot = np.arange(conn.nnz) - np.repeat(conn.indptr[:-1], fan)
    row = conn.row_of_connection()
    idx[row, slot] = conn.indices
    W[row, slot] = layer.weight
    return None if identity else idx.ravel(), W.reshape(conn.n_out, k * ci, co), k


def build_model(network: Network) -> onnx.ModelProto:
    """The ONNX ModelProto of ``network`` (checked with onnx.checker)."""
    onnx = _require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(network, Network):
        raise TypeError(f"network must be a sparsefan Network, got {type(network).__name__}")
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    x = node("Reshape", ["input", const("input_shape", np.array([0, network.n_in, 1],
                                                                  np.int64))], "x0")
    for i, layer in enumerate(network.layers):
        conn = layer.connectivity
        ci, co, n_out = layer.c_in, layer.c_out, conn.n_out
        idx, W, k = _layer_blocks(layer)
        p = f"l{i}_"
        if idx is not None:
            x = node("Gather", [x, const(p + "indices", idx)], p + "gather", axis=1)
        K = k * ci
        if n_out == 1:
            g = node("Reshape", [x, const(p + "flat_shape", np.array([0, K], np.int64))],
                     p + "flat")
            y = node("MatMul", [g, const(p + "weight", W[0])], p + "matmul")
            y = node("Reshape", [y, const(p + "out_shape", np.array([0, 1, co], np.int64))],
                     p + "y")
        else:
            g = node("Reshape", [x, const(p + "block_shape", np.array([0, n_out, K], np.int64))],
                     p + "blocks")
            if co == 1:
                m = node("Mul", [g, const(p + "weight", W[:, :, 0])], p + "mul")
                y = node("ReduceSum", [m, const(p + "axes", np.array([2], np.int64))],
                         p + "y", keepdims=1)
            else:
                t = node("Transpose", [g], p + "units_first", perm=[1, 0, 2])
                t = node("MatMul", [t, const(p + "weight", W)], p + "matmul")
                y = node("Transpose", [t], p + "y", perm=[1, 0, 2])
        y = node("Add", [y, const(p + "bias", layer.bias)], p + "biased")
        if layer.activation == "relu":
            y = node("Relu", [y], p + "relu")
        x = y
    nodes.append(helper.make_node("Identity", [x], ["logits"], name="logits"))
    if network.aggregate == "mean_logits":
        s = node("ReduceMean", ["logits"], "scores", axes=[1], keepdims=0)
    elif network.aggregate == "mean_prob":
        pr = node("Softmax", ["logits"], "unit_prob", axis=2)
        pr = node("ReduceMean", [pr], "mean_prob", axes=[1], keepdims=0)
        s = node("Log", [pr], "scores")
    else:
        a = node("ArgMax", ["logits"], "unit_vote", axis=2, keepdims=1, select_last_index=0)
        e = node("Equal", [a, const("classes", np.arange(network.n_classes, dtype=np.int64))],
                 "vote_onehot")
        e = node("Cast", [e], "vote_float", to=TensorProto.FLOAT)
        s = node("ReduceMean", [e], "scores", axes=[1], keepdims=0)
    node("ArgMax", [s], "label", axis=1, keepdims=0, select_last_index=0)

    M, C = network.n_units, network.n_classes
    graph = helper.make_graph(
        nodes, "sparsefan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", network.n_in])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", C]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", M, C]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="sparsefan",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 8)  # readable by older ONNX Runtime releases
    model.doc_string = (f"{network.name}: input {tuple(network.input_shape)} -> {M} units x "
                        f"{C} classes, aggregate {network.aggregate}")
    onnx.checker.check_model(model)
    return model


def export_onnx(network: Network, path: str | os.PathLike[str]) -> str:
    """Write ``network`` to ``path`` (.onnx); returns the path. Needs the ``onnx`` package."""
    _require_onnx()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"the directory of {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; give a file name ending in .onnx")
    from sparsefan.export import check_exportable

    check_exportable(network)
    model = build_model(network)
    from sparsefan._files import atomic_write

    try:
        atomic_write(path, lambda f: f.write(model.SerializeToString()))
    except PermissionError as e:
        raise PermissionError(f"cannot write {path!r}: {e.strerror or e}") from None
    return path
