"""The ONNX export under ONNX Runtime matches the engine for every builder's network."""
import numpy as np
import pytest

from _export_helpers import check_against_engine as check, inputs, trained_mnist, zoo

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sparsefan import Connectivity, FanIn  # noqa: E402
from sparsefan.export import export_onnx  # noqa: E402
from sparsefan.export.onnx import build_model  # noqa: E402
from sparsefan.network import Network  # noqa: E402

ZOO = zoo()


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, logits, label = sess.run(["scores", "logits", "label"], {"input": x})
    return scores, logits.transpose(1, 2, 0), label


@pytest.mark.parametrize("key", list(ZOO))
def test_onnx_matches_engine(tmp_path, key):
    net = ZOO[key]
    path = export_onnx(net, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(path))
    x = inputs(net, 300 if net.n_in < 500 else 100)
    check(net, *run(path, x), x)
    check(net, *run(path, x[:1]), x[:1])  # the batch dimension is dynamic


def test_trained_mnist_model(tmp_path):
    net, _, _, xte, _ = trained_mnist()
    path = export_onnx(net, tmp_path / "mnist.onnx")
    check(net, *run(path, xte[:500]), xte[:500])


def test_graph_uses_standard_ops():
    model = build_model(ZOO["hierarchy"])
    ops = {n.op_type for n in model.graph.node}
    assert {"Gather", "MatMul", "Add", "Relu", "ReduceMean"} <= ops
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    # a single-channel layer (c_out = 1) is Gather -> Mul -> ReduceSum
    conn = ZOO["ragged"].layers[0].connectivity
    net = Network([FanIn(conn, 1, 1, "relu", seed=0),
                   FanIn(Connectivity.identity(conn.n_out), 1, 2, seed=0)], 2)
    assert {"Gather", "Mul", "ReduceSum"} <= {n.op_type for n in build_model(net).graph.node}


def test_single_channel_layers_match(tmp_path):
    conn = ZOO["ragged"].layers[0].connectivity
    net = Network([FanIn(conn, 1, 1, "relu", seed=0),
                   FanIn(Connectivity.random(conn.n_out, 20, 3, seed=1), 1, 1, "relu", seed=1),
                   FanIn(Connectivity.identity(20), 1, 3, seed=2)], 3, "mean_prob")
    x = inputs(net, 100)
    check(net, *run(export_onnx(net, tmp_path / "m.onnx"), x), x)


def test_deterministic(tmp_path):
    a = export_onnx(ZOO["direct"], tmp_path / "a.onnx")
    b = export_onnx(ZOO["direct"], tmp_path / "b.onnx")
    assert open(a, "rb").read() == open(b, "rb").read()


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(ZOO["direct"], tmp_path / "missing" / "m.onnx")
    with pytest.raises(IsADirectoryError):
        export_onnx(ZOO["direct"], tmp_path)
    with pytest.raises(TypeError, match="Network"):
        export_onnx("net", tmp_path / "m.onnx")
