"""One training step of the MNIST networks: forward, aggregate loss, backward (all gradients).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/train_step.py [--batch 128]
        [--threads 2] [--repeats 21]

The architectures of experiments/mnist_results.py with random weights (the time does not
depend on them), at the trainer's default batch of 128. Prints the median time of
``Network.loss_and_grad`` (with a ``Workspace``, as the trainer runs it), of its forward pass (``forward_fm``) and of its backward pass alone
(every layer's gradients from a given dy, on the activations the forward kept, dy copied in
each call as the step does), and their ratio, so that a change to the kernels or to the glue
around them can be measured in one command. The
last columns are a step of certified L2 training (``sparsefan.train.certified_step``: the same
plus the Lipschitz bound, its power iteration and its gradient) and of certified L0 training at
12 pixels (``sparsefan.certify.L0Bound``: the influence bound's passes over |W| and the chain
term), same run.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from network_latency import ARCHITECTURES  # noqa: E402

import sparsefan as sf  # noqa: E402
from sparsefan import _engine  # noqa: E402
from sparsefan._timing import median_seconds as median_time  # noqa: E402
from sparsefan.certify import L0Bound  # noqa: E402
from sparsefan.lipschitz import MarginBound  # noqa: E402
from sparsefan.train import TrainConfig, certified_step  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=21)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    print(f"batch {args.batch}, threads {args.threads}, medians of {args.repeats}")
    print(f"{'model':12s} {'step ms':>8s} {'forward ms':>11s} {'backward ms':>12s} "
          f"{'bwd/fwd':>8s} {'GFLOP/s':>8s} "
          f"{'certified L2 step ms':>21s} {'certified L0 step ms':>21s}")
    for name, build in ARCHITECTURES.items():
        net = build()
        grads = [(np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
                 for l in net.layers]
        ws = sf.Workspace()  # as the trainer does: the step's buffers reused
        step = median_time(lambda: net.loss_and_grad(x, y, grads=grads, n_threads=args.threads,
                                                     workspace=ws), args.repeats)
        xt = sf.to_feature_major(x)
        fwd = median_time(lambda: net.forward_fm(xt, args.threads, keep=True), args.repeats)
        acts = _engine.forward_chain(net._chain(), xt, args.threads, keep=True)
        dy = rng.standard_normal(acts[-1].shape).astype(np.float32)
        bws = sf.Workspace()
        bwd = median_time(lambda: _engine.backward_chain(net._chain(), acts, dy.copy(),
                                                          args.threads, grads, ws=bws),
                          args.repeats)
        flops = 3 * net.flops(args.batch)  # forward + input and weight gradients
        cfg = TrainConfig(l2_epsilon=1.58, n_threads=args.threads)
        bound = MarginBound(net)
        cert = median_time(lambda: certified_step(net, bound, x, y, 1.58, cfg, grads),
                           args.repeats)
        cfg0 = TrainConfig(l0_radius=12, n_threads=args.threads)
        bound0 = L0Bound(net, 12)
        cert0 = median_time(lambda: certified_step(net, bound0, x, y, 1.0, cfg0, grads),
                            args.repeats)
        print(f"{name:12s} {step * 1e3:8.1f} {fwd * 1e3:11.1f} {bwd * 1e3:12.1f} "
              f"{bwd / fwd:8.2f} {flops / step / 1e9:8.1f} "
              f"{cert * 1e3:14.1f} ({cert / step:.2f}x) {cert0 * 1e3:14.1f} "
              f"({cert0 / step:.2f}x)")


if __name__ == "__main__":
    main()
