"""One fixed fan-in layer, sparsefan against every peer that is installed, in one run.

For each layer N_in -> n_out = 2 * N_in with fan-in k (random connectivity), batch B, float32,
one channel, it times three operations on the same data:

    forward   y = W x + b
    backward  the input gradient and the weight (and bias) gradient, given x and dy
    train     forward + backward (the gradient computation of one training step)

and prints GFLOP/s of *useful* work (2 * nnz * B per pass; backward and train count 2 and 3
passes) plus the fraction of the same run's dense sgemm GFLOP/s (numpy/BLAS on a square-ish
GEMM at the same batch, measured first), and the speed of sparsefan relative to each peer.
Times are medians over repeats. Peers:

    numpy dense      the same layer as a dense (n_out x N_in) matrix (skipped above --dense-limit)
    scipy CSR        csr @ x (single-threaded); backward: csr.T @ dy and, for dW, a numpy gather
    torch dense      x @ Wt + b with autograd
    torch CSR        torch.sparse.mm(W_csr, x) with autograd
    torch gather     (x[:, idx] * W).sum(-1) + b with autograd (skipped above --gather-limit)
    sparselab        PaddedCSR + its autograd SpMM, our tables loaded into it
    onnxruntime      forward only, Gather -> Mul -> ReduceSum graph (skipped above --gather-limit)

sparsefan runs in its feature-major layout with preallocated buffers, as inside a network (the
layout change happens once at a network's entry and exit); scipy, torch CSR and SparseLab get
the (N_in, B) layout they prefer, numpy/torch dense the (B, N_in) one.

Run (unset this machine's OpenBLAS overrides so numpy uses its own tuned kernels):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py --quick
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py --csv results.csv
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import statistics
import sys
import time
import warnings


def _threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


# BLAS and OpenMP pools read their size when first loaded: set it before numpy is imported, so
# that every library (numpy's BLAS included) runs on the same number of threads.
if _threads_from_argv(sys.argv[1:]):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402
import scipy  # noqa: E402

import sparsefan as sf  # noqa: E402
from sparsefan import _kernels  # noqa: E402

OPS = ("forward", "backward", "train")
PASSES = {"forward": 1, "backward": 2, "train": 3}


def log(*args):
    print(*args, flush=True)


# -- timing -------------------------------------------------------------------------------------

def median_time(fn, min_repeats=5, max_repeats=50, budget=1.0):
    """Median wall time of fn() after one warm-up call, repeating up to ``budget`` seconds."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats
                                        or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgemm_gflops(batch, n, threads, repeats):
    """The machine's dense sgemm speed in this run: (batch x n) @ (n x n), numpy/BLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((max(batch, 256), n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((a.shape[0], n), np.float32)
    t = median_time(lambda: np.matmul(a, b, out=out), min_repeats=repeats)
    return 2 * a.shape[0] * n * n / t / 1e9


# -- peers ----------------------------------------------------------------------------------------

class Problem:
    """One layer and its data, shared by every peer."""

    def __init__(self, n_in, k, batch, seed=0):
        self.n_in, self.n_out, self.k, self.batch = n_in, 2 * n_in, k, batch
        self.conn = sf.Connectivity.random(n_in, self.n_out, k, seed=seed)
        self.layer = sf.FanIn(self.conn, seed=seed)
        rng = np.random.default_rng(seed + 1)
        self.layer.bias = (0.1 * rng.standard_normal(self.layer.bias_shape)).astype(np.float32)
        self.x = rng.standard_normal((batch, n_in)).astype(np.float32)
        self.dy = rng.standard_normal((batch, self.n_out)).astype(np.float32)
        self.w = self.layer.weight.reshape(-1)
        self.b = self.layer.bias.reshape(-1)
        self.nnz = self.conn.nnz
        self.rows = self.conn.row_of_connection().astype(np.int64)
        self.expect = None  # sparsefan's forward output (batch, n_out), for sanity checks

    def flops(self, op):
        return 2 * self.nnz * self.batch * PASSES[op]


class SparsefanPeer:
    name = "sparsefan"

    def __init__(self, p, threads):
        self.p, self.n = p, threads
        L = p.layer
        self.xt = sf.to_feature_major(p.x)
        self.dyt = sf.to_feature_major(p.dy)
        self.yt = sf.layout.empty_aligned((p.n_out, 1, p.batch))
        self.gx = sf.layout.empty_aligned(self.xt.shape, zero=True)
        self.gw = np.zeros(L.weight_shape, np.float32)
        self.gb = np.zeros(L.bias_shape, np.float32)
        L.connectivity.transpose()  # built once per connectivity, not per step

    def forward(self):
        self.p.layer.forward_fm(self.xt, out=self.yt, n_threads=self.n, check_finite=False)

    def backward(self):
        self.p.layer.backward_fm(self.xt, self.dyt, grad_input=self.gx, grad_weight=self.gw,
                                 grad_bias=self.gb, n_threads=self.n, check_finite=False)

    def train(self):
        self.forward()
        self.backward()

    def output(self):
        self.forward()
        return self.yt[:, 0, :].T


class NumpyDensePeer:
    name = "numpy dense"

    def __init__(self, p, threads):
        self.p = p
        self.Wt = np.ascontiguousarray(p.conn.to_scipy(p.w).toarray().T)  # (n_in, n_out)
        self.y = np.empty((p.batch, p.n_out), np.float32)
        self.dx = np.empty((p.batch, p.n_in), np.float32)
        self.dWt = np.empty_like(self.Wt)

    def forward(self):
        np.matmul(self.p.x, self.Wt, out=self.y)
        self.y += self.p.b

    def backward(self):
        np.matmul(self.p.dy, self.Wt.T, out=self.dx)
        np.matmul(self.p.x.T, self.p.dy, out=self.dWt)
        self.p.dy.sum(axis=0)

    def train(self):
        self.forward()
        self.backward()

    def output(self):
        self.forward()
        return self.y


class ScipyPeer:
    name = "scipy CSR"

    def __init__(self, p, threads):
        self.p = p
        self.csr = p.conn.to_scipy(p.w).tocsr()
        self.csr_t = self.csr.T.tocsr()
        self.xt = np.ascontiguousarray(p.x.T)
        self.dyt = np.ascontiguousarray(p.dy.T)
        self.b = p.b[:, None]

    def forward(self):
        return self.csr @ self.xt + self.b

    def backward(self):
        self.csr_t @ self.dyt
        # scipy has no sampled dense-dense product: the weight gradient is a numpy gather
        np.einsum("pb,pb->p", self.xt[self.p.conn.indices], self.dyt[self.p.rows])
        self.dyt.sum(axis=1)

    def train(self):
        self.forward()
        self.backward()

    def output(self):
        return self.forward().T


class TorchBase:
    def __init__(self, p, threads):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.p = p

    def train(self):
        y = self._forward_graph()
        y.backward(self.dy)

    def backward(self):
        # the gradient pass alone: the forward graph is rebuilt outside the timed call
        y = self._forward_graph()
        return lambda: y.backward(self.dy, retain_graph=True)


class TorchDensePeer(TorchBase):
    name = "torch dense"

    def __init__(self, p, threads):
        super().__init__(p, threads)
        t = self.torch
        self.Wt = t.tensor(p.conn.to_scipy(p.w).toarray().T, requires_grad=True)
        self.b = t.tensor(p.b, requires_grad=True)
        self.x = t.tensor(p.x, requires_grad=True)
        self.dy = t.tensor(p.dy)

    def _forward_graph(self):
        return self.x @ self.Wt + self.b

    def forward(self):
        with self.torch.no_grad():
            return self._forward_graph()

    def output(self):
        return self.forward().numpy()


class TorchCSRPeer(TorchBase):
    name = "torch CSR"

    def __init__(self, p, threads):
        super().__init__(p, threads)
        t = self.torch
        c = p.conn
        self.W = t.sparse_csr_tensor(t.tensor(c.indptr), t.tensor(c.indices.astype(np.int64)),
                                     t.tensor(p.w), size=(p.n_out, p.n_in), requires_grad=True)
        self.b = t.tensor(p.b[:, None].copy(), requires_grad=True)
        self.x = t.tensor(np.ascontiguousarray(p.x.T), requires_grad=True)
        self.dy = t.tensor(np.ascontiguousarray(p.dy.T))

    def _forward_graph(self):
        return self.torch.sparse.mm(self.W, self.x) + self.b

    def forward(self):
        with self.torch.no_grad():
            return self._forward_graph()

    def output(self):
        return self.forward().numpy().T


class TorchGatherPeer(TorchBase):
    name = "torch gather"

    def __init__(self, p, threads):
        super().__init__(p, threads)
        t = self.torch
        self.idx = t.tensor(p.conn.indices.astype(np.int64).reshape(p.n_out, p.k))
        self.W = t.tensor(p.w.reshape(p.n_out, p.k), requires_grad=True)
        self.b = t.tensor(p.b, requires_grad=True)
        self.x = t.tensor(p.x, requires_grad=True)
        self.dy = t.tensor(p.dy)

    def _forward_graph(self):
        return (self.x[:, self.idx] * self.W).sum(-1) + self.b

    def forward(self):
        with self.torch.no_grad():
            return self._forward_graph()

    def output(self):
        return self.forward().numpy()


class SparseLabPeer(TorchBase):
    name = "sparselab"

    def __init__(self, p, threads):
        super().__init__(p, threads)
        import sparselab
        from sparselab.ops import _SpMMFunction

        t = self.torch
        self.sparselab, self.fn = sparselab, _SpMMFunction
        c = p.conn
        csr = t.sparse_csr_tensor(t.tensor(c.indptr.astype(np.int32)), t.tensor(c.indices),
                                  t.tensor(p.w), size=(p.n_out, p.n_in))
        # our fixed fan-in table, unpadded (no room reserved for rewiring)
        self.W = sparselab.PaddedCSR.from_torch_sparse_csr(csr, padding_ratio=0.0)
        # as sparselab.SparseLinear does: a Parameter aliasing the C++ value buffer
        self.values = t.nn.Parameter(t.from_numpy(np.asarray(self.W.values)))
        self.b = t.tensor(p.b[:, None].copy(), requires_grad=True)
        self.x = t.tensor(np.ascontiguousarray(p.x.T), requires_grad=True)
        self.dy = t.tensor(np.ascontiguousarray(p.dy.T))

    def _forward_graph(self):
        return self.fn.apply(self.values, self.W, self.x, "simd") + self.b

    def forward(self):
        with self.torch.no_grad():
            return self.sparselab.spmm(self.W, self.x.detach()) + self.b

    def output(self):
        return self.forward().numpy().T


class OnnxRuntimePeer:
    name = "onnxruntime"
    ops = ("forward",)

    def __init__(self, p, threads):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        self.p = p
        init = [numpy_helper.from_array(p.conn.indices.astype(np.int64), "idx"),
                numpy_helper.from_array(p.w.reshape(p.n_out, p.k), "W"),
                numpy_helper.from_array(p.b, "b"),
                numpy_helper.from_array(np.array([0, p.n_out, p.k], np.int64), "shape")]
        nodes = [helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
                 helper.make_node("Reshape", ["g", "shape"], ["g3"]),
                 helper.make_node("Mul", ["g3", "W"], ["m"]),
                 helper.make_node("ReduceSum", ["m", "axes"], ["s"], keepdims=0),
                 helper.make_node("Add", ["s", "b"], ["y"])]
        init.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
        graph = helper.make_graph(
            nodes, "fanin",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, p.n_in])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, p.n_out])], init)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(model.SerializeToString(), opts,
                                         providers=["CPUExecutionProvider"])

    def forward(self):
        return self.sess.run(None, {"x": self.p.x})[0]

    def output(self):
        return self.forward()


PEERS = {
    "numpy": NumpyDensePeer, "scipy": ScipyPeer, "torch-dense": TorchDensePeer,
    "torch-csr": TorchCSRPeer, "torch-gather": TorchGatherPeer, "sparselab": SparseLabPeer,
    "onnxruntime": OnnxRuntimePeer,
}
NEEDS = {"torch-dense": "torch", "torch-csr": "torch", "torch-gather": "torch",
         "sparselab": "sparselab", "onnxruntime": "onnxruntime"}


def available(module):
    try:
        __import__(module)
        if module == "onnxruntime":
            __import__("onnx")
        return True
    except Exception:  # a broken optional install is reported like a missing one
        return False


def versions():
    out = {"python": platform.python_version(), "numpy": np.__version__,
           "scipy": scipy.__version__, "sparsefan": sf.__version__}
    for mod in ("torch", "sparselab", "onnxruntime", "onnx"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:
            pass
    return out


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- the run --------------------------------------------------------------------------------------

def skip_reason(key, p, args):
    dense_bytes = 4 * p.n_in * p.n_out
    gathered_bytes = 4 * p.nnz * p.batch
    if key in ("numpy", "torch-dense") and dense_bytes > args.dense_limit * 2**30:
        return f"dense matrix {dense_bytes / 2**30:.1f} GiB > {args.dense_limit} GiB"
    if key in ("torch-gather", "onnxruntime") and gathered_bytes > args.gather_limit * 2**30:
        return f"gathered (batch, nnz) tensor {gathered_bytes / 2**30:.1f} GiB > " \
               f"{args.gather_limit} GiB"
    if key == "scipy" and p.flops("forward") > args.scipy_limit * 1e9:
        return f"{p.flops('forward') / 1e9:.0f} GFLOP per pass single-threaded: too slow"
    return None


def run_peer(peer, p, repeats):
    out = {}
    for op in getattr(peer, "ops", OPS):
        if op == "backward" and isinstance(peer, TorchBase):
            t = median_time(peer.backward(), min_repeats=repeats)
        else:
            t = median_time(getattr(peer, op), min_repeats=repeats)
        out[op] = t
    return out


def bench_case(n_in, k, batch, args, peers, sgemm, writer, rows_out):
    p = Problem(n_in, k, batch)
    log(f"\n## N_in={n_in}  n_out={p.n_out}  k={k}  batch={batch}  nnz={p.nnz}  "
        f"density={k / n_in:.2%}")
    results = {}
    ours = SparsefanPeer(p, args.threads)
    p.expect = ours.output().copy()
    results["sparsefan"] = run_peer(ours, p, args.repeats)
    del ours
    for key in peers:
        reason = skip_reason(key, p, args)
        if reason:
            log(f"   {PEERS[key].name}: skipped ({reason})")
            continue
        try:
            peer = PEERS[key](p, args.threads)
            got = np.asarray(peer.output(), dtype=np.float32)
            scale = np.abs(p.expect).max() + 1e-30
            err = np.abs(got - p.expect).max() / scale
            if err > 1e-3:
                log(f"   {peer.name}: skipped (output differs from sparsefan by {err:.1e})")
                continue
            results[key] = run_peer(peer, p, args.repeats)
        except MemoryError:
            log(f"   {PEERS[key].name}: skipped (out of memory)")
            continue
        finally:
            peer = None
            gc.collect()
    ref = results["sparsefan"]
    header = f"   {'library':<14}" + "".join(f"{op + ' GF/s':>16}{'%sgemm':>8}{'sf x':>7}"
                                              for op in OPS)
    log(header)
    for key, res in results.items():
        name = "sparsefan" if key == "sparsefan" else PEERS[key].name
        line = f"   {name:<14}"
        for op in OPS:
            if op not in res:
                line += f"{'-':>16}{'':>8}{'':>7}"
                continue
            gf = p.flops(op) / res[op] / 1e9
            speedup = res[op] / ref[op]
            line += f"{gf:>16.1f}{100 * gf / sgemm:>7.0f}%{speedup:>6.1f}x"
            row = dict(n_in=n_in, n_out=p.n_out, k=k, batch=batch, nnz=p.nnz, library=name,
                       op=op, seconds=f"{res[op]:.6g}", gflops=f"{gf:.4g}",
                       pct_sgemm=f"{100 * gf / sgemm:.3g}", sparsefan_speedup=f"{speedup:.4g}",
                       sgemm_gflops=f"{sgemm:.4g}", threads=args.threads)
            rows_out.append(row)
            if writer is not None:
                writer.writerow(row)
        log(line)


def crossover(n_in, batch, args, writer_rows):
    """Fan-in at which sparsefan's forward and train step stop beating dense BLAS."""
    log(f"\n## density crossover: N_in={n_in}, n_out={2 * n_in}, batch={batch}")
    ks, k = [], 8
    while k <= n_in:
        ks.append(k)
        k *= 2
    if ks[-1] != n_in:
        ks.append(n_in)
    dense = None
    found = {}
    log(f"   {'k':>6} {'density':>8} {'fwd sf/dense':>13} {'train sf/dense':>15}")
    for k in ks:
        p = Problem(n_in, k, batch)
        ours = SparsefanPeer(p, args.threads)
        t_sf = {op: median_time(getattr(ours, op), min_repeats=args.repeats)
                for op in ("forward", "train")}
        if dense is None:  # the dense layer's cost does not depend on k
            peer = NumpyDensePeer(p, args.threads)
            dense = {op: median_time(getattr(peer, op), min_repeats=args.repeats)
                     for op in ("forward", "train")}
            peer = None
        r = {op: dense[op] / t_sf[op] for op in t_sf}
        log(f"   {k:>6} {k / n_in:>8.2%} {r['forward']:>12.2f}x {r['train']:>14.2f}x")
        for op in r:
            writer_rows.append(dict(n_in=n_in, n_out=2 * n_in, k=k, batch=batch,
                                    nnz=p.nnz, library="sparsefan/numpy dense",
                                    op=f"crossover {op}", seconds=f"{t_sf[op]:.6g}",
                                    gflops="", pct_sgemm="", sparsefan_speedup=f"{r[op]:.4g}",
                                    sgemm_gflops="", threads=args.threads))
            if r[op] < 1 and op not in found:
                found[op] = k
        if len(found) == 2:
            break
    for op in ("forward", "train"):
        if op in found:
            log(f"   {op}: dense BLAS wins from k = {found[op]} "
                f"(density {found[op] / n_in:.1%}) on")
        else:
            log(f"   {op}: sparsefan is faster up to k = {ks[-1]} (density "
                f"{ks[-1] / n_in:.0%})")


