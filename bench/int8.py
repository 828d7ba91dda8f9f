"""int8 inference: batch-1 MNIST latency and test accuracy of ``sparsefan.quantize`` against
the float32 engine, torch eager and ONNX Runtime (float32, and its own int8 quantization).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/int8.py MODEL ... \\
        [--threads 1] [--repeats 201] [--rounds 5] [--data-dir DIR] [--calibration 1000]

MODEL is a float32 model file (a trained one: its accuracy is measured) or one of the
architectures of bench/network_latency.py by name (random weights: latency only). Each model
is quantized with ``sparsefan.quantize`` on the first ``--calibration`` training images (full
MNIST from ``--data-dir``, else the embedded subset); ONNX Runtime gets the graph that
``sparsefan.export.export_onnx`` writes, and its own int8 versions of it:
``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized per call)
and ``quantize_static`` (QDQ, per-channel int8 weights, int8 activations calibrated on the
same images).

Latency: the median time of one prediction at batch 1 (``predict``: input checks, every layer,
the aggregate, the argmax), in ``--rounds`` rounds; every round times each contender in turn
(the order rotating), so a noisy neighbour hits them alike, and the ratios are taken within a
round; the table shows the median over rounds. "kernels" is the bare C call (the fused plan, on
preallocated buffers). Accuracy (trained models, ``--data-dir``): the 10,000 MNIST test images.
"""
import argparse
import os
import sys
import tempfile

import numpy as np

import sparsefan as sf
from sparsefan import _engine, _kernels
from sparsefan._timing import median_seconds
from sparsefan.train import as_float_inputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from network_latency import kernels_only, load, ort_session, torch_model  # noqa: E402


def int8_kernels_only(q, x1, threads):
    plan = _engine.int8_plan(q)
    out = np.empty(q.n_units * q.n_classes, np.float32)
    flat = np.ascontiguousarray(x1, dtype=np.float32).reshape(-1)
    return lambda: plan.forward(flat, 1, threads, out)


