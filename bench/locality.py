"""Single-channel fixed fan-in layers against dense sgemm, interleaved: how close the kernels get
to the machine's practical peak, and how much of the gap is memory.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/locality.py [--batch 256]
        [--rounds 15] [--threads 1] [--orders]

Layers of N inputs -> 2N units, one channel, ReLU, for N = 784 (a 28 x 28 image) and 4096 (64 x
64), fan-in 9 and 28, with three wirings:

    gaussian   Connectivity.gaussian: units on a grid in raster order, each reading pixels near
               its centre (neighbouring units share most of their inputs)
    random     Connectivity.random: no sharing to speak of
    same rows  every unit reads the same k inputs, which stay in L1: the kernel's arithmetic
               ceiling (784 only)

For each it times the forward pass, the weight gradient and the input gradient. Every round
times the sgemm (256 x 2048 @ 2048 x 2048, numpy) and then each kernel, back to back (best of
three calls each), and a cell is the median over the rounds of the per-round ratio -- so that
a slow period of this shared machine slows numerator and denominator alike. ``--orders`` also
runs the gaussian forward with the units processed in square blocks of 4, 8 and 16 grid cells
instead of raster order (the rows permuted before the layer is built: same work, other order).
"""
import argparse
import os
import statistics
import time

import numpy as np

import sparsefan as sf
from sparsefan import _engine, _kernels
from sparsefan.connectivity import grid_centres


def best_of(fn, n=3):
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def blocked(conn, side, block):
    """The connectivity with its rows in square blocks of ``block`` x ``block`` grid centres,
    raster order inside a block (the gaussian builder's default centres)."""
    k = conn.k
    cent = np.round(grid_centres(side, side, conn.n_out)).astype(int)
    order = np.lexsort((cent[:, 1], cent[:, 0], cent[:, 1] // block, cent[:, 0] // block))
    rows = conn.indices.reshape(conn.n_out, k)[order]
    return sf.Connectivity(conn.n_in, np.arange(conn.n_out + 1) * k, rows.reshape(-1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--orders", action="store_true", help="also time blocked unit orders")
    args = p.parse_args()
    B, n = args.batch, args.threads
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:  # numpy's BLAS then uses every core: say so
        print("threadpoolctl not installed: the sgemm runs on numpy's default threads")
    rng = np.random.default_rng(0)
    a = rng.random((256, 2048), dtype=np.float32)
    bm = rng.random((2048, 2048), dtype=np.float32)
    prod = np.empty((256, 2048), np.float32)
    gemm_flops = 2 * 256 * 2048 * 2048

    cases = []
    for side in (28, 64):
        n_in = side * side
        for k in (9, 28):
            g = sf.Connectivity.gaussian((side, side), 2 * n_in, k, seed=0)
            cases.append((f"{n_in} k{k} gaussian", g))
            if args.orders:
                for blk in (4, 8, 16):
                    cases.append((f"{n_in} k{k} gaussian, blocks of {blk}", blocked(g, side, blk)))
            cases.append((f"{n_in} k{k} random", sf.Connectivity.random(n_in, 2 * n_in, k, seed=0)))
    for k in (9, 28):
        cases.append((f"784 k{k} same rows", sf.Connectivity.from_rows(784, [list(range(k))] * 1568)))

    print(f"batch {B}, threads {n}, kernels {_kernels.cpu_variant()}, medians over "
          f"{args.rounds} rounds of the per-round ratio to sgemm; pid {os.getpid()}")
    print(f"{'layer':34s} {'forward':>9s} {'weight grad':>12s} {'input grad':>11s}   (% of sgemm)")
    for label, conn in cases:
        layer = sf.FanIn(conn, 1, 1, activation="relu", seed=0)
        xt = rng.random((conn.n_in, 1, B), dtype=np.float32)
        dy = rng.standard_normal((conn.n_out, 1, B)).astype(np.float32)
        out = _engine.empty_aligned((conn.n_out, 1, B))
        gw = np.zeros(layer.weight.shape, np.float32)
        gb = np.zeros(layer.bias.shape, np.float32)
        gi = _engine.empty_aligned(xt.shape)
        t = conn.transpose()
        ops = {
            "forward": lambda: _engine.linear(layer, out, xt, n, True),
            "params": lambda: _kernels.fanin_backward_params(
                gw.reshape(-1), gb.reshape(-1), dy.reshape(-1), xt.reshape(-1), conn.indptr,
                conn.indices, 1, 1, B, n),
            "input": lambda: _kernels.fanin_backward_input(
                gi.reshape(-1), dy.reshape(-1), layer.weight.reshape(-1), t.indptr, t.rows,
                t.slots, 1, 1, B, n, accumulate=False),
        }
        ratios = {k: [] for k in ops}
        flops = 2 * conn.nnz * B
        for _ in range(args.rounds):
            peak = gemm_flops / best_of(lambda: np.matmul(a, bm, out=prod))
            for name, fn in ops.items():
                ratios[name].append(flops / best_of(fn) / peak)
        cells = [f"{100 * statistics.median(ratios[k]):.1f}%" for k in ops]
        print(f"{label:34s} {cells[0]:>9s} {cells[1]:>12s} {cells[2]:>11s}", flush=True)


if __name__ == "__main__":
    main()
