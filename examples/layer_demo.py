"""One fixed fan-in layer at MNIST size: build it, check it against the reference, time it.

    python examples/layer_demo.py
"""
import time

import numpy as np

import sparsefan as sf
from sparsefan import reference


def median_time(fn, repeat=21):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    # 28x28 inputs -> 2N = 1568 units, each reading 28 pixels around its centre
    conn = sf.Connectivity.gaussian((28, 28), n_out=1568, k=28, seed=0)
    layer = sf.FanIn(conn, activation="relu", seed=0)
    print(layer)
    print("degrees:", conn.degree_stats())
    print(f"OpenMP: {sf.openmp_enabled()}, threads: {sf.resolve_n_threads(None)}")

    rng = np.random.default_rng(0)
    x = rng.random((256, 784), dtype=np.float32)
    y = layer.forward(x)
    g = layer.backward(x, np.ones_like(y), y)
    y_ref = reference.fanin_forward(x[:, :, None], conn, layer.weight, layer.bias, "relu")[..., 0]
    dx, dW, db = reference.fanin_backward(x[:, :, None], conn, layer.weight, layer.bias,
                                          np.ones((256, 1568, 1)), "relu")
    for name, a, b in [("forward", y, y_ref), ("grad input", g.input, dx[..., 0]),
                       ("grad weight", g.weight, dW), ("grad bias", g.bias, db)]:
        print(f"{name:12s} relative error vs float64 reference: "
              f"{np.linalg.norm(a - b) / np.linalg.norm(b):.2e}")

    xt = sf.to_feature_major(x)
    out = np.empty((1568, 1, 256), np.float32)
    t_sparse = median_time(lambda: layer.forward_fm(xt, out=out, check_finite=False))
    dense = np.ascontiguousarray(conn.to_scipy(layer.weight.reshape(-1)).toarray().T)
    t_dense = median_time(lambda: x @ dense)
    flops = layer.flops(256)
    print(f"forward, batch 256: sparsefan {t_sparse * 1e6:.0f} us ({flops / t_sparse / 1e9:.1f} "
          f"GFLOP/s); numpy dense {t_dense * 1e6:.0f} us; ratio {t_dense / t_sparse:.1f}x")


if __name__ == "__main__":
    main()