def locality_ceiling(args, sgemm, n_in=784, k=28, batch=256):
    """What the forward kernel reaches when its gathered rows sit in L1 (every unit reads the
    same k inputs: the kernel's arithmetic ceiling) against random rows (served from L2 or
    beyond): the gap is memory traffic, not arithmetic."""
    log(f"\n## forward ceiling: N_in={n_in}, n_out={2 * n_in}, k={k}, batch={batch}")
    rng = np.random.default_rng(0)
    x = sf.to_feature_major(rng.standard_normal((batch, n_in)).astype(np.float32))
    out = sf.layout.empty_aligned((2 * n_in, 1, batch))
    cases = [("random rows (as in the tables)", sf.Connectivity.random(n_in, 2 * n_in, k, seed=0)),
             ("same k rows for every unit (L1-resident)",
              sf.Connectivity.from_rows(n_in, [list(range(k))] * (2 * n_in)))]
    for label, conn in cases:
        layer = sf.FanIn(conn, seed=0)
        t = median_time(lambda: layer.forward_fm(x, out=out, n_threads=args.threads,
                                                 check_finite=False), min_repeats=args.repeats)
        gf = 2 * conn.nnz * batch / t / 1e9
        log(f"   {label:<42} {gf:8.1f} GF/s {100 * gf / sgemm:6.0f}% sgemm")