def ort_int8_sessions(net, calib, threads):
    """{name: run(x) -> labels} for ORT's dynamic and static int8 quantization of our graph."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                              quantize_dynamic, quantize_static)
        from sparsefan.export import export_onnx
    except ImportError as e:
        return {}, f"onnxruntime quantization unavailable ({e})"
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice
    d = tempfile.mkdtemp()
    src = os.path.join(d, "model.onnx")
    export_onnx(net, src)
    dyn, sta = os.path.join(d, "dynamic.onnx"), os.path.join(d, "static.onnx")
    quantize_dynamic(src, dyn, weight_type=QuantType.QInt8)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(min(len(calib), 200))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, sta, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    runs = {}
    for name, path in (("ORT int8 dyn", dyn), ("ORT int8 static", sta)):
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        runs[name] = (lambda s: lambda x: s.run(["label"], {"input": x})[0])(s)
    return runs, None


def batched(fn, x, size=500):
    return np.concatenate([fn(x[s:s + size]) for s in range(0, len(x), size)])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=201)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-dir", default=None, help="full MNIST (calibration and accuracy)")
    p.add_argument("--calibration", type=int, default=1000)
    p.add_argument("--no-peers", action="store_true", help="sparsefan float32 and int8 only")
    args = p.parse_args()
    th = args.threads
    if args.data_dir:
        xtr, _, xte, yte = sf.datasets.load_mnist(args.data_dir)
    else:
        xtr, _, xte, yte = sf.datasets.load_embedded()
    xtr = as_float_inputs(xtr.reshape(len(xtr), -1))
    xte, yte = as_float_inputs(xte.reshape(len(xte), -1)), yte.astype(np.int64)
    calib = np.ascontiguousarray(xtr[:args.calibration])
    x1 = xte[:1].copy()
    print(f"threads {th}; float kernels {_kernels.cpu_variant()}, int8 kernels "
          f"{_kernels.int8_variant()}; batch 1, median of {args.repeats} calls per round, "
          f"median over {args.rounds} rounds; calibration {len(calib)} training images"
          + ("" if args.data_dir else " (embedded subset)"))
    for path in args.models:
        net = load(path)
        name = os.path.splitext(os.path.basename(path))[0]
        q = sf.quantize(net, calib)
        plan = _engine.int8_plan(q)
        f_bytes = sum(l.weight.nbytes for l in net.layers)
        print(f"\n## {name}: {net.name}")
        print(f"   weights: float32 {f_bytes / 1e6:.2f} MB, int8 {sum(l.qweight.nbytes for l in q.layers) / 1e6:.2f} MB "
              f"(packed {plan.packed_bytes / 1e6:.2f} MB, layouts {', '.join(plan.layouts)})")
        runs = {
            "int8": lambda: q.predict(x1, th),
            "float32": lambda: net.predict(x1, th),
            "int8 kernels": int8_kernels_only(q, x1, th),
            "float32 kernels": kernels_only(net, x1, th),
        }
        labels = {}
        if not args.no_peers:
            for label, make in (("ORT", ort_session), ("torch", torch_model)):
                run, why = make(net, th)
                if run is None or run(x1) is None:
                    print(f"   {label}: skipped ({why or 'aggregate not supported'})")
                    continue
                labels[label] = run
            qruns, why = ort_int8_sessions(net, calib, th)
            if why:
                print(f"   ORT int8: skipped ({why})")
            labels.update(qruns)
            for label, run in labels.items():
                runs[label] = (lambda run: lambda: run(x1))(run)
        names = list(runs)
        times = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                times[n].append(median_seconds(runs[n], args.repeats))
        t_i8 = np.array(times["int8"])
        print(f"   {'contender':18s} {'batch 1 (us)':>12s} {'x int8':>8s}   (per round: x int8)")
        for n in names:
            t = np.array(times[n])
            ratios = t / t_i8
            print(f"   {n:18s} {np.median(t) * 1e6:12.1f} {np.median(ratios):8.2f}   "
                  f"({' '.join(f'{v:.2f}' for v in ratios)})")
        k = np.array(times["float32 kernels"]) / np.array(times["int8 kernels"])
        print(f"   kernels alone: float32 / int8 = {np.median(k):.2f} "
              f"({' '.join(f'{v:.2f}' for v in k)})")
        # batch 256, int8 against float32 (medians of alternating calls)
        xb = xte[:256]
        tb = {"int8": [], "float32": []}
        for _ in range(3):
            tb["int8"].append(median_seconds(lambda: q.predict(xb, th), 11))
            tb["float32"].append(median_seconds(lambda: net.predict(xb, th), 11))
        print(f"   batch 256: int8 {np.median(tb['int8']) * 1e3:.2f} ms, float32 "
              f"{np.median(tb['float32']) * 1e3:.2f} ms (float32 / int8 = "
              f"{np.median(np.array(tb['float32']) / np.array(tb['int8'])):.2f})")
        if not os.path.exists(path):
            continue  # random weights: no accuracy
        n = len(xte)
        pf = batched(lambda x: net.predict(x, th), xte)
        pq = batched(lambda x: q.predict(x, th), xte)
        acc = {"float32": (pf == yte).mean(), "int8 (sparsefan)": (pq == yte).mean()}
        for label in ("ORT int8 dyn", "ORT int8 static"):
            if label in labels:
                acc[label] = (batched(labels[label], xte) == yte).mean()
        print(f"   test accuracy ({n} images): " + ", ".join(
            f"{k} {100 * v:.2f}%" for k, v in acc.items()))
        print(f"   int8 - float32: {100 * (acc['int8 (sparsefan)'] - acc['float32']):+.2f} points; "
              f"int8 and float32 agree on {100 * (pq == pf).mean():.2f}% of the images")


if __name__ == "__main__":
    main()
