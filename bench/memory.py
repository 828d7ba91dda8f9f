"""Peak memory of a forward pass and of a training step, against weights + indices + activations.

    PYTHONPATH=. python bench/memory.py [--batches 1,256] [--big 150528,301056,9]
        [--threads 1] [--train-batch 128] [--json results.json]

from the repository root (``PYTHONPATH=.`` picks up an in-place build; an installed sparsefan
needs none). ``docs/memory.md`` shows the output of exactly ``PYTHONPATH=. python bench/memory.py``.

Every case runs in fresh subprocesses (one per measure), with the model and its input built
first. The call is made twice, a warm-up and the measured call, and both measures count from
before the warm-up: memory that a call keeps for the next one (a scratch buffer, cached index
tables) counts, one-time costs of the first call do not.

- *peak transient*: the peak of the bytes allocated since before the warm-up and alive during
  the measured call, its result included (``tracemalloc``; NumPy reports its data buffers to
  it). *kept*: what is still allocated after the calls, their results dropped.
- *RSS growth*: the peak resident set size during the measured call (VmHWM, reset with
  ``/proc/self/clear_refs`` after the warm-up) minus the RSS before the warm-up. A cross-check
  for allocations that ``tracemalloc`` cannot see (C code, BLAS, OpenMP), measured in its own
  subprocess so that tracemalloc's bookkeeping stays out. The subprocesses run with
  ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so large buffers go back to the system when freed
  and the warm-up does not leave them in the heap.

Definitions (float32 activations, 4 bytes an entry):

- *model* M: every layer's weight and bias, and every distinct index table's ``indices`` and
  ``indptr`` (a table shared by two layers counts once).
- *activations* A of a forward pass: ``a_0 + max(a_1, max_{i>=2} (a_{i-1} + a_i))``, where
  ``a_0`` is the input batch and ``a_i`` the output of layer ``i`` (``n_out * c_out * batch``
  entries; the last one is the per-unit logits Z). The caller holds the input for the whole call,
  and a layer-by-layer forward must hold a layer's whole input while it writes its whole output;
  nothing else is needed. Layout copies (the kernels read feature-major activations), the
  aggregation's intermediates and the returned prediction count as overhead.
- *ratio*: ``(M + a_0 + peak transient) / (M + A)``: everything alive at the peak (the resident
  model and input, plus the transient peak, which includes what is kept between calls) over
  what a forward pass needs. The goal is <= 1.2.

A training step (``Network.loss_and_grad`` as the trainer calls it, with the gradient buffers
preallocated, then one Adam step) is reported with: T, the transposed index tables the backward
pass builds on its first call and caches (kept from the warm-up, so inside the peak); G, the
gradient buffers (the size of the weights and biases); the activations it needs,
``a_0 + sum_{i>=1} a_i`` kept for the backward pass plus ``max(a_1, max_{i>=2} (a_i + a_{i-1}))``
for the output and input gradients of the layer being back-propagated; and the ratio
``(M + G + a_0 + peak) / (M + T + G + activations)``. There is no goal for training.

Memory does not depend on the thread count (the kernels write into buffers the caller passes,
and the whole-network forward into one scratch buffer sized by the layers and the batch);
``--threads 1`` (the default) keeps the run light.
"""
import argparse
import json
import os
import subprocess
import sys

NETWORKS = {
    "direct(fan_in=85, hidden=(32,))": ("direct", dict(fan_in=85, hidden=(32,))),
    "hierarchy(levels=2, channels=(8,16))": ("hierarchy", dict(levels=2, channels=(8, 16))),
    "hierarchy(levels=3, channels=(8,16,16))": ("hierarchy",
                                                dict(levels=3, channels=(8, 16, 16))),
    "dense_mlp(hidden=(256,256))": ("dense_mlp", dict(hidden=(256, 256))),
}
BIG = "FanIn(random({}, {}, k={}))"
MB = 1e6


# -- accounting -------------------------------------------------------------------------------

def model_bytes(layers):
    """Weights, biases and every distinct index table (indices + indptr)."""
    total, seen = 0, set()
    for layer in layers:
        total += layer.weight.nbytes + layer.bias.nbytes
        conn = layer.connectivity
        if id(conn) not in seen:
            seen.add(id(conn))
            total += conn.indices.nbytes + conn.indptr.nbytes
    return total


def transposed_bytes(layers):
    """The cached transposed tables of every distinct index table that has built one."""
    total, seen = 0, set()
    for layer in layers:
        conn = layer.connectivity
        if id(conn) not in seen and conn._transposed is not None:
            seen.add(id(conn))
            total += sum(a.nbytes for a in conn._transposed)
    return total


