"""Certified training on full MNIST: train named designs, certify the 10,000 test images.

    python experiments/certified.py --data-dir DIR --only direct49 [--threads 2]
    python experiments/certified.py --table docs/robustness/certified.md   # the results table

Each design is a builder call and a TrainConfig; the trained model goes to
experiments/models/cert_<name>.npz (its metadata holds the settings, training time and test
figures) and one JSON line per run is appended to experiments/certified.jsonl. The certificate
is sparsefan.certify.l2_radius (exact spectral norms, the wiring-weighted bound) and
sparsefan.certify.l0_radius (the per-pixel influence and chain bounds, each pixel free in
[0, 1]), computed on all 10,000 test images; clean accuracy is on the same images. Designs with
l0_radius train for the L0 certificate (sparsefan.certify.L0Bound) instead of the L2 one.

    python experiments/certified.py --l0-table docs/robustness/certified_l0_table.md
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
L0 = dict(l0_radius=12, epsilon_ramp=0.5, lr=3e-3, batch_size=128, epochs=6)
L0_RADII = (1, 2, 4, 6, 8, 10, 12, 16, 20)
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
    # certified L0 training at 12 pixels
    "direct49_l0": (builders.direct, dict(n_units=1568, fan_in=49, hidden=(16,)), L0),
    "direct49_maxmin_l0": (builders.direct, dict(n_units=1568, fan_in=49, hidden=(16,),
                                                 activation="maxmin"), L0),
    "direct49_h32_l0": (builders.direct, dict(n_units=1568, fan_in=49, hidden=(32,)), L0),
    "direct28_l0": (builders.direct, dict(n_units=1568, fan_in=28, hidden=(16,)), L0),
    "direct85_l0": (builders.direct, dict(n_units=1568, fan_in=85, hidden=(16,)), L0),
    "direct49_l0r6": (builders.direct, dict(n_units=1568, fan_in=49, hidden=(16,)),
                      dict(L0, l0_radius=6)),
    "dense_mlp_maxmin_l0": (builders.dense_mlp, dict(hidden=(256, 256), activation="maxmin"),
                            L0),
    "dense_mlp_maxmin_l0r4": (builders.dense_mlp, dict(hidden=(256, 256), activation="maxmin"),
                              dict(L0, l0_radius=4)),
    "hierarchy2_l0": (builders.hierarchy, dict(levels=2, channels=(8, 16)), dict(L0, epochs=3)),
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
    p.add_argument("--l0", type=int, default=None, help="override the L0 training radius")
    p.add_argument("--l0-table", default=None,
                   help="write the Markdown table of the L0 results to this path and stop")
    p.add_argument("--recertify", default=None,
                   help="comma-separated designs whose saved models get the L0 figures added "
                        "(a new results line each; no training)")
    p.add_argument("--tag", default="", help="suffix for the model file and the results line")
    p.add_argument("--models", default="experiments/models")
    p.add_argument("--results", default="experiments/certified.jsonl")
    args = p.parse_args()
    if args.table:
        return write_table(args.results, args.table)
    if args.l0_table:
        return write_l0_table(args.results, args.l0_table)
    if args.recertify and args.data_dir:
        return recertify(args)
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
        if args.l0 is not None:
            cfg["l0_radius"] = args.l0
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
        t1 = time.perf_counter()
        r0 = certify.l0_radius(net, xt, yt, max_radius=max(L0_RADII), n_threads=args.threads)
        l0_seconds = time.perf_counter() - t1
        row = {
            "design": name + args.tag, "network": net.name, "arch": {k: list(v) if isinstance(
                v, tuple) else v for k, v in arch.items()},
            "config": json.loads(config.to_json()), "train_seconds": seconds,
            "certify_seconds": cert_seconds, "n_test": int(len(yt)),
            "clean": float((radius >= 0).mean()),
            "certified": {str(e): float((radius >= e).mean())
                          for e in (0.5, 1.0, 1.58, 2.0, 2.5, 3.0)},
            "median_radius": float(np.median(radius)),
            "certified_l0": {str(r): float((r0 >= r).mean()) for r in L0_RADII},
            "median_l0": float(np.median(r0)), "certify_l0_seconds": l0_seconds,
            "history": result.history,
        }
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
        io.save_model(net, os.path.join(args.models, f"cert_{name}{args.tag}.npz"),
                      metadata={k: v for k, v in row.items() if k != "history"})
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


def recertify(args):
    """Add the L0 figures to earlier runs from their saved models (same test images)."""
    _, _, xt, yt = datasets.load_mnist(args.data_dir)
    xt = as_float_inputs(xt)
    rows = _last_runs(args.results)
    for name in args.recertify.split(","):
        row = dict(rows[name])
        net = io.load_model(os.path.join(args.models, f"cert_{name}.npz"))
        t1 = time.perf_counter()
        r0 = certify.l0_radius(net, xt, yt, max_radius=max(L0_RADII), n_threads=args.threads)
        row.update(certified_l0={str(r): float((r0 >= r).mean()) for r in L0_RADII},
                   median_l0=float(np.median(r0)), certify_l0_seconds=time.perf_counter() - t1)
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


def _last_runs(results):
    """The last run of each design name in the results file."""
    rows = {}
    with open(results) as f:
        for line in f:
            r = json.loads(line)
            rows[r["design"]] = r
    return rows


def write_l0_table(results, out):
    """The L0 figures of every run that has them (certified L0 accuracy, median radius)."""
    lines = ["| design | network | trained for | epochs | clean | certified L0 @4 / 8 / 10 / "
             "12 / 16 px | median L0 | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in _last_runs(results).items():
        if "certified_l0" not in r:
            continue
        c, cfg = r["certified_l0"], r["config"]
        goal = (f"L0 {cfg['l0_radius']} px" if cfg.get("l0_radius") else
                f"L2 {cfg['l2_epsilon']:g}" if cfg.get("l2_epsilon") else "accuracy")
        lines.append(
            f"| {name} | {r['network']} | {goal} | {cfg['epochs']} | {100 * r['clean']:.1f}% | "
            + " / ".join(f"{100 * c[k]:.1f}" for k in ("4", "8", "10", "12", "16"))
            + f"% | **{r['median_l0']:g}** | {r['train_seconds'] / 60:.1f} min |")
    text = "\n".join(lines) + "\n"
    with open(out, "w") as f:
        f.write(text)
    print(text)
    return 0


def write_table(results, out):
    """One row per run of the results file (the last run of each design name wins)."""
    rows = _last_runs(results)
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
