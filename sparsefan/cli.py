"""The ``sparsefan`` command: train, eval, info, demo."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ARCHS = ("direct", "hierarchy", "partition_ensemble", "dense_mlp")


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_network(args, input_shape, n_classes):
    from sparsefan import builders

    common = dict(input_shape=input_shape, n_classes=n_classes, seed=args.seed)
    if args.arch == "direct":
        return builders.direct(n_units=args.units, fan_in=args.fan_in, wiring=args.wiring,
                               hidden=args.hidden or (32,), aggregate=args.aggregate or
                               "mean_logits", **common)
    if args.arch == "hierarchy":
        return builders.hierarchy(levels=args.levels, n_units=args.units, fan_in=args.fan_in,
                                  wiring=args.wiring, channels=args.hidden or None,
                                  aggregate=args.aggregate or "mean_logits", **common)
    if args.arch == "partition_ensemble":
        return builders.partition_ensemble(part_size=args.fan_in or 13,
                                           hidden=args.hidden or (32,),
                                           aggregate=args.aggregate or "vote", **common)
    return builders.dense_mlp(hidden=args.hidden or (256, 256), **common)


def _add_data_args(p):
    p.add_argument("--data", choices=("mnist", "embedded"), default="mnist",
                   help="dataset: full MNIST from --data-dir / $SPARSEFAN_MNIST / the cache, or "
                        "the embedded 10k/2k MNIST subset (default: mnist)")
    p.add_argument("--data-dir", default=None, help="directory holding the MNIST IDX files")
    p.add_argument("--download", action="store_true",
                   help="download MNIST into the cache if it is not found (checksummed)")
    p.add_argument("--threads", type=int, default=None,
                   help="kernel threads (default: OMP_NUM_THREADS or all usable CPUs)")


def _load(args):
    from sparsefan import datasets

    return datasets.load(args.data, args.data_dir, download=args.download)


def cmd_train(args):
    from sparsefan import io
    from sparsefan.train import TrainConfig, as_float_inputs, evaluate, train

    x_train, y_train, x_test, y_test = _load(args)
    net = build_network(args, x_train.shape[1:], int(y_train.max()) + 1)
    print(net.summary())
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                         lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                         aggregate_loss=args.aggregate_loss, unit_loss=args.unit_loss,
                         validation=args.validation, patience=args.patience, seed=args.seed,
                         n_threads=args.threads)
    result = train(net, x_train, y_train.astype(np.int64), config, checkpoint=args.checkpoint,
                   resume=args.resume, progress=not args.quiet)
    acc, loss = evaluate(net, as_float_inputs(x_test), y_test.astype(np.int64), args.threads)
    print(f"test accuracy {100 * acc:.2f}%  ({len(x_test)} examples, {args.data}); "
          f"training {result.seconds:.0f}s, {result.steps} steps")
    meta = {"dataset": args.data, "test_accuracy": acc, "train_seconds": result.seconds,
            "config": json.loads(config.to_json()), "history": result.history,
            "command": " ".join(sys.argv)}
    io.save_model(net, args.out, metadata=meta)
    print(f"saved {args.out}")
    return 0


def cmd_eval(args):
    from sparsefan import io
    from sparsefan.train import as_float_inputs, evaluate

    net = io.load_model(args.model)
    _, _, x_test, y_test = _load(args)
    t0 = time.perf_counter()
    acc, loss = evaluate(net, as_float_inputs(x_test), y_test.astype(np.int64), args.threads)
    dt = time.perf_counter() - t0
    print(f"{args.model}: test accuracy {100 * acc:.2f}%, loss {loss:.4f} on {len(x_test)} "
          f"examples ({args.data}); {dt:.2f}s")
    return 0


def cmd_info(args):
    from sparsefan import io

    net = io.load_model(args.model)
    print(net.summary())
    meta = net.metadata
    if meta:
        shown = {k: v for k, v in meta.items() if k != "history"}
        print("metadata:", json.dumps(shown, indent=1, sort_keys=True))
    return 0


def _median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cmd_demo(args):
    import sparsefan as sf
    from sparsefan import builders, datasets
    from sparsefan.train import TrainConfig, as_float_inputs, evaluate, train

    x_train, y_train, x_test, y_test = datasets.load_embedded()
    print(f"embedded MNIST subset: {len(x_train)} training, {len(x_test)} test images; "
          f"OpenMP {sf.openmp_enabled()}, {sf.resolve_n_threads(args.threads)} threads")
    net = builders.direct(input_shape=(28, 28), fan_in=28, hidden=(16,), wiring="gaussian",
                          seed=args.seed)
    print(net.summary())
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-2, seed=args.seed,
                         n_threads=args.threads)
    result = train(net, x_train, y_train.astype(np.int64), config, progress=not args.quiet)
    xt = as_float_inputs(x_test)
    acc, _ = evaluate(net, xt, y_test.astype(np.int64), args.threads)
    print(f"test accuracy {100 * acc:.2f}% on {len(x_test)} held-out images "
          f"(trained {result.seconds:.1f}s)")
    one = xt[:1]
    t1 = _median_seconds(lambda: net.predict(one, args.threads), 51)
    tb = _median_seconds(lambda: net.predict(xt, args.threads), 5)
    print(f"inference: single example {t1 * 1e3:.2f} ms (median of 51); batch of {len(xt)}: "
          f"{tb * 1e3:.0f} ms = {len(xt) / tb:,.0f} examples/s")
    if args.out:
        from sparsefan import io

        io.save_model(net, args.out, metadata={"dataset": "embedded", "test_accuracy": acc})
        print(f"saved {args.out}")
    return 0


def cmd_robustness(args):
    from sparsefan import io, report
    from sparsefan.train import as_float_inputs

    _, _, x_test, y_test = _load(args)
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(x_test), min(args.n, len(x_test)), replace=False))
    x = as_float_inputs(x_test[pick])
    y = y_test[pick].astype(np.int64)
    results = []
    for path in args.models:
        net = io.load_model(path)
        print(f"{path}: {net.name}")
        r = report.evaluate_model(net, x, y, ddn_steps=args.ddn_steps,
                                  rs_queries=args.rs_queries, n_threads=args.threads)
        r["label"] = os.path.splitext(os.path.basename(path))[0]
        results.append(r)
    text = report.write_report(results, args.out, "sparsefan " + " ".join(sys.argv[1:]))
    print(text)
    return 0 if all(r["violations"] == 0 for r in results) else 1


def make_parser():
    parser = argparse.ArgumentParser(
        prog="sparsefan", description="Fixed fan-in sparse neural networks on CPUs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network and save it",
                       description="Build a network, train it, report test accuracy, save it.")
    _add_data_args(p)
    p.add_argument("--arch", choices=ARCHS, default="direct")
    p.add_argument("--levels", type=int, default=2, help="hierarchy levels (default 2)")
    p.add_argument("--units", type=int, default=None, help="output units (default 2N)")
    p.add_argument("--fan-in", type=int, default=None,
                   help="inputs per unit (default N^(2/3) direct, N^(1/L) hierarchy, "
                        "13 partition_ensemble)")
    p.add_argument("--wiring", choices=("gaussian", "partitions", "random"), default="gaussian")
    p.add_argument("--hidden", type=_ints, default=None,
                   help="comma-separated widths: per-unit MLP (direct, partition_ensemble), "
                        "channels per level (hierarchy), hidden layers (dense_mlp)")
    p.add_argument("--aggregate", choices=("mean_logits", "mean_prob", "vote"), default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--schedule", choices=("cosine", "constant", "step"), default="cosine")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--aggregate-loss", type=float, default=None)
    p.add_argument("--unit-loss", type=float, default=None)
    p.add_argument("--validation", type=float, default=0.0,
                   help="fraction of the training set held out for validation")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience (epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="checkpoint file, written every epoch")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint if present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a model file")
    p.add_argument("model")
    _add_data_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="summary of a model file")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("robustness", help="attacks and certificates for model files",
                       description="Run every attack and certificate on each model and write "
                                   "a Markdown report with PNG plots.")
    p.add_argument("models", nargs="+", help="model files")
    _add_data_args(p)
    p.add_argument("--n", type=int, default=500, help="test images (seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddn-steps", type=int, default=100)
    p.add_argument("--rs-queries", type=int, default=100)
    p.add_argument("--out", required=True, help="output directory for report.md and plots")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("demo", help="train a fan-in network on the embedded MNIST subset",
                       description="Train a 2N-unit fan-in network on the embedded MNIST subset "
                                   "(no download), report accuracy, its summary and speed.")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=None, help="also save the model here")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    from sparsefan.datasets import DatasetError
    from sparsefan.io import ModelFileError

    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, ModelFileError, FileNotFoundError) as e:
        print(f"sparsefan {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