def parse_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a small subset: N_in 784 and 4096, k 9 and 28, batch 1 and 256")
    ap.add_argument("--sizes", type=parse_list, default=[784, 4096, 16384, 150528],
                    help="comma-separated N_in values")
    ap.add_argument("--fanin", type=parse_list, default=[9, 28, 85],
                    help="comma-separated fan-in values k")
    ap.add_argument("--batch", type=parse_list, default=[1, 16, 256],
                    help="comma-separated batch sizes")
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every library (default: sparsefan's default)")
    ap.add_argument("--repeats", type=int, default=5, help="minimum timed repeats per op")
    ap.add_argument("--dense-limit", type=float, default=2.5,
                    help="skip dense peers above this many GiB of dense matrix")
    ap.add_argument("--gather-limit", type=float, default=2.0,
                    help="skip gather peers above this many GiB of gathered tensor")
    ap.add_argument("--scipy-limit", type=float, default=4.0,
                    help="skip scipy above this many GFLOP per pass")
    ap.add_argument("--crossover", type=parse_list, default=None,
                    help="N_in values for the density crossover (default: 784,4096; "
                         "--quick: 784); 0 to skip")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                    help="skip the forward-ceiling diagnostic (L1-resident against random rows)")
    ap.add_argument("--csv", default="bench/compare_results.csv", help="CSV output path")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.fanin, args.batch = [784, 4096], [9, 28], [1, 256]
    if args.crossover is None:
        args.crossover = [784] if args.quick else [784, 4096]
    args.threads = sf.resolve_n_threads(args.threads)

    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            log(f"note: {var}={os.environ[var]} is set; numpy's BLAS may not run its own "
                f"tuned kernels (run with env -u {var})")
    peers = []
    for key in [s.strip() for s in args.peers.split(",") if s.strip()]:
        if key not in PEERS:
            ap.error(f"unknown peer {key!r}; choose from {','.join(PEERS)}")
        if key in NEEDS and not available(NEEDS[key]):
            log(f"note: {PEERS[key].name} skipped: {NEEDS[key]} is not installed "
                f"(pip install '.[bench]')")
            continue
        peers.append(key)
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")

    log("# sparsefan bench/compare.py")
    log(f"machine: {cpu_name()}, {os.cpu_count()} CPUs visible, threads used: {args.threads}")
    log(f"sparsefan kernels: {_kernels.cpu_variant()} (supported: "
        f"{', '.join(_kernels.supported_cpu_variants())}), OpenMP: {sf.openmp_enabled()}")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    log("command: " + " ".join([os.path.basename(sys.executable)] + sys.argv))

    sgemm = sgemm_gflops(256, 2048, args.threads, args.repeats)
    log(f"dense sgemm (numpy, 256 x 2048 @ 2048 x 2048): {sgemm:.1f} GFLOP/s  "
        f"<- the '%sgemm' baseline")
    log("columns: GF/s of useful work (2*nnz*batch per pass), % of that sgemm, and "
        "'sf x' = this library's time / sparsefan's time (>1: sparsefan is faster)")

    if args.ceiling:
        locality_ceiling(args, sgemm)
    rows = []
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        fields = ["n_in", "n_out", "k", "batch", "nnz", "library", "op", "seconds", "gflops",
                  "pct_sgemm", "sparsefan_speedup", "sgemm_gflops", "threads"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for n_in in args.sizes:
            for k in args.fanin:
                for batch in args.batch:
                    bench_case(n_in, k, batch, args, peers, sgemm, writer, rows)
                    f.flush()
        cross_rows = []
        for n_in in args.crossover:
            if n_in > 0:
                crossover(n_in, 256, args, cross_rows)
        for row in cross_rows:
            writer.writerow(row)
    # the baseline again at the end: a shared machine drifts
    sgemm_end = sgemm_gflops(256, 2048, args.threads, args.repeats)
    log(f"\ndense sgemm at the end of the run: {sgemm_end:.1f} GFLOP/s (start: {sgemm:.1f})")
    log(f"CSV: {args.csv}")


if __name__ == "__main__":
    main()
