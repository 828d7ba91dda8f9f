"""Cost scaling: forward time per example against the input size N, for the direct design
(fan-in N^(2/3): O(N^(5/3))) and hierarchies with L = 2 and 3 (fan-in N^(1/L): O(N^(4/3)),
O(N^(7/6))), with fitted exponents and a PNG plot.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/scaling.py [--sides 16,24,32,48,64]
        [--batch 64] [--out bench/scaling.png]

Square images of side s (N = s^2), 2N units per level, one channel per unit and level (so the
FLOPs follow the wiring alone), a per-unit head of 10 classes. Medians of repeated forward
passes in the kernels' layout; the exponent is the least-squares slope of log(time) on log(N).
"""
import argparse

import numpy as np

import sparsefan as sf
from sparsefan._timing import median_seconds as median_time
from sparsefan import builders


def build(kind, side):
    shape = (side, side)
    if kind == "direct":
        return builders.direct(shape, 10, hidden=(1,), seed=0)
    levels = int(kind[-1])
    return builders.hierarchy(shape, 10, levels=levels, channels=[1] * levels, seed=0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", default="16,24,32,48,64")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default="bench/scaling.png")
    args = p.parse_args()
    sides = [int(s) for s in args.sides.split(",")]
    kinds = ["direct", "hierarchy2", "hierarchy3"]
    rng = np.random.default_rng(0)
    results = {k: [] for k in kinds}
    print(f"{'design':12s} {'N':>6s} {'FLOPs/ex':>12s} {'us/example':>11s}")
    for kind in kinds:
        for side in sides:
            net = build(kind, side)
            N = side * side
            xt = sf.to_feature_major(rng.random((args.batch, N), dtype=np.float32))
            t = median_time(lambda: net.forward_fm(xt), 15) / args.batch
            results[kind].append((N, net.flops(), t))
            print(f"{kind:12s} {N:6d} {net.flops():12,d} {t * 1e6:11.2f}", flush=True)
    print("fitted exponents (time ~ N^a; FLOPs ~ N^b):")
    fits = {}
    for kind in kinds:
        n, f, t = (np.array(v, dtype=float) for v in zip(*results[kind]))
        a = np.polyfit(np.log(n), np.log(t), 1)[0]
        b = np.polyfit(np.log(n), np.log(f), 1)[0]
        fits[kind] = (a, b)
        print(f"  {kind:12s} time a = {a:.2f}   FLOPs b = {b:.2f}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in kinds:
        n, _, t = zip(*results[kind])
        ax.loglog(n, np.array(t) * 1e6, "o-", label=f"{kind} (fit N^{fits[kind][0]:.2f})")
    ax.set_xlabel("N (inputs)")
    ax.set_ylabel("forward time per example (µs)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
