"""The cost of a certificate with every prediction: Network.predict_certified against
Network.predict, same run, batch 1 and 256.

    python bench/predict_certified.py [MODEL ...] [--threads 2] [--repeats 301]

MODEL is a model file, or an architecture name of bench/network_latency.py (direct, hierarchy2,
hierarchy3, dense_mlp; random weights: the time does not depend on the values). The constants
(L2 bounds, L0 influence tables) are computed once per weight state, before timing, and their
one-off cost is printed beside. Medians of alternating runs; the ratio is the overhead.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from network_latency import load  # noqa: E402

from sparsefan import certify  # noqa: E402


def median_pair(a, b, repeats):
    """Medians of a() and b(), timed alternately so that machine noise hits both alike."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return float(np.median(ta)), float(np.median(tb))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["direct", "hierarchy2", "hierarchy3",
                                                 "dense_mlp"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=301)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}; medians of {args.repeats} alternating runs")
    print(f"{'model':>12} {'batch':>6} {'predict':>11} {'certified':>11} {'overhead':>9}")
    for name in args.models:
        net = load(name)
        t0 = time.perf_counter()
        certify.certificate_tables(net)
        setup = time.perf_counter() - t0
        for batch in (1, 256):
            x = rng.random((batch, net.n_in), dtype=np.float32)
            tp, tc = median_pair(lambda: net.predict(x, args.threads),
                                 lambda: net.predict_certified(x, args.threads),
                                 args.repeats if batch == 1 else max(21, args.repeats // 10))
            print(f"{name:>12} {batch:>6} {tp * 1e3:>8.3f} ms {tc * 1e3:>8.3f} ms "
                  f"{100 * (tc / tp - 1):>+8.1f}%")
        print(f"{'':>12} constants once per weight state: {setup * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
