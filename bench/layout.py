"""The public layout against the kernels' layout: FanIn.forward / backward on (batch, units)
arrays against forward_fm / backward_fm on (units, channels, batch) ones, same layer, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/layout.py [--threads 1,2]
        [--batches 1,16,64,256] [--n-out 1568] [--fan-in 49] [--c-in 1] [--c-out 1]

The layer reads a 28 x 28 image (784 inputs) through gaussian fields. Both sides allocate their
results, as a caller of either API does; the feature-major side is handed inputs already in its
layout. The variants alternate in every round and the table gives medians over all rounds, so
that a noisy neighbour slows both alike. ``public / fm`` is the cost of the layout change (goal:
at most 1.10 at batch >= 16). ``fm`` calls the feature-major side again and again on the same
arrays, which then stay in every core's cache; ``fm*`` rewrites its inputs (untimed) before each
call, as a caller that has just produced them. The public side always writes its transposed input
itself, so at two threads half of it sits dirty in the other core's cache: ``pub / fm*`` compares
like with like, ``pub / fm`` is the stricter bound. The last columns time the layout change
itself: the transpose of the input (batch x 784) and of the output (units x batch) against a copy
of the same bytes.
"""
import argparse
import time

import numpy as np

import sparsefan as sf
from sparsefan import _kernels


def medians(fns, repeats, rounds):
    """Median seconds per function, the functions alternating round by round. A function given
    as (prepare, fn) has prepare() run, untimed, before every call."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            prepare, fn = fn if isinstance(fn, tuple) else (None, fn)
            fn()
            for _ in range(repeats):
                if prepare is not None:
                    prepare()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--n-out", type=int, default=1568)
    p.add_argument("--fan-in", type=int, default=49)
    p.add_argument("--c-in", type=int, default=1)
    p.add_argument("--c-out", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--budget", type=float, default=0.02,
                   help="seconds of calls per variant and round (sets the repeats)")
    args = p.parse_args()
    conn = sf.Connectivity.gaussian((28, 28), n_out=args.n_out, k=args.fan_in, seed=0)
    layer = sf.FanIn(conn, args.c_in, args.c_out, activation="relu", seed=0)
    rng = np.random.default_rng(0)
    print(f"layer: 784 inputs x {args.c_in} -> {args.n_out} units x {args.c_out}, fan-in "
          f"{args.fan_in}, relu; kernels {_kernels.cpu_variant()}; medians of {args.rounds} "
          f"alternating rounds; times in microseconds")
    print(f"{'thr':>3s} {'batch':>5s} | {'forward':>9s} {'fwd_fm':>9s} {'pub/fm':>6s} "
          f"{'fwd_fm*':>9s} {'pub/fm*':>7s} | {'backward':>9s} {'bwd_fm':>9s} {'pub/fm':>6s} "
          f"{'bwd_fm*':>9s} {'pub/fm*':>7s} | {'T(x)':>7s} {'copy':>7s} {'T(y)':>7s} "
          f"{'copy':>7s}")
    for n in [int(t) for t in args.threads.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            x = rng.random((batch, 784, args.c_in), dtype=np.float32)
            if args.c_in == 1:
                x = x.reshape(batch, 784)
            xt = sf.to_feature_major(x)
            y = layer.forward(x, n_threads=n)
            yt = layer.forward_fm(xt, n_threads=n)
            dy = np.cos(y)
            dyt = sf.to_feature_major(dy.reshape(batch, args.n_out, args.c_out))
            xf, ytf = x.reshape(-1), yt.reshape(-1)
            xt0, dyt0 = xt.copy(), dyt.copy()

            def rewrite():  # as a caller that has just produced the inputs
                np.copyto(xt, xt0)
                np.copyto(dyt, dyt0)

            bx, by = np.empty_like(xf), np.empty_like(ytf)
            fns = {
                "forward": lambda: layer.forward(x, n_threads=n),
                "forward_fm": lambda: layer.forward_fm(xt, n_threads=n),
                "backward": lambda: layer.backward(x, dy, y, n_threads=n),
                "backward_fm": lambda: layer.backward_fm(xt, dyt, yt, n_threads=n),
                "forward_fm*": (rewrite, lambda: layer.forward_fm(xt, n_threads=n)),
                "backward_fm*": (rewrite, lambda: layer.backward_fm(xt, dyt, yt, n_threads=n)),
                "T(x)": lambda: _kernels.transpose(bx, xf, batch, xf.size // batch, n),
                "copy(x)": lambda: np.copyto(bx, xf),
                "T(y)": lambda: _kernels.transpose(by, ytf, ytf.size // batch, batch, n),
                "copy(y)": lambda: np.copyto(by, ytf),
            }
            t0 = time.perf_counter()
            for fn in fns.values():
                (fn[1] if isinstance(fn, tuple) else fn)()
            repeats = max(3, int(args.budget / max(time.perf_counter() - t0, 1e-6) * 2))
            r = medians(fns, repeats, args.rounds)
            us = {k: v * 1e6 for k, v in r.items()}
            print(f"{n:3d} {batch:5d} | {us['forward']:9.1f} {us['forward_fm']:9.1f} "
                  f"{r['forward'] / r['forward_fm']:6.2f} {us['forward_fm*']:9.1f} "
                  f"{r['forward'] / r['forward_fm*']:7.2f} | {us['backward']:9.1f} "
                  f"{us['backward_fm']:9.1f} {r['backward'] / r['backward_fm']:6.2f} "
                  f"{us['backward_fm*']:9.1f} {r['backward'] / r['backward_fm*']:7.2f} | "
                  f"{us['T(x)']:7.1f} {us['copy(x)']:7.1f} {us['T(y)']:7.1f} "
                  f"{us['copy(y)']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
