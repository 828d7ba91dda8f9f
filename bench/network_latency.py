"""Whole-network inference latency: sparsefan against ONNX Runtime and torch eager, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/network_latency.py MODEL ...
        [--threads 1] [--repeats 201]

MODEL is a model file, or one of the MNIST architectures of experiments/mnist_results.py by
name -- direct, hierarchy2, hierarchy3, dense_mlp -- built with random weights (the time does
not depend on the values). For each model: the median time to classify one MNIST-sized example (batch 1) and a batch
of 256, with sparsefan (``Network.predict``), with ONNX Runtime on the graph that
``sparsefan.export.export_onnx`` writes (optional: onnx, onnxruntime), and with torch eager
running the same network as gathers + batched matmuls (optional: torch; fixed fan-in layers
only). Every peer's predictions are checked against sparsefan's first. Also prints the Python
overhead of ``predict`` over the bare C call (the fused whole-network forward) at batch 1.
"""
import argparse
import os
import tempfile

import numpy as np

import sparsefan as sf
from sparsefan._timing import median_seconds as median_time
from sparsefan import _engine, _kernels


ARCHITECTURES = {  # the configurations of experiments/mnist_results.py
    "direct": lambda: sf.builders.direct(fan_in=85, hidden=(32,)),
    "hierarchy2": lambda: sf.builders.hierarchy(levels=2, channels=(8, 16)),
    "hierarchy3": lambda: sf.builders.hierarchy(levels=3, channels=(8, 16, 16)),
    "dense_mlp": lambda: sf.builders.dense_mlp(hidden=(256, 256)),
}


def load(name):
    if not os.path.exists(name) and name in ARCHITECTURES:
        return ARCHITECTURES[name]()
    return sf.load_model(name)


def kernels_only(net, x1, threads):
    """The C time of one example: the fused whole-network call on preallocated buffers (or, for
    networks with GEMM layers, the layers' kernels one by one). No checks, no aggregation."""
    plan = net._fused_plan()
    if plan is not None:
        out = np.empty(net.n_units * net.n_classes, np.float32)
        flat = np.ascontiguousarray(x1, dtype=np.float32).reshape(-1)
        return lambda: plan.forward(flat, 1, threads, out)
    xt = sf.to_feature_major(x1)
    bufs = [np.empty((l.n_out, l.c_out, 1), np.float32) for l in net.layers]

    def run():
        h = xt
        for layer, b in zip(net.layers, bufs):
            _engine.linear(layer, b, h, threads, layer.activation == "relu")
            h = b
    return run


def torch_model(net, threads):
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    if any(l.connectivity.k is None for l in net.layers):
        return None, "ragged rows"
    torch.set_num_threads(threads)
    layers = []
    for l in net.layers:
        c = l.connectivity
        layers.append((torch.from_numpy(c.indices.astype(np.int64).reshape(c.n_out, c.k)),
                       torch.from_numpy(l.weight.reshape(c.n_out, c.k * l.c_in, l.c_out)),
                       torch.from_numpy(l.bias), l.activation == "relu", l.c_in))

    @torch.no_grad()
    def run(x):
        h = torch.from_numpy(x).unsqueeze(-1)  # (B, n_in, 1)
        for idx, W, b, relu, c_in in layers:
            g = h[:, idx, :].reshape(h.shape[0], idx.shape[0], -1)  # (B, n_out, k*c_in)
            h = torch.einsum("bjk,jko->bjo", g, W) + b
            if relu:
                h = torch.relu(h)
        if net.aggregate != "mean_logits":
            return None
        return h.mean(dim=1).argmax(dim=1).numpy()
    return run, None


def ort_session(net, threads):
    try:
        import onnxruntime as ort
        from sparsefan.export import export_onnx
    except ImportError:
        return None, "onnx/onnxruntime not installed"
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    export_onnx(net, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return (lambda x: sess.run(["label"], {"input": x})[0]), None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=201)
    args = p.parse_args()
    x = sf.datasets.load_embedded()[2][:256].reshape(256, -1).astype(np.float32) / 255
    x1 = x[:1].copy()
    print(f"threads {args.threads}; kernels {_kernels.cpu_variant()}; medians of "
          f"{args.repeats}; times in microseconds (batch 1) and milliseconds (batch 256)")
    print(f"{'model':28s} {'sparsefan 1':>12s} {'kernels 1':>10s} {'overhead':>9s} "
          f"{'ORT 1':>9s} {'torch 1':>9s} | {'sparsefan 256':>14s} {'ORT 256':>9s} "
          f"{'torch 256':>10s}")
    for path in args.models:
        net = load(path)
        want = net.predict(x, args.threads)
        sf_1 = median_time(lambda: net.predict(x1, args.threads), args.repeats)
        sf_b = median_time(lambda: net.predict(x, args.threads), max(11, args.repeats // 10))
        k_1 = median_time(kernels_only(net, x1, args.threads), args.repeats)
        cells = []
        for make in (ort_session, torch_model):
            run, why = make(net, args.threads)
            if run is None or run(x) is None:
                cells.append((None, None, why or "aggregate not supported"))
                continue
            agree = np.mean(run(x) == want)
            t1 = median_time(lambda: run(x1), args.repeats)
            tb = median_time(lambda: run(x), max(11, args.repeats // 10))
            cells.append((t1, tb, f"agree {agree:.3f}"))
        fmt1 = lambda t: f"{t * 1e6:9.0f}" if t is not None else f"{'-':>9s}"
        fmtb = lambda t: f"{t * 1e3:9.2f}" if t is not None else f"{'-':>9s}"
        over = f"{100 * (sf_1 - k_1) / k_1:8.0f}%" if k_1 else f"{'-':>9s}"
        name = os.path.splitext(os.path.basename(path))[0]
        print(f"{name:28s} {sf_1 * 1e6:12.0f} {fmt1(k_1):>10s} {over} {fmt1(cells[0][0])} "
              f"{fmt1(cells[1][0])} | {sf_b * 1e3:14.2f} {fmtb(cells[0][1])} "
              f"{fmtb(cells[1][1]):>10s}   ({'; '.join(c[2] for c in cells)})")


if __name__ == "__main__":
    main()