def activation_sizes(layers, batch):
    """[a_0, a_1, ..., a_L]: the input batch and every layer's output, in bytes."""
    return [4 * layers[0].n_in * layers[0].c_in * batch] + [
        4 * layer.n_out * layer.c_out * batch for layer in layers]


def forward_activations(a):
    """The input, plus the largest set of layer activations a forward pass must hold at once."""
    pairs = [a[1]] + [a[i - 1] + a[i] for i in range(2, len(a))]
    return a[0] + max(pairs)


def training_activations(a):
    """Every activation kept for the backward pass, plus one layer's output and input gradient."""
    flows = [a[1]] + [a[i] + a[i - 1] for i in range(2, len(a))]
    return sum(a) + max(flows)


# -- measuring (in the subprocess) ------------------------------------------------------------

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_growth(fn, warmup):
    """Peak RSS during fn() minus the RSS before warmup(), in bytes (None where VmHWM cannot be
    reset). Whatever the warm-up leaves allocated for later calls counts."""
    import gc

    def reset_hwm():
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    try:
        reset_hwm()
    except OSError:
        return None
    before = _status_kb("VmRSS")
    warmup()
    reset_hwm()
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    return 1024 * (peak - before)


def traced_peak(fn, warmup):
    """(peak, kept): the peak bytes alive during fn() among those allocated since before
    warmup() (the result included), and the bytes still allocated after it, the result dropped:
    caches that calls keep, such as a scratch buffer or transposed index tables."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        warmup()
        gc.collect()
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del result
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return peak, kept


def build(case, big):
    import sparsefan as sf
    from sparsefan import builders

    if case in NETWORKS:
        builder, kwargs = NETWORKS[case]
        net = getattr(builders, builder)(**kwargs)
        return net, net.layers
    n_in, n_out, k = big
    layer = sf.FanIn(sf.Connectivity.random(n_in, n_out, k, seed=0), seed=0)
    return layer, [layer]


def measure(case, entry, batch, big, threads, mode):
    """One case in this process, by ``mode`` "rss" or "traced": a dict of byte counts."""
    import numpy as np

    import sparsefan as sf

    obj, layers = build(case, big)
    np.ones((1024, 1024), np.float32) @ np.ones((1024, 1024), np.float32)  # BLAS buffers, once
    rng = np.random.default_rng(0)
    x = rng.random((batch, layers[0].n_in), dtype=np.float32)
    row = {"case": case, "entry": entry, "batch": batch}
    a = activation_sizes(layers, batch)
    row["model"] = model_bytes(layers)
    row["input"] = a[0]
    row["largest_weight"] = max(layer.weight.nbytes for layer in layers)
    if entry == "predict":
        fn = lambda: obj.predict(x, n_threads=threads)  # noqa: E731
    elif entry == "unit_logits":
        fn = lambda: obj.unit_logits(x, n_threads=threads)  # noqa: E731
    elif entry == "forward":
        fn = lambda: obj.forward(x, n_threads=threads)  # noqa: E731
    elif entry == "forward_fm":
        xt = sf.to_feature_major(x)
        del x
        fn = lambda: obj.forward_fm(xt, n_threads=threads)  # noqa: E731
    elif entry == "train":
        from sparsefan.train import Optimizer, TrainConfig

        y = rng.integers(0, obj.n_classes, size=batch)
        grads = [(np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
                 for l in layers]
        opt = Optimizer(obj, TrainConfig())
        for buf in [b for pair in grads for b in pair] + [b for st in opt.state for b in st]:
            buf.fill(0.0)  # resident from the start: zeros from calloc are not, until written
        fn = lambda: obj.loss_and_grad(x, y, 1.0, 0.0, n_threads=threads,  # noqa: E731
                                       grads=grads)

        def warmup():  # the first step also builds and caches the transposed tables
            fn()
            opt.step(grads, 1e-3)

        if mode == "rss":
            return {"rss_growth": rss_growth(fn, warmup)}
        row["peak"], row["kept"] = traced_peak(fn, warmup)
        row["optimizer_peak"], _ = traced_peak(lambda: opt.step(grads, 1e-3), lambda: None)
        row["transposed"] = transposed_bytes(layers)
        row["grads"] = sum(g.nbytes + b.nbytes for g, b in grads)
        row["optimizer_state"] = sum(s.nbytes for st in opt.state for s in st)
        row["activations"] = training_activations(a)
        # the peak includes the transposed tables, kept from the warm-up
        fixed = row["model"] + row["grads"]
        row["ratio"] = ((fixed + a[0] + row["peak"])
                        / (fixed + row["transposed"] + row["activations"]))
        return row
    else:
        raise ValueError(entry)
    if mode == "rss":
        return {"rss_growth": rss_growth(fn, fn)}
    row["peak"], row["kept"] = traced_peak(fn, fn)
    row["activations"] = forward_activations(a)
    row["ratio"] = (row["model"] + a[0] + row["peak"]) / (row["model"] + row["activations"])
    return row


# -- driving (in the parent) ------------------------------------------------------------------

def run_case(case, entry, batch, big, threads):
    """Two fresh subprocesses: one traced, one for RSS (tracemalloc's own memory stays out)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    row = {}
    for mode in ("traced", "rss"):
        cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(
            [case, entry, batch, big, threads, mode])]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        row.update(json.loads(out.strip().splitlines()[-1]))
    return row


