"""The ``sparsefan`` command: train, eval, info, robustness, demo, export.

Exit status: 0 on success; 1 for an error, printed as one line ``sparsefan CMD: error: ...``
(``SPARSEFAN_DEBUG=1`` raises it instead, with its traceback); 2 for a usage error (argparse's
own: a bad option value, a missing or conflicting option); 130 when interrupted. ``robustness``
also exits 1 when an attack beat a certificate. Every command checks its options, its output
paths and its input files before any long work.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

from sparsefan import aggregate as agg
from sparsefan import builders
from sparsefan import train as trainer
from sparsefan.augment import TRANSFORMS
from sparsefan.layers import ACTIVATIONS
from sparsefan.network import Network

# the training options' defaults are TrainConfig's, so the command and the library agree
_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(trainer.TrainConfig)}
# the cross tools --cortex-m4 runs (sparsefan.export.measure_cortex_m4)
_ARM_TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size")


class UsageError(ValueError):
    """Options that contradict each other or miss a partner: exit 2 with the usage, as argparse
    does for a bad value."""


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


def _float_in(low, high=math.inf, low_open=False, high_open=False):
    """A finite float in the range from ``low`` to ``high`` (an end excluded when open): an
    argparse type."""
    if high == math.inf:
        wanted = f"> {low:g}" if low_open else f">= {low:g}"
    else:
        wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if (not math.isfinite(value) or not low <= value <= high
                or value == low and low_open or value == high and high_open):
            raise argparse.ArgumentTypeError(f"must be a finite number {wanted}, got {text}")
        return value
    parse.__name__ = f"number {wanted}"
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


def _data_spec(text):
    """--data: a spec of sparsefan.datasets.parse_spec (checked for its form; the files are
    checked when the command starts)."""
    from sparsefan import datasets

    try:
        datasets.parse_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return text


def _calibration_spec(text):
    """--calibration: FILE.npy -> ("npy", FILE); embedded[:N] / mnist[:N] / data[:N] ->
    (source, N), N the first training images (default 1000)."""
    source, colon, count = text.partition(":")
    if source in ("embedded", "mnist", "data"):
        try:
            n = int(count) if colon else 1000
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(f"the count after ':' must be an int >= 1, got "
                                             f"{text!r}")
        return source, n
    if not text.endswith(".npy"):
        raise argparse.ArgumentTypeError(f"expected a .npy file, or embedded[:N] / mnist[:N] / "
                                         f"data[:N]; got {text!r}")
    return "npy", text


def _c_name(text):
    from sparsefan import export

    try:
        return export.check_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _transforms(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in TRANSFORMS]
    if bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names of {', '.join(TRANSFORMS)}, "
                                         f"got {text!r}")
    return names


_POSITIVE, _NONNEGATIVE = _int_at_least(1), _int_at_least(0)
_AT_LEAST_0 = _float_in(0.0)
_FRACTION = _float_in(0.0, 1.0)


def _version():
    from importlib import metadata

    try:
        return metadata.version("sparsefan")
    except metadata.PackageNotFoundError:
        import sparsefan

        return getattr(sparsefan, "__version__", "unknown")


def _check_output_dir(path, option):
    """Refuse, before any work, an output directory that exists as something else or that
    cannot be created or written (it is created later, by the writer)."""
    target = os.path.abspath(path)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "" if existing == target else f": {existing!r}"
        raise NotADirectoryError(f"{option} {path!r}{where} is not a directory")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{option} {path!r}: directory {existing!r} is not writable")


def _check_data_args(args):
    """--data-dir and --download name MNIST's directory and its download: nothing else."""
    if args.data_dir is not None and args.data not in ("mnist", None):
        raise UsageError(f"--data-dir is MNIST's directory; with --data {args.data} it has no "
                         "use (another IDX directory: --data idx:DIR)")
    if args.download and args.data not in ("mnist", None):
        raise UsageError(f"--download fetches MNIST; it has no use with --data {args.data}")


def _load(args, spec=None):
    from sparsefan import datasets

    return datasets.load(spec or args.data, args.data_dir, download=args.download,
                         limit=args.limit)


