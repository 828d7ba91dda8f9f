"""Weight gradient of a per-unit layer (one connection per unit, c_in -> c_out channels), the
shape of a classification head or of a per-unit MLP's second layer.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/weight_grad.py \\
        [--shapes 32:10,24:10,32:12,32:9,32:16] [--units 1568] [--batch 128] [--threads 1]

Times the bare kernel call (``_kernels.fanin_backward_params``: weight and bias gradients,
feature-major inputs, preallocated outputs), median of ``--repeats`` calls, in ms. Compare
builds by running the script under each, alternating.
"""
import argparse

import numpy as np

import sparsefan as sf
from sparsefan import _kernels
from sparsefan._timing import median_seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="32:10,24:10,32:12,32:9,32:16",
                   help="c_in:c_out pairs, comma-separated")
    p.add_argument("--units", type=int, default=1568)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=21)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    conn = sf.Connectivity.from_rows(args.units, [[j] for j in range(args.units)])
    cells = []
    for shape in args.shapes.split(","):
        c_in, c_out = (int(v) for v in shape.split(":"))
        x = rng.standard_normal(args.units * c_in * args.batch).astype(np.float32)
        dy = rng.standard_normal(args.units * c_out * args.batch).astype(np.float32)
        gw = np.zeros(args.units * c_in * c_out, np.float32)
        gb = np.zeros(args.units * c_out, np.float32)
        t = median_seconds(lambda: _kernels.fanin_backward_params(
            gw, gb, dy, x, conn.indptr, conn.indices, c_in, c_out, args.batch, args.threads),
            args.repeats)
        cells.append(f"{c_in}->{c_out}: {t * 1e3:.2f} ms")
    print(f"{args.units} units, batch {args.batch}, {args.threads} thread(s), kernels "
          f"{_kernels.cpu_variant()}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
