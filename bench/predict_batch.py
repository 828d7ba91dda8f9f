"""Network.predict on many images: aggregated ``batch_size`` examples at a time (the default,
256) against the whole input at once (``batch_size=len(x)``, what predict did before), same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/predict_batch.py [--n 8192]
        [--threads 1] [--repeats 5] [--sizes 64,256,1024]

Random weights and images (the time does not depend on them); the variants alternate within
every repeat, and the table gives medians in images per second and the ratio to the whole-input
baseline.
"""
import argparse
import time

import numpy as np

from sparsefan import builders

NETWORKS = {
    "direct49": lambda: builders.direct((28, 28), 10, fan_in=49, hidden=(24,), seed=0),
    "hierarchy3": lambda: builders.hierarchy(levels=3, wiring="gaussian", channels=(8, 16, 16),
                                             seed=0),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", default="64,256,1024")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    x = np.random.default_rng(0).random((args.n, 784), dtype=np.float32)
    print(f"{args.n} images, {args.threads} thread(s), medians of {args.repeats}; images/s")
    print(f"{'network':12s} {'whole':>8s}" + "".join(f" {'bs ' + str(s):>14s}" for s in sizes))
    for name, make in NETWORKS.items():
        net = make()
        net.predict(x[:512], args.threads)
        variants = {"whole": args.n, **{s: s for s in sizes}}
        times = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, bs in variants.items():
                t0 = time.perf_counter()
                net.predict(x, args.threads, batch_size=bs)
                times[k].append(time.perf_counter() - t0)
        rate = {k: args.n / np.median(v) for k, v in times.items()}
        print(f"{name:12s} {rate['whole']:8.0f}" + "".join(
            f" {rate[s]:7.0f} ({rate[s] / rate['whole']:.2f}x)" for s in sizes))


if __name__ == "__main__":
    main()