def _check_fits(net, x, y, spec, what="the model"):
    """The data set's images and labels are the ones ``net`` reads and predicts."""
    size = int(np.prod(x.shape[1:]))
    if size != net.n_in:
        raise ValueError(f"{what} reads {net.n_in} inputs; the images of --data {spec} hold "
                         f"{size} values each")
    if len(y) and int(y.max()) >= net.n_classes:
        raise ValueError(f"{what} predicts {net.n_classes} classes; --data {spec} has label "
                         f"{int(y.max())}")


def build_network(args: argparse.Namespace, input_shape: Sequence[int],
                  n_classes: int) -> Network:
    """The network ``sparsefan train``'s architecture options describe."""
    return builders.build(args.arch, input_shape, n_classes, fan_in=args.fan_in,
                          n_units=args.units, levels=args.levels, hidden=args.hidden,
                          head_hidden=args.head_hidden, wiring=args.wiring,
                          aggregate=args.aggregate, activation=args.activation, seed=args.seed)


def cmd_train(args: argparse.Namespace) -> int:
    """``sparsefan train``: build, train, evaluate and save a network."""
    from sparsefan import io
    from sparsefan.train import TrainConfig, as_float_inputs, evaluate, train

    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint")
    if args.patience is not None and not args.validation:
        raise UsageError("--patience stops on the validation accuracy: give --validation too")
    _check_data_args(args)
    try:
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
            weight_decay=args.weight_decay, schedule=args.schedule,
            aggregate_loss=args.aggregate_loss, unit_loss=args.unit_loss,
            validation=args.validation, patience=args.patience, seed=args.seed,
            n_threads=args.threads, l2_epsilon=args.l2_epsilon, epsilon_ramp=args.epsilon_ramp,
            power_iterations=args.power_iterations, l0_radius=args.l0_radius,
            augment=args.augment or (), augment_fraction=args.augment_fraction)
    except ValueError as e:
        raise UsageError(str(e)) from None
    io.check_output_path(args.out, "--out")  # before minutes of training
    if args.checkpoint:
        io.check_output_path(args.checkpoint, "--checkpoint")
    x_train, y_train, x_test, y_test = _load(args)
    net = build_network(args, x_train.shape[1:], int(max(y_train.max(), y_test.max())) + 1)
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
    if args.limit:
        meta["limit"] = args.limit
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