def fmt_mb(v):
    return "n/a" if v is None else f"{v / MB:.2f}"


def forward_table(rows):
    lines = [
        "| model | call | batch | weights+indices MB | activations MB | peak transient MB "
        "| ratio | RSS growth MB | kept MB |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['entry']} | {r['batch']} | {fmt_mb(r['model'])} | "
            f"{fmt_mb(r['activations'])} | {fmt_mb(r['peak'])} | {r['ratio']:.2f} | "
            f"{fmt_mb(r['rss_growth'])} | {fmt_mb(r['kept'])} |")
    return "\n".join(lines)


def training_table(rows):
    lines = [
        "| model | batch | weights+indices MB | transposed MB | grads MB | activations MB "
        "| loss_and_grad peak transient MB | ratio | RSS growth MB | Adam step peak transient MB "
        "| largest weight MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['batch']} | {fmt_mb(r['model'])} | {fmt_mb(r['transposed'])} | "
            f"{fmt_mb(r['grads'])} | {fmt_mb(r['activations'])} | {fmt_mb(r['peak'])} | "
            f"{r['ratio']:.2f} | {fmt_mb(r['rss_growth'])} | {fmt_mb(r['optimizer_peak'])} | "
            f"{fmt_mb(r['largest_weight'])} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,256", help="forward batch sizes (default 1,256)")
    p.add_argument("--big", default="150528,301056,9",
                   help="n_in,n_out,k of the single large layer (default 150528,301056,9)")
    p.add_argument("--threads", type=int, default=1, help="kernel threads (default 1)")
    p.add_argument("--train-batch", type=int, default=None,
                   help="training batch (default: TrainConfig's batch_size)")
    p.add_argument("--json", default=None, help="also write every row to this JSON file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one case
    args = p.parse_args()
    if args.one is not None:
        case, entry, batch, big, threads, mode = json.loads(args.one)
        print(json.dumps(measure(case, entry, batch, tuple(big), threads, mode)))
        return

    import platform

    import numpy as np

    import sparsefan as sf
    from sparsefan import _kernels
    from sparsefan.train import TrainConfig

    batches = [int(b) for b in args.batches.split(",")]
    big = [int(v) for v in args.big.split(",")]
    big_name = BIG.format(*big)
    train_batch = args.train_batch or TrainConfig().batch_size
    jobs = [(case, entry) for case in NETWORKS for entry in ("unit_logits", "predict")]
    jobs += [(big_name, "forward"), (big_name, "forward_fm")]
    forward_rows = []
    for case, entry in jobs:
        for batch in batches:
            forward_rows.append(run_case(case, entry, batch, big, args.threads))
            print(f"  measured {case} {entry} batch {batch}", file=sys.stderr, flush=True)
    train_rows = []
    for case in NETWORKS:
        train_rows.append(run_case(case, "train", train_batch, big, args.threads))
        print(f"  measured {case} train batch {train_batch}", file=sys.stderr, flush=True)
    print(f"sparsefan {sf.__version__}, NumPy {np.__version__}, Python {platform.python_version()}"
          f", {_kernels.cpu_variant()} kernels, {args.threads} thread(s)\n")
    print("Forward passes (MB = 10^6 bytes)\n")
    print(forward_table(forward_rows))
    print(f"\nTraining step (batch {train_batch}, Adam)\n")
    print(training_table(train_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"forward": forward_rows, "train": train_rows}, f, indent=1)


if __name__ == "__main__":
    main()
