"""Certified L2 training on full MNIST: train named designs, certify the 10,000 test images.

    python experiments/certified.py --data-dir DIR --only direct49 [--threads 2]
    python experiments/certified.py --table docs/robustness/certified.md   # the results table

Each design is a builder call and a TrainConfig; the trained model goes to
experiments/models/cert_<name>.npz (its metadata holds the settings, training time and test
figures) and one JSON line per run is appended to experiments/certified.jsonl. The certificate
is sparsefan.certify.l2_radius (exact spectral norms, the wiring-weighted bound), computed on
all 10,000 test images; clean accuracy is on the same images.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from sparsefan import builders, certify, datasets, io
from sparsefan.train import TrainConfig, as_float_inputs, train

CERT = dict(l2_epsilon=1.58, epsilon_ramp=0.5, lr=3e-3, batch_size=128)
DESIGNS = {
    # the probe of DESIGN §4 inside the library: 1,568 gaussian units, fan-in 49, MLP 49->16->10
    "direct49": (builders.direct, dict(n_units=1568, fan_in=49, hidden=(16,)),
                 dict(CERT, epochs=6)),
    "direct49_h32": (builders.direct, dict(n_units=1568, fan_in=49, hidden=(32,)),
                     dict(CERT, epochs=6)),
    "direct85": (builders.direct, dict(n_units=1568, fan_in=85, hidden=(16,)),
                 dict(CERT, epochs=6)),
    "direct28": (builders.direct, dict(n_units=1568, fan_in=28, hidden=(16,)),
                 dict(CERT, epochs=6)),
    "hierarchy2": (builders.hierarchy, dict(levels=2, channels=(8, 16)), dict(CERT, epochs=6)),
    "hierarchy3": (builders.hierarchy, dict(levels=3, channels=(8, 16, 16)),
                   dict(CERT, epochs=6)),
    "dense_mlp": (builders.dense_mlp, dict(hidden=(256, 256)), dict(CERT, epochs=6)),
    # MaxMin activations (1-Lipschitz, gradient-norm preserving)
    "dense_mlp_maxmin": (builders.dense_mlp, dict(hidden=(256, 256), activation="maxmin"),
                         dict(CERT, epochs=6)),
    "direct49_maxmin": (builders.direct, dict(n_units=1568, fan_in=49, hidden=(16,),
                                              activation="maxmin"), dict(CERT, epochs=6)),
    "dense_mlp512_maxmin": (builders.dense_mlp, dict(hidden=(512, 512), activation="maxmin"),
                            dict(CERT, epochs=30)),
    "dense_mlp3_maxmin": (builders.dense_mlp, dict(hidden=(256, 256, 256), activation="maxmin"),
                          dict(CERT, epochs=30)),
    "direct196_maxmin": (builders.direct, dict(n_units=784, fan_in=196, hidden=(16,),
                                               activation="maxmin"), dict(CERT, epochs=6)),
    "hierarchy2_maxmin": (builders.hierarchy, dict(levels=2, channels=(8, 16),
                                                   activation="maxmin"), dict(CERT, epochs=6)),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--only", help="comma-separated subset of " + ",".join(DESIGNS))
    p.add_argument("--table", default=None,
                   help="write the Markdown table of the results file to this path and stop")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="override the design's epochs")
    p.add_argument("--eps", type=float, default=None, help="override the training radius")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None,
                   help="override the logit temperature (TrainConfig.logit_temperature)")
    p.add_argument("--tag", default="", help="suffix for the model file and the results line")
    p.add_argument("--models", default="experiments/models")
    p.add_argument("--results", default="experiments/certified.jsonl")
    args = p.parse_args()
    if args.table:
        return write_table(args.results, args.table)
    if not (args.data_dir and args.only):
        p.error("--data-dir and --only are required to train")
    os.makedirs(args.models, exist_ok=True)
    x, y, xt, yt = datasets.load_mnist(args.data_dir)
    x, xt = as_float_inputs(x), as_float_inputs(xt)
    for name in args.only.split(","):
        build, arch, cfg = DESIGNS[name]
        cfg = dict(cfg, n_threads=args.threads)
        for key in ("epochs", "lr"):
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
        if args.eps is not None:
            cfg["l2_epsilon"] = args.eps
        if args.temperature is not None:
            cfg["logit_temperature"] = args.temperature
        config = TrainConfig(**cfg)
        net = build((28, 28), 10, seed=0, **arch)
        t0 = time.perf_counter()
        result = train(net, x, y, config, progress=False,
                       log=lambda s, n=name: print(f"[{n}] {s}", flush=True))
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        radius = certify.l2_radius(net, xt, yt, n_threads=args.threads)
        cert_seconds = time.perf_counter() - t1
        row = {
            "design": name + args.tag, "network": net.name, "arch": {k: list(v) if isinstance(
                v, tuple) else v for k, v in arch.items()},
            "config": json.loads(config.to_json()), "train_seconds": seconds,
            "certify_seconds": cert_seconds, "n_test": int(len(yt)),
            "clean": float((radius >= 0).mean()),
            "certified": {str(e): float((radius >= e).mean())
                          for e in (0.5, 1.0, 1.58, 2.0, 2.5, 3.0)},
            "median_radius": float(np.median(radius)),
            "history": result.history,
        }
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
        io.save_model(net, os.path.join(args.models, f"cert_{name}{args.tag}.npz"),
                      metadata={k: v for k, v in row.items() if k != "history"})
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


def write_table(results, out):
    """One row per run of the results file (the last run of each design name wins)."""
    rows = {}
    with open(results) as f:
        for line in f:
            r = json.loads(line)
            rows[r["design"]] = r
    lines = ["| design | network | epochs | eps train | temperature | clean | certified L2 "
             "@0.5 / 1.0 / 1.58 / 2.0 | median radius | train time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        c, cfg = r["certified"], r["config"]
        lines.append(
            f"| {name} | {r['network']} | {cfg['epochs']} | {cfg['l2_epsilon']:g} | "
            f"{cfg.get('logit_temperature', 0) or '-'} | {100 * r['clean']:.1f}% | "
            f"{100 * c['0.5']:.1f} / {100 * c['1.0']:.1f} / **{100 * c['1.58']:.1f}** / "
            f"{100 * c['2.0']:.1f}% | {r['median_radius']:.2f} | "
            f"{r['train_seconds'] / 60:.1f} min |")
    text = "\n".join(lines) + "\n"
    with open(out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