def cmd_eval(args: argparse.Namespace) -> int:
    """``sparsefan eval``: test accuracy and loss of a model file."""
    from sparsefan import io
    from sparsefan.train import as_float_inputs, evaluate

    _check_data_args(args)
    net = io.load_model(args.model)
    _, _, x_test, y_test = _load(args)
    _check_fits(net, x_test, y_test, args.data)
    t0 = time.perf_counter()
    acc, loss = evaluate(net, as_float_inputs(x_test), y_test.astype(np.int64), args.threads)
    dt = time.perf_counter() - t0
    print(f"{args.model}: test accuracy {100 * acc:.2f}%, loss {loss:.4f} on {len(x_test)} "
          f"examples ({args.data}); {dt:.2f}s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``sparsefan info``: a model file's summary and metadata."""
    from sparsefan import io

    net = io.load_model(args.model)
    print(net.summary())
    meta = net.metadata
    if meta:
        shown = {k: v for k, v in meta.items() if k != "history"}
        print("metadata:", json.dumps(shown, indent=1, sort_keys=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``sparsefan demo``: train on the embedded MNIST subset; accuracy, summary and speed."""
    import sparsefan as sf
    from sparsefan import datasets
    from sparsefan._timing import median_seconds
    from sparsefan.train import TrainConfig, as_float_inputs, evaluate, train

    if args.out:
        from sparsefan import io

        io.check_output_path(args.out, "--out")
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
        io.save_model(net, args.out, metadata={"dataset": "embedded", "test_accuracy": acc})
        print(f"saved {args.out}")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    """``sparsefan robustness``: every attack and certificate on each model, as a report."""
    from sparsefan import io, report
    from sparsefan.train import as_float_inputs

    if not args.models and not args.include:
        raise UsageError("give model files, or earlier results with --include")
    _check_data_args(args)
    _check_output_dir(args.out, "--out")
    earlier = [r for path in args.include or () for r in report.load_results(path)]
    nets = [io.load_model(path) for path in args.models]
    if nets:
        _, _, x_test, y_test = _load(args)
        for path, net in zip(args.models, nets):
            _check_fits(net, x_test, y_test, args.data, path)
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(len(x_test), min(args.n, len(x_test)), replace=False))
        x = as_float_inputs(x_test[pick])
        y = y_test[pick].astype(np.int64)
    results = []
    for path, net in zip(args.models, nets):
        print(f"{path}: {net.name}")
        r = report.evaluate_model(net, x, y, ddn_steps=args.ddn_steps,
                                  rs_queries=args.rs_queries, n_threads=args.threads)
        r["label"] = os.path.splitext(os.path.basename(path))[0]
        results.append(r)
    violations = sum(r["violations"] for r in results)
    text = report.write_report(results + earlier, args.out, "sparsefan " + " ".join(sys.argv[1:]))
    print(text)
    if violations:
        raise RuntimeError(f"{violations} certificate violation(s): an attack beat a "
                           f"certificate (see {os.path.join(args.out, 'report.md')})")
    return 0


def _calibration_inputs(args, network):
    """The inputs --calibration names, as float32 rows the model reads."""
    from sparsefan import datasets
    from sparsefan.train import as_float_inputs

    source, arg = args.calibration
    if source == "npy":
        x = np.load(arg, allow_pickle=False)
    elif source == "embedded":
        x = datasets.load_embedded()[0][:arg]
    elif source == "mnist":
        x = datasets.load("mnist", args.data_dir)[0][:arg]
    else:
        x = _load(args, args.data or "embedded")[0][:arg]
    if x.ndim < 1 or len(x) and x[0].size != network.n_in:
        raise ValueError(f"calibration inputs hold {x[0].size if x.ndim else 0} values each; "
                         f"the model reads {network.n_in}")
    return as_float_inputs(x)


def _default_c_name(model_path):
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


def cmd_export(args: argparse.Namespace) -> int:
    """``sparsefan export``: C99 (float32 or int8) or ONNX files of a model file."""
    from sparsefan import export, io
    from sparsefan.train import as_float_inputs

    if args.format != "c":
        for given, option in ((args.quantize, "--quantize int8"),
                              (args.certificates, "--certificates"),
                              (args.cortex_m4, "--cortex-m4")):
            if given:
                raise UsageError(f"{option} applies to the C export only")
    if args.quantize and not args.calibration:
        raise UsageError("--quantize int8 needs --calibration (a .npy of inputs, or "
                         "embedded[:N] / mnist[:N] / data[:N])")
    if args.calibration and not args.quantize:
        raise UsageError("--calibration sets the int8 scales: give --quantize int8 too")
    _check_data_args(args)
    tools = [shutil.which(t) for t in _ARM_TOOLS] if args.cortex_m4 else []
    if None in tools:
        missing = _ARM_TOOLS[tools.index(None)]
        raise FileNotFoundError(f"--cortex-m4: {missing} is not on PATH (Debian/Ubuntu: "
                                "apt-get install gcc-arm-none-eabi); leave out --cortex-m4 to "
                                "export without the Cortex-M4 sizes")
    _check_output_dir(args.out_dir, "out_dir")
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"model file {args.model!r} not found")
    net = io.load_model(args.model)
    name = args.name or export.check_name(_default_c_name(args.model))
    calib = _calibration_inputs(args, net) if args.quantize else None
    test = None  # the float32 vs int8 accuracy report's data, loaded before anything is written
    if args.quantize and not args.no_eval and (args.data is not None or net.n_in == 784):
        spec = args.data or "embedded"
        _, _, x_test, y_test = _load(args, spec)
        _check_fits(net, x_test, y_test, spec)
        test = spec, as_float_inputs(x_test), y_test.astype(np.int64)
    if args.format == "onnx":
        os.makedirs(args.out_dir, exist_ok=True)
        path = export.export_onnx(net, os.path.join(args.out_dir, f"{name}.onnx"))
        print(f"wrote {path} (opset 17, dynamic batch; outputs scores, logits, label)")
        return 0
    model = net
    if calib is not None:
        model = export.quantize_int8(net, calib, percentile=args.percentile)
        print(f"int8: calibrated on {len(calib)} inputs (percentile {args.percentile:g})")
    written = export.export_c(model, args.out_dir, name, certificates=args.certificates)
    print("wrote " + ", ".join(written.files))
    arm = export.measure_cortex_m4(written, *tools) if args.cortex_m4 else None
    _print_footprint("int8" if args.quantize else "float32", written.footprint, arm)
    if args.quantize:
        _print_footprint("float32 (for comparison)", export.footprint(net), None)
    if test is not None:
        spec, xt, yt = test
        acc_f = float((net.predict(xt, args.threads) == yt).mean())
        acc_q = float((model.predict(xt) == yt).mean())
        print(f"test accuracy on {len(xt)} images ({spec}): float32 {100 * acc_f:.2f}%,"
              f" int8 {100 * acc_q:.2f}% (change {100 * (acc_q - acc_f):+.2f} points)")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help when it has a value (not None or off) and
    the help does not already say what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is None or isinstance(default, bool) or default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return super()._get_help_string(action)


def _add_data_args(p, default="mnist", data_help=None):
    p.add_argument("--data", type=_data_spec, default=default, metavar="SPEC",
                   help=data_help or
                   "data set: embedded (the 10k/2k MNIST subset in the package), mnist (from "
                   "--data-dir, $SPARSEFAN_MNIST or the cache; checksummed), mnist:DIR, idx:DIR "
                   "(four IDX files with MNIST's names, not checksummed: Fashion-MNIST, "
                   "KMNIST) or npz:FILE (arrays x_train, y_train, x_test, y_test; uint8 pixels "
                   "or floats in [0, 1], integer labels)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory holding the MNIST IDX files (--data mnist)")
    p.add_argument("--download", action="store_true",
                   help="download MNIST into the cache if it is not found (checksummed)")
    p.add_argument("--limit", type=_POSITIVE, default=None, metavar="N",
                   help="use the first N images of the training set and of the test set "
                        "(default: all)")
    p.add_argument("--threads", type=_threads, default=None,
                   help="kernel threads (default: the OpenMP thread limit, OMP_NUM_THREADS or "
                        "threadpoolctl, else all usable CPUs)")


def make_parser() -> argparse.ArgumentParser:
    """The ``sparsefan`` argument parser, one subparser per command."""
    d = _TRAIN_DEFAULTS
    parser = argparse.ArgumentParser(
        prog="sparsefan", description="Fixed fan-in sparse neural networks on CPUs.",
        epilog="Exit status: 0 success, 1 error, 2 usage error, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"sparsefan {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, **kw):
        p = sub.add_parser(name, formatter_class=_HelpFormatter, **kw)
        p.set_defaults(func=func, parser=p)
        return p

    p = command("train", cmd_train, help="train a network and save it",
                description="Build a network, train it, report test accuracy, save it.")
    _add_data_args(p)
    p.add_argument("--arch", choices=tuple(builders.BUILDERS), default="direct",
                   help="architecture")
    p.add_argument("--levels", type=_POSITIVE, default=2, help="hierarchy levels")
    p.add_argument("--units", type=_POSITIVE, default=None, help="output units (default 2N)")
    p.add_argument("--fan-in", type=_POSITIVE, default=None,
                   help="inputs per unit (default N^(2/3) direct, N^(1/L) hierarchy, "
                        "13 partition_ensemble)")
    p.add_argument("--wiring", choices=builders.WIRINGS, default="gaussian",
                   help="how the first layer's units pick their inputs")
    p.add_argument("--hidden", type=_ints, default=None,
                   help="comma-separated widths: per-unit MLP (direct, partition_ensemble), "
                        "channels per level (hierarchy), hidden layers (dense_mlp); default: "
                        "the architecture's")
    p.add_argument("--head-hidden", type=_ints, default=None,
                   help="hierarchy: widths of a per-unit MLP after the last level")
    p.add_argument("--aggregate", choices=agg.AGGREGATES, default=None,
                   help="how the units' logits combine (default: the architecture's)")
    p.add_argument("--activation", choices=[a for a in ACTIVATIONS if a], default="relu",
                   help="hidden activation; maxmin (even widths) suits certified training "
                        "(the C and ONNX exports take relu only)")
    p.add_argument("--epochs", type=_POSITIVE, default=d["epochs"], help="training epochs")
    p.add_argument("--batch-size", type=_POSITIVE, default=d["batch_size"],
                   help="examples per step")
    p.add_argument("--optimizer", choices=trainer.OPTIMIZERS, default=d["optimizer"],
                   help="optimizer")
    p.add_argument("--lr", type=_float_in(0.0, low_open=True), default=d["lr"],
                   help="learning rate")
    p.add_argument("--schedule", choices=trainer.SCHEDULES, default=d["schedule"],
                   help="learning-rate schedule")
    p.add_argument("--weight-decay", type=_AT_LEAST_0, default=d["weight_decay"],
                   help="L2 weight decay")
    p.add_argument("--aggregate-loss", type=_AT_LEAST_0, default=d["aggregate_loss"],
                   help="weight of the aggregate's loss (default 1, or 0 for the vote)")
    p.add_argument("--unit-loss", type=_AT_LEAST_0, default=d["unit_loss"],
                   help="weight of the per-unit loss (default 0, or 1 for the vote)")
    p.add_argument("--validation", type=_float_in(0.0, 1.0, high_open=True),
                   default=d["validation"],
                   help="fraction of the training set held out for validation")
    p.add_argument("--patience", type=_POSITIVE, default=d["patience"],
                   help="early-stopping patience in epochs (needs --validation; default: off)")
    p.add_argument("--l2-epsilon", type=_AT_LEAST_0, default=d["l2_epsilon"],
                   help="certified L2 training at this radius: Lipschitz-margin loss on the "
                        "wiring-weighted bound (mean_logits networks; 0: off)")
    p.add_argument("--l0-radius", type=_NONNEGATIVE, default=d["l0_radius"],
                   help="certified L0 training at this many changed pixels: margin loss on the "
                        "influence and chain bounds (mean_logits networks; 0: off)")
    p.add_argument("--epsilon-ramp", type=_FRACTION, default=d["epsilon_ramp"],
                   help="fraction of the training over which the certified-training bound "
                        "rises from 0")
    p.add_argument("--power-iterations", type=_POSITIVE, default=d["power_iterations"],
                   help="power-iteration steps per training step for the bound")
    p.add_argument("--augment", type=_transforms, default=None,
                   help=f"comma-separated augmentations with soft labels, of "
                        f"{','.join(TRANSFORMS)} (sparsefan.augment; default: none)")
    p.add_argument("--augment-fraction", type=_float_in(0.0, 1.0, low_open=True),
                   default=d["augment_fraction"], help="share of every batch augmented")
    p.add_argument("--seed", type=_NONNEGATIVE, default=d["seed"], help="random seed")
    p.add_argument("--checkpoint", default=None, help="checkpoint file, written every epoch")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint if present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="model file to write (.npz)")

    p = command("eval", cmd_eval, help="test accuracy of a model file",
                description="Test accuracy and loss of a model file on a data set's test split.")
    p.add_argument("model", help="model file (.npz)")
    _add_data_args(p)

    p = command("info", cmd_info, help="summary of a model file",
                description="Layers, fan-in, parameters, FLOPs and metadata of a model file.")
    p.add_argument("model", help="model file (.npz)")

    p = command("robustness", cmd_robustness, help="attacks and certificates for model files",
                description="Run every attack and certificate on each model and write "
                            "a Markdown report with PNG plots.")
    p.add_argument("models", nargs="*", help="model files (none: only --include)")
    _add_data_args(p)
    p.add_argument("--n", type=_POSITIVE, default=500, help="test images (seeded sample)")
    p.add_argument("--seed", type=_NONNEGATIVE, default=0, help="seed of the sample")
    p.add_argument("--ddn-steps", type=_POSITIVE, default=100, help="DDN (L2 attack) steps")
    p.add_argument("--rs-queries", type=_POSITIVE, default=100,
                   help="Sparse-RS (L0 attack) queries per budget")
    p.add_argument("--out", required=True, help="output directory for report.md and plots")
    p.add_argument("--include", action="append", default=None, metavar="RESULTS_JSON",
                   help="also show the models of an earlier report's results.json (repeatable)")

    p = command("demo", cmd_demo, help="train a fan-in network on the embedded MNIST subset",
                description="Train a 2N-unit fan-in network on the embedded MNIST subset "
                            "(no download), report accuracy, its summary and speed.")
    p.add_argument("--epochs", type=_POSITIVE, default=6, help="training epochs")
    p.add_argument("--seed", type=_NONNEGATIVE, default=0, help="random seed")
    p.add_argument("--threads", type=_threads, default=None,
                   help="kernel threads (default: the OpenMP thread limit, OMP_NUM_THREADS or "
                        "threadpoolctl, else all usable CPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="also save the model here")

    p = command("export", cmd_export, help="export a model file to C99 or ONNX",
                description="Write NAME.h / NAME.c and the runtime sf_runtime.h / .c "
                            "(--format c), or NAME.onnx (--format onnx), into OUT_DIR; "
                            "print the flash and RAM footprint of a C export.")
    p.add_argument("--format", choices=("c", "onnx"), default="c", help="what to write")
    p.add_argument("model", help="model file (.npz) written by `sparsefan train`")
    p.add_argument("out_dir", help="output directory (created if needed)")
    p.add_argument("--name", type=_c_name, default=None,
                   help="C identifier: file names and symbol prefix (default: the model file's "
                        "name)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 weights and activations (C export)")
    p.add_argument("--calibration", type=_calibration_spec, default=None,
                   help="inputs for the int8 activation scales: a .npy file, or embedded[:N] / "
                        "mnist[:N] / data[:N] (the first N training images of the embedded "
                        "subset, of MNIST, or of --data; N defaults to 1000)")
    p.add_argument("--percentile", type=_float_in(0.0, 100.0, low_open=True), default=100.0,
                   help="activation scales cover this percentile of |activation|")
    p.add_argument("--certificates", action="store_true",
                   help="also write NAME_predict_certified: the class with certified L2 and L0 "
                        "radii (float32 mean_logits models; adds C*C*(R+2) floats of tables)")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the float32 vs int8 test accuracy report")
    p.add_argument("--cortex-m4", action="store_true",
                   help="also compile for a Cortex-M4 with arm-none-eabi-gcc and print the "
                        "section sizes (an error if the cross compiler is not installed)")
    _add_data_args(p, default=None,
                   data_help="data set of the float32 vs int8 accuracy report (--quantize), "
                             "in the forms `sparsefan train --data` takes (default: embedded, "
                             "for a model of 784 inputs; else no report)")
    return parser


def _one_line(message):
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) or "(no message)"


@contextlib.contextmanager
def _warnings_as_lines(command):
    """Warnings as one line each, ``sparsefan CMD: warning: ...``, not Python's two."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"sparsefan {command}: warning: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


# errors whose message speaks for itself; any other is shown with its type
_MESSAGE_ERRORS = (ValueError, TypeError, OSError, ImportError, RuntimeError, ArithmeticError,
                   MemoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sparsefan`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status (see the module docstring). Usage errors exit through ``SystemExit(2)``."""
    args = make_parser().parse_args(argv)
    try:
        with _warnings_as_lines(args.command):
            return args.func(args)
    except UsageError as e:
        command: argparse.ArgumentParser = args.parser
        command.error(str(e))  # exits 2 with the usage, as argparse's own errors do
    except BrokenPipeError:  # `sparsefan info m.npz | head`: the reader left; so do we
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"sparsefan {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("SPARSEFAN_DEBUG"):  # the traceback, for a bug report
            raise
        text = _one_line(e)
        if not isinstance(e, _MESSAGE_ERRORS):
            text = f"{type(e).__name__}: {text} (SPARSEFAN_DEBUG=1 shows the traceback)"
        print(f"sparsefan {args.command}: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
