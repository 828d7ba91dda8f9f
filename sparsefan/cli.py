"""The ``sparsefan`` command: train, eval, info, demo, export."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from sparsefan import aggregate as agg
from sparsefan import builders
from sparsefan import train as trainer
from sparsefan.layers import ACTIVATIONS



def _ints(text):
    """Comma-separated positive ints ("16" or "8,16"): an argparse type."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return values


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


def _threads(text):
    """A thread count: a nonzero int (negative counts back from the CPU count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}")
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not a thread count (use a positive or negative "
                                         "int)")
    return value


_POSITIVE, _NONNEGATIVE = _int_at_least(1), _int_at_least(0)


def build_network(args, input_shape, n_classes):
    return builders.build(args.arch, input_shape, n_classes, fan_in=args.fan_in,
                          n_units=args.units, levels=args.levels, hidden=args.hidden,
                          head_hidden=args.head_hidden, wiring=args.wiring,
                          aggregate=args.aggregate, activation=args.activation, seed=args.seed)


def _add_data_args(p):
    p.add_argument("--data", choices=("mnist", "embedded"), default="mnist",
                   help="dataset: full MNIST from --data-dir / $SPARSEFAN_MNIST / the cache, or "
                        "the embedded 10k/2k MNIST subset (default: mnist)")
    p.add_argument("--data-dir", default=None, help="directory holding the MNIST IDX files")
    p.add_argument("--download", action="store_true",
                   help="download MNIST into the cache if it is not found (checksummed)")
    p.add_argument("--threads", type=_threads, default=None,
                   help="kernel threads (default: OMP_NUM_THREADS or all usable CPUs)")


def _load(args):
    from sparsefan import datasets

    return datasets.load(args.data, args.data_dir, download=args.download)


def cmd_train(args):
    from sparsefan import io
    from sparsefan.train import TrainConfig, as_float_inputs, evaluate, train

    io.check_output_path(args.out, "--out")  # before minutes of training
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                         lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
                         aggregate_loss=args.aggregate_loss, unit_loss=args.unit_loss,
                         validation=args.validation, patience=args.patience, seed=args.seed,
                         n_threads=args.threads, l2_epsilon=args.l2_epsilon,
                         epsilon_ramp=args.epsilon_ramp, power_iterations=args.power_iterations,
                         l0_radius=args.l0_radius)
    x_train, y_train, x_test, y_test = _load(args)
    net = build_network(args, x_train.shape[1:], int(y_train.max()) + 1)
    print(net.summary())
    result = train(net, x_train, y_train.astype(np.int64), config, checkpoint=args.checkpoint,
                   resume=args.resume, progress=not args.quiet, log=print)
    xt, yt = as_float_inputs(x_test), y_test.astype(np.int64)
    acc, loss = evaluate(net, xt, yt, args.threads)
    print(f"test accuracy {100 * acc:.2f}%  ({len(x_test)} examples, {args.data}); "
          f"training {result.seconds:.0f}s, {result.steps} steps")
    meta = {"dataset": args.data, "test_accuracy": acc, "train_seconds": result.seconds,
            "config": json.loads(config.to_json()), "history": result.history,
            "command": " ".join(sys.argv)}
    if net.aggregate == "mean_logits" and (config.l2_epsilon or config.l0_radius):
        from sparsefan import certify

        # the certificate the network was trained for, on the test set
        if config.l2_epsilon:
            key, target, fn = "test_certified_l2", config.l2_epsilon, certify.l2_radius
            what, field = f"L2 accuracy at eps {target:g}", "epsilon"
        else:
            key, target, fn = "test_certified_l0", config.l0_radius, certify.l0_radius
            what, field = f"L0 accuracy at {target} pixels", "radius"
        radius = fn(net, xt, yt, n_threads=args.threads)
        cert = float((radius >= target).mean())
        meta[key] = {field: target, "accuracy": cert, "median_radius": float(np.median(radius))}
        print(f"certified {what}: {100 * cert:.2f}% (median radius {np.median(radius):.4g}; "
              f"sparsefan.certify.{fn.__name__})")
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


def cmd_demo(args):
    import sparsefan as sf
    from sparsefan import datasets
    from sparsefan._timing import median_seconds
    from sparsefan.train import TrainConfig, as_float_inputs, evaluate, train

    x_train, y_train, x_test, y_test = datasets.load_embedded()
    print(f"embedded MNIST subset: {len(x_train)} training, {len(x_test)} test images; "
          f"OpenMP {sf.openmp_enabled()}, {sf.resolve_n_threads(args.threads)} threads")
    net = builders.direct(input_shape=(28, 28), fan_in=28, hidden=(16,), wiring="gaussian",
                          seed=args.seed)
    print(net.summary())
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=3e-2, seed=args.seed,
                         n_threads=args.threads)
    result = train(net, x_train, y_train.astype(np.int64), config, progress=not args.quiet,
                   log=print)
    xt = as_float_inputs(x_test)
    acc, _ = evaluate(net, xt, y_test.astype(np.int64), args.threads)
    print(f"test accuracy {100 * acc:.2f}% on {len(x_test)} held-out images "
          f"(trained {result.seconds:.1f}s)")
    one = xt[:1]
    t1 = median_seconds(lambda: net.predict(one, args.threads), 51)
    tb = median_seconds(lambda: net.predict(xt, args.threads), 5)
    print(f"inference: single example {t1 * 1e3:.2f} ms (median of 51); batch of {len(xt)}: "
          f"{tb * 1e3:.0f} ms = {len(xt) / tb:,.0f} examples/s")
    cert = net.predict_certified(xt, args.threads)
    tc = median_seconds(lambda: net.predict_certified(one, args.threads), 51)
    print(f"with a certificate (predict_certified): single example {tc * 1e3:.2f} ms; median "
          f"certified radius L2 {np.median(cert.l2_radius):.3f}, L0 "
          f"{np.median(cert.l0_radius):g} pixels (trained for accuracy; `sparsefan train "
          f"--l2-epsilon 1.58` trains for the certificate)")
    if args.out:
        from sparsefan import io

        io.save_model(net, args.out, metadata={"dataset": "embedded", "test_accuracy": acc})
        print(f"saved {args.out}")
    return 0


def cmd_robustness(args):
    from sparsefan import io, report
    from sparsefan.train import as_float_inputs

    if not args.models and not args.include:
        raise ValueError("give model files, or earlier results with --include")
    results = []
    if args.models:
        _, _, x_test, y_test = _load(args)
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(len(x_test), min(args.n, len(x_test)), replace=False))
        x = as_float_inputs(x_test[pick])
        y = y_test[pick].astype(np.int64)
    for path in args.models:
        net = io.load_model(path)
        print(f"{path}: {net.name}")
        r = report.evaluate_model(net, x, y, ddn_steps=args.ddn_steps,
                                  rs_queries=args.rs_queries, n_threads=args.threads)
        r["label"] = os.path.splitext(os.path.basename(path))[0]
        results.append(r)
    new = list(results)
    for path in args.include or ():
        results.extend(report.load_results(path))
    text = report.write_report(results, args.out, "sparsefan " + " ".join(sys.argv[1:]))
    print(text)
    return 0 if all(r["violations"] == 0 for r in new) else 1


def _calibration_inputs(spec, network, data_dir=None):
    """--calibration: a .npy file of inputs (float, or uint8 images scaled to [0, 1]), or
    'embedded[:N]' / 'mnist[:N]' for the first N training images (default 1000)."""
    from sparsefan import datasets
    from sparsefan.train import as_float_inputs

    source, _, count = spec.partition(":")
    if source in ("embedded", "mnist"):
        try:
            n = int(count) if count else 1000
        except ValueError:
            raise ValueError(f"--calibration {spec!r}: the count after ':' must be an int") \
                from None
        if n < 1:
            raise ValueError(f"--calibration {spec!r}: the count must be >= 1")
        x = (datasets.load_embedded() if source == "embedded"
             else datasets.load("mnist", data_dir))[0][:n]
    else:
        if not spec.endswith(".npy"):
            raise ValueError(f"--calibration must be a .npy file or embedded[:N] / mnist[:N], "
                             f"got {spec!r}")
        x = np.load(spec, allow_pickle=False)
    if len(x) and x[0].size != network.n_in:
        raise ValueError(f"calibration inputs hold {x[0].size} values each; the model reads "
                         f"{network.n_in}")
    return as_float_inputs(x)


def _default_c_name(model_path):
    import os
    import re

    stem = os.path.splitext(os.path.basename(model_path))[0]
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "model"
    return "m_" + name if name[0].isdigit() else name


def _print_footprint(label, fp, arm):
    print(f"{label}: flash (const tables) {fp.const_bytes:,} bytes, RAM (scratch) "
          f"{fp.scratch_bytes:,} bytes")
    if arm is not None:
        t = arm["total"]
        print(f"  Cortex-M4 (arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os): .text {t['.text']:,}"
              f"  .rodata {t['.rodata']:,}  .data {t['.data']:,}  .bss {t['.bss']:,} bytes")


def cmd_export(args):
    import os

    from sparsefan import export, io

    if args.quantize and args.format != "c":
        raise ValueError("--quantize int8 applies to the C export only")
    if args.quantize and not args.calibration:
        raise ValueError("--quantize int8 needs --calibration (a .npy of inputs, or "
                         "embedded[:N] / mnist[:N])")
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"model file {args.model!r} not found")
    net = io.load_model(args.model)
    name = export.check_name(args.name or _default_c_name(args.model))
    if args.format == "onnx":
        os.makedirs(args.out_dir, exist_ok=True)
        path = export.export_onnx(net, os.path.join(args.out_dir, f"{name}.onnx"))
        print(f"wrote {path} (opset 17, dynamic batch; outputs scores, logits, label)")
        return 0
    model = net
    if args.quantize:
        calib = _calibration_inputs(args.calibration, net, args.data_dir)
        model = export.quantize_int8(net, calib, percentile=args.percentile)
        print(f"int8: calibrated on {len(calib)} inputs (percentile {args.percentile:g})")
    written = export.export_c(model, args.out_dir, name, certificates=args.certificates)
    print("wrote " + ", ".join(written.files))
    arm = export.measure_cortex_m4(written) if args.cortex_m4 else None
    _print_footprint("int8" if args.quantize else "float32", written.footprint, arm)
    if args.quantize:
        _print_footprint("float32 (for comparison)", export.footprint(net), None)
        if net.n_in == 784 and not args.no_eval:
            from sparsefan.train import as_float_inputs

            _, _, x_test, y_test = _load(args)
            xt, yt = as_float_inputs(x_test), y_test.astype(np.int64)
            acc_f = float((net.predict(xt) == yt).mean())
            acc_q = float((model.predict(xt) == yt).mean())
            print(f"test accuracy on {len(xt)} images ({args.data}): float32 {100 * acc_f:.2f}%,"
                  f" int8 {100 * acc_q:.2f}% (change {100 * (acc_q - acc_f):+.2f} points)")
    return 0


def make_parser():
    parser = argparse.ArgumentParser(
        prog="sparsefan", description="Fixed fan-in sparse neural networks on CPUs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network and save it",
                       description="Build a network, train it, report test accuracy, save it.")
    _add_data_args(p)
    p.add_argument("--arch", choices=tuple(builders.BUILDERS), default="direct")
    p.add_argument("--levels", type=_POSITIVE, default=2, help="hierarchy levels (default 2)")
    p.add_argument("--units", type=_POSITIVE, default=None, help="output units (default 2N)")
    p.add_argument("--fan-in", type=_POSITIVE, default=None,
                   help="inputs per unit (default N^(2/3) direct, N^(1/L) hierarchy, "
                        "13 partition_ensemble)")
    p.add_argument("--wiring", choices=builders.WIRINGS, default="gaussian")
    p.add_argument("--hidden", type=_ints, default=None,
                   help="comma-separated widths: per-unit MLP (direct, partition_ensemble), "
                        "channels per level (hierarchy), hidden layers (dense_mlp)")
    p.add_argument("--head-hidden", type=_ints, default=None,
                   help="hierarchy: widths of a per-unit MLP after the last level")
    p.add_argument("--aggregate", choices=agg.AGGREGATES, default=None)
    p.add_argument("--activation", choices=[a for a in ACTIVATIONS if a], default="relu",
                   help="hidden activation; maxmin (even widths) suits certified training "
                        "(the C and ONNX exports take relu only)")
    p.add_argument("--epochs", type=_POSITIVE, default=10)
    p.add_argument("--batch-size", type=_POSITIVE, default=128)
    p.add_argument("--optimizer", choices=trainer.OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--schedule", choices=trainer.SCHEDULES, default="cosine")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--aggregate-loss", type=float, default=None)
    p.add_argument("--unit-loss", type=float, default=None)
    p.add_argument("--validation", type=float, default=0.0,
                   help="fraction of the training set held out for validation")
    p.add_argument("--patience", type=_POSITIVE, default=None, help="early-stopping patience (epochs)")
    p.add_argument("--l2-epsilon", type=float, default=0.0,
                   help="certified L2 training at this radius: Lipschitz-margin loss on the "
                        "wiring-weighted bound (mean_logits networks; default 0: off)")
    p.add_argument("--l0-radius", type=_NONNEGATIVE, default=0,
                   help="certified L0 training at this many changed pixels: margin loss on the "
                        "influence and chain bounds (mean_logits networks; default 0: off)")
    p.add_argument("--epsilon-ramp", type=float, default=0.5,
                   help="fraction of the training over which the certified-training bound "
                        "rises from 0 (default 0.5)")
    p.add_argument("--power-iterations", type=_POSITIVE, default=1,
                   help="power-iteration steps per training step for the bound (default 1)")
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
    p.add_argument("models", nargs="*", help="model files (none: only --include)")
    _add_data_args(p)
    p.add_argument("--n", type=_POSITIVE, default=500, help="test images (seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddn-steps", type=_POSITIVE, default=100)
    p.add_argument("--rs-queries", type=_POSITIVE, default=100)
    p.add_argument("--out", required=True, help="output directory for report.md and plots")
    p.add_argument("--include", action="append", default=None, metavar="RESULTS_JSON",
                   help="also show the models of an earlier report's results.json (repeatable)")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("demo", help="train a fan-in network on the embedded MNIST subset",
                       description="Train a 2N-unit fan-in network on the embedded MNIST subset "
                                   "(no download), report accuracy, its summary and speed.")
    p.add_argument("--epochs", type=_POSITIVE, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_threads, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", default=None, help="also save the model here")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a model file to C99 or ONNX",
                       description="Write NAME.h / NAME.c and the runtime sf_runtime.h / .c "
                                   "(--format c), or NAME.onnx (--format onnx), into OUT_DIR; "
                                   "print the flash and RAM footprint of a C export.")
    p.add_argument("--format", choices=("c", "onnx"), default="c")
    p.add_argument("model", help="model file (.npz) written by `sparsefan train`")
    p.add_argument("out_dir", help="output directory (created if needed)")
    p.add_argument("--name", default=None,
                   help="C identifier: file names and symbol prefix (default: the model file's "
                        "name)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 weights and activations (C export)")
    p.add_argument("--calibration", default=None,
                   help="inputs for the int8 activation scales: a .npy file, or embedded[:N] / "
                        "mnist[:N] (the first N training images; default N 1000)")
    p.add_argument("--percentile", type=float, default=100.0,
                   help="activation scales cover this percentile of |activation| (default 100)")
    p.add_argument("--certificates", action="store_true",
                   help="also write NAME_predict_certified: the class with certified L2 and L0 "
                        "radii (float32 mean_logits models; adds C*C*(R+2) floats of tables)")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the float32 vs int8 test accuracy report")
    p.add_argument("--cortex-m4", action="store_true",
                   help="also compile for a Cortex-M4 with arm-none-eabi-gcc (if installed) and "
                        "print the section sizes")
    _add_data_args(p)
    p.set_defaults(func=cmd_export, data="embedded")
    return parser


def main(argv=None):
    from sparsefan.datasets import DatasetError
    from sparsefan.io import ModelFileError

    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `sparsefan info m.npz | head`: the reader left; so do we
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (DatasetError, ModelFileError, FileNotFoundError, IsADirectoryError,
            PermissionError) as e:
        print(f"sparsefan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, ImportError, RuntimeError, ArithmeticError) as e:
        if os.environ.get("SPARSEFAN_DEBUG"):  # the traceback, for a bug report
            raise
        print(f"sparsefan {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparsefan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
