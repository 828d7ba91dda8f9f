"""Does training on zoom and mosaic augmentations teach confidence falloff? (docs/falloff.md)

    python experiments/falloff.py --data-dir ../shared/data/mnist            # train + measure
    python experiments/falloff.py --data-dir ../shared/data/mnist --only dense_mlp
    python experiments/falloff.py --data-dir ../shared/data/mnist --write    # doc from results

For a dense MLP and the best fan-in network of docs/mnist-results.md (hierarchy3), each trained
on full MNIST with and without ``augment=("zoom", "mosaic")`` (half of every batch), it
measures on the 10,000 test images:

- the falloff curve: mean confidence in the true class against the scale s of a centred zoom,
  s from 0.1 to 3, beside the target curve the augmentation trains toward;
- n x n mosaics of random test digits (n = 2..6): mean top confidence, against that of a single
  digit zoomed out to the same scale 1/n;
- a full-size digit over a mosaic background: accuracy and confidence in the foreground;
- clean test accuracy;
- the report's robustness figures on the first ``--robust-n`` test images (median minimal L2 and
  L0 perturbation over every attack, median certified radii).

Model files go to experiments/models/falloff_*.npz (skipped when present: delete one to retrain),
results to experiments/falloff.json, the page and its plots to docs/falloff.md, docs/falloff/.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from sparsefan import augment as A
from sparsefan import builders, datasets, io, report
from sparsefan.train import TrainConfig, train

DESIGNS = {  # the docs/mnist-results.md settings of each network
    "dense_mlp": (lambda: builders.dense_mlp(hidden=(256, 256), seed=0),
                  dict(epochs=20, lr=1e-3)),
    "hierarchy3": (lambda: builders.hierarchy(levels=3, wiring="gaussian", channels=(8, 16, 16),
                                              seed=0),
                   dict(epochs=6, lr=1e-2)),
}
AUGMENT = ("zoom", "mosaic")
SCALES = np.round(np.concatenate([np.linspace(0.1, 1.0, 19), np.linspace(1.1, 3.0, 20)]), 3)
GRIDS = (2, 3, 4, 5, 6)


def model_path(args, name, augmented):
    return os.path.join(args.models, f"falloff_{name}{'_aug' if augmented else ''}.npz")


def train_one(args, name, augmented, data):
    path = model_path(args, name, augmented)
    if os.path.exists(path):
        return io.load_model(path)
    make, opts = DESIGNS[name]
    net = make()
    if args.quick:
        opts = {**opts, "epochs": 1}
    config = TrainConfig(**opts, augment=AUGMENT if augmented else (),
                         augment_fraction=args.fraction, seed=0)
    x, y, xt, yt = data
    tag = f"{name}{' +aug' if augmented else ''}"
    t0 = time.time()
    train(net, x, y.astype(np.int64), config, progress=False,
          log=lambda s: print(f"[{tag}] {s}", flush=True))
    seconds = time.time() - t0
    acc = float((net.predict(xt.reshape(len(xt), -1).astype(np.float32) / 255) == yt).mean())
    io.save_model(net, path, {"config": json.loads(config.to_json()), "test_accuracy": acc,
                              "train_seconds": seconds})
    net = io.load_model(path)
    print(f"[{tag}] test accuracy {100 * acc:.2f}% in {seconds / 60:.1f} min", flush=True)
    return net


def confidence(net, images, y):
    """Mean probability of the true class and mean top probability."""
    p = net.predict_proba(images.reshape(len(images), -1))
    return float(p[np.arange(len(y)), y].mean()), float(p.max(axis=1).mean())


def measure(net, xt, yt, args):
    x = xt.astype(np.float32) / 255
    y = yt.astype(np.int64)
    out = {"test_accuracy": float((net.predict(x.reshape(len(x), -1)) == y).mean())}
    curve = []
    for s in SCALES:  # a centred zoom: out for s < 1, in for s > 1
        img = A.resample(x, s)
        true, top = confidence(net, img, y)
        acc = float((net.predict(img.reshape(len(img), -1)) == y).mean())
        curve.append({"scale": float(s), "true": true, "top": top, "accuracy": acc})
    out["falloff"] = curve
    rng = np.random.default_rng(0)
    mosaics = []
    for n in GRIDS:
        m, _ = A.mosaic(x, y, grid=n, rng=rng)
        tile = A.resample(x, 1.0 / n)
        tile_true, tile_top = confidence(net, tile, y)
        _, m_top = confidence(net, m, y)
        bg, _ = A.composite(x, y, grid=n, rng=rng)
        c_true, c_top = confidence(net, bg, y)
        mosaics.append({"n": n, "mosaic_top": m_top, "tile_top": tile_top,
                        "tile_true": tile_true, "composite_true": c_true,
                        "composite_accuracy": float((net.predict(bg.reshape(len(bg), -1))
                                                     == y).mean())})
    out["mosaic"] = mosaics
    k = args.robust_n
    r = report.evaluate_model(net, x[:k].reshape(k, -1), y[:k], log=lambda s: None)
    out["robustness"] = {key: r.get(key) for key in (
        "clean_accuracy", "median_l0", "median_l2", "median_certified_l0",
        "median_certified_l2", "violations")}
    out["robustness"]["n"] = k
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(DESIGNS))
    p.add_argument("--models", default="experiments/models")
    p.add_argument("--results", default="experiments/falloff.json")
    p.add_argument("--doc", default="docs/falloff.md")
    p.add_argument("--fraction", type=float, default=0.5, help="augmented share of a batch")
    p.add_argument("--robust-n", type=int, default=500)
    p.add_argument("--write", action="store_true", help="only write the page from the results")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: the embedded subset, one epoch each (for the tests)")
    args = p.parse_args(argv)
    results = {}
    if os.path.exists(args.results):
        with open(args.results) as f:
            results = json.load(f)
    if not args.write:
        data = datasets.load_embedded() if args.quick else datasets.load_mnist(args.data_dir)
        os.makedirs(args.models, exist_ok=True)
        for name in (args.only.split(",") if args.only else DESIGNS):
            for augmented in (False, True):
                key = f"{name}{'_aug' if augmented else ''}"
                net = train_one(args, name, augmented, data)
                t0 = time.time()
                results[key] = {**measure(net, data[2], data[3], args),
                                "train_seconds": net.metadata.get("train_seconds")}
                print(f"[{key}] measured in {time.time() - t0:.0f}s", flush=True)
                with open(args.results, "w") as f:
                    json.dump(results, f, indent=1)
    write_doc(results, args)


def write_doc(results, args):
    import matplotlib.figure

    plots = os.path.join(os.path.dirname(args.doc), "falloff")
    os.makedirs(plots, exist_ok=True)
    names = [n for n in DESIGNS if n in results]
    fig = matplotlib.figure.Figure(figsize=(6.4 * len(names), 4.2))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        f = A.DEFAULT_FALLOFF(SCALES)
        ax.plot(SCALES, f + (1 - f) / 10, "k:", label="training target")
        for key, style in ((name, "-"), (f"{name}_aug", "--")):
            if key in results:
                c = results[key]["falloff"]
                ax.plot([r["scale"] for r in c], [r["true"] for r in c], style,
                        label=("augmented" if key.endswith("_aug") else "plain"))
        ax.set_xlabel("scale s of the digit (1 = as trained)")
        ax.set_ylabel("mean confidence in the true class")
        ax.set_title(name)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(plots, "falloff.png"), dpi=90)

    fig = matplotlib.figure.Figure(figsize=(6.4 * len(names), 4.2))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for key, style in ((name, "-"), (f"{name}_aug", "--")):
            if key in results:
                m = results[key]["mosaic"]
                tag = "augmented" if key.endswith("_aug") else "plain"
                ax.plot(GRIDS, [r["mosaic_top"] for r in m], style + "o", label=f"{tag}: mosaic")
                ax.plot(GRIDS, [r["tile_top"] for r in m], style + "s",
                        label=f"{tag}: one digit at 1/n")
        ax.set_xlabel("n (an n x n mosaic; a single digit at scale 1/n)")
        ax.set_ylabel("mean top confidence")
        ax.set_title(name)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(plots, "mosaic.png"), dpi=90)

    lines = [
        "# Confidence falloff: zoom and mosaic augmentation",
        "",
        "The essay asks a training set to teach how confidence should fall off: a digit "
        "shrinking into the distance or zoomed into until only a stroke is left should lose "
        "confidence smoothly, a mosaic of tiny digits should be only as confident as one tiny "
        "digit, and a full-size digit over tiny ones should keep its confidence. "
        "`sparsefan.augment` makes such images with soft labels (the falloff curve, area "
        "resampling for every scale: see its docstring); training replaces a share of every "
        "batch with them (`TrainConfig(augment=(\"zoom\", \"mosaic\"))`, "
        "`sparsefan train --augment zoom,mosaic`).",
        "",
        "Produced by (full MNIST, the 10,000 test images; robustness on the first "
        f"{args.robust_n}):",
        "",
        "    python experiments/falloff.py --data-dir ../shared/data/mnist"
        + (f" --fraction {args.fraction}" if args.fraction != 0.5 else ""),
        "",
        "Each network is trained as in docs/mnist-results.md, once plainly and once with half "
        "of every batch augmented (same epochs, same seed).",
        "",
        "## Clean accuracy and robustness",
        "",
        "| model | test acc | train time | median min L2 | median min L0 | median cert L2 "
        "| median cert L0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for key in (name, f"{name}_aug"):
            if key not in results:
                continue
            r = results[key]
            rb = r["robustness"]
            cert2 = rb.get("median_certified_l2")
            lines.append(
                f"| {key.replace('_aug', ' + augment')} | {100 * r['test_accuracy']:.2f}% | "
                f"{(r.get('train_seconds') or 0) / 60:.1f} min | {rb['median_l2']:.2f} | "
                f"{rb['median_l0']:.0f} px | "
                f"{'-' if cert2 is None else f'{cert2:.3f}'} | "
                f"{rb['median_certified_l0']:.0f} px |")
    lines += ["", "## The falloff curve", "", "![falloff](falloff/falloff.png)", "",
              "Mean confidence in the true class, a centred zoom of every test image:", "",
              "| s | " + " | ".join(k.replace("_aug", " + aug") for n in names
                                     for k in (n, f"{n}_aug") if k in results) + " | target |",
              "|---|" + "---|" * (sum(k in results for n in names for k in (n, f"{n}_aug"))
                                  + 1)]
    keys = [k for n in names for k in (n, f"{n}_aug") if k in results]
    for i, s in enumerate(SCALES):
        if s not in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0):
            continue
        w = float(A.DEFAULT_FALLOFF(s))
        lines.append(f"| {s:g} | " + " | ".join(f"{results[k]['falloff'][i]['true']:.3f}"
                                                 for k in keys) + f" | {w + (1 - w) / 10:.3f} |")
    lines += ["", "## Mosaics", "", "![mosaics](falloff/mosaic.png)", "",
              "Mean top confidence of an n x n mosaic of random test digits against one digit "
              "zoomed out to 1/n; and a full-size digit over an n x n background: confidence "
              "in the foreground (accuracy in brackets).", "",
              "| model | n | mosaic top | one digit at 1/n | digit over mosaic |", "|---|---|---|---|---|"]
    for k in keys:
        for m in results[k]["mosaic"]:
            lines.append(f"| {k.replace('_aug', ' + aug')} | {m['n']} | {m['mosaic_top']:.3f} | "
                         f"{m['tile_top']:.3f} | {m['composite_true']:.3f} "
                         f"({100 * m['composite_accuracy']:.1f}%) |")
    lines += ["", "## What was found", "", "FINDINGS", ""]
    old = open(args.doc).read() if os.path.exists(args.doc) else ""
    found = old.split("## What was found\n\n", 1)[1] if "## What was found\n\n" in old else ""
    text = "\n".join(lines).replace("FINDINGS\n", found.strip() + "\n" if found else
                                    "(to be written from the tables above)\n")
    with open(args.doc, "w") as f:
        f.write(text)
    print(f"wrote {args.doc} and {plots}/", file=sys.stderr)


if __name__ == "__main__":
    main()
