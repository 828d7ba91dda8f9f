"""Scoring all 70,000 MNIST images (train + test) through Dask against in-process predict.

    PYTHONPATH=. python bench/dask_score.py --data-dir DIR [--model MODEL.npz] [--chunk 500]
        [--repeats 5] [--workers 2]

DIR holds the four MNIST IDX files (read with sparsefan.datasets.load_mnist). Without --model
the README's network (direct, 1568 units, fan-in 28, per-unit MLP of 16) is trained for one
epoch on the embedded subset first. Every configuration scores the same 70,000 images and its
classes are checked against in-process ``Network.predict``; one round runs each configuration
once, in turn, so that noise from other work on the machine hits them alike, and the table
gives each one's median over the rounds, with the CPU seconds spent per wall second (all the
threads of this process, and the worker processes' too):

- in-process ``net.predict(x, n_threads=T)`` with T = all cores (the baseline) and T = 1;
- two Python threads, each predicting half with n_threads=1: does the forward pass release
  the GIL? (with the GIL held, CPU/wall could not pass 1);
- an in-process loop of ``predict`` over chunks of ``--chunk`` images: the same batches as the
  dask tasks, so that the chunk size and dask itself are told apart;
- ``sparsefan.dask.predict`` on a LocalCluster of one worker with ``--workers`` threads, and
  of ``--workers`` single-threaded processes (with n_threads=2 per chunk too: the
  oversubscription that the default of 1 avoids). The images are scattered to the workers
  once (the one-off cost is printed): the rounds time the scoring, as when the workers load
  their own data; the model travels as its file path.
"""
import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import sparsefan as sf
from sparsefan import builders, datasets
from sparsefan.train import TrainConfig, as_float_inputs, train

try:
    import dask.array as da
    from distributed import Client, LocalCluster

    from sparsefan import dask as sfd
except ImportError:
    sys.exit("this benchmark needs dask and distributed: pip install '.[dask]'")


def readme_network():
    """The README's network, trained for one epoch on the embedded subset."""
    x, y, xt, yt = datasets.load_embedded()
    net = builders.direct((28, 28), n_classes=10, fan_in=28, hidden=(16,))
    train(net, x, y.astype(np.int64), TrainConfig(epochs=1, batch_size=64, lr=3e-2),
          progress=False, log=lambda _: None)
    return net


def scattered(client, x, chunk):
    """x as a dask array whose chunks already live on the workers."""
    parts = [x[s:s + chunk] for s in range(0, len(x), chunk)]
    futures = client.scatter(parts)
    return da.concatenate([da.from_delayed(f, p.shape, p.dtype) for f, p in zip(futures, parts)])


def free_share(work, rounds=5):
    """How freely another Python thread runs while ``work()`` runs: the loop rate of a
    pure-Python counter thread during ``work()``, over its rate while this thread sleeps as
    long (median of ``rounds``; near 0 if ``work`` held the GIL, near 1 if it never did and
    a core was free for the counter). Other load on the machine slows both alike."""
    def rate(busy):
        stop, count = threading.Event(), []

        def spin():
            n = 0
            while not stop.is_set():
                n += 1
            count.append(n)

        t = threading.Thread(target=spin)
        t0 = time.perf_counter()
        t.start()
        busy()
        stop.set()
        t.join()
        return count[0] / (time.perf_counter() - t0)

    shares = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        during = rate(work)
        seconds = time.perf_counter() - t0
        shares.append(during / rate(lambda: time.sleep(seconds)))
    return float(np.median(shares))


def process_cpu(client=None):
    """A clock of CPU seconds: this process's (every thread), plus the worker processes' of a
    process cluster."""
    if client is None:
        return time.process_time
    return lambda: time.process_time() + sum(client.run(time.process_time).values())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="the MNIST IDX files (default: $SPARSEFAN_MNIST)")
    p.add_argument("--model", help="a model file (default: train the README's network)")
    p.add_argument("--chunk", type=int, default=500, help="images per dask chunk")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # no INFO lines at shutdown

    x_train, y_train, x_test, y_test = datasets.load_mnist(args.data_dir)
    x = as_float_inputs(np.concatenate([x_train, x_test]))
    y = np.concatenate([y_train, y_test])
    t0 = time.perf_counter()
    net = sf.load_model(args.model) if args.model else readme_network()
    source = args.model or "README network, 1 epoch on the embedded subset"
    print(f"model: {net.name} ({source}; {time.perf_counter() - t0:.1f} s to get it)")
    cores = sf.resolve_n_threads(None)
    print(f"{len(x)} images, {cores} cores, chunks of {args.chunk}, medians of {args.repeats} "
          f"rounds; load average before: {os.getloadavg()[0]:.1f}")

    want = net.predict(x, n_threads=cores)
    print(f"accuracy on the 70,000 images: {(want == y).mean():.2%}")
    share = free_share(lambda: net.predict(x[:args.chunk * 4], n_threads=1))
    held = free_share(lambda: sum(range(10_000_000)))  # a C loop that keeps the GIL
    print(f"a pure-Python thread runs at {share:.2f} of its solo rate while predict(n_threads=1)"
          f" runs, at {held:.2f} during sum(range(10**7)), which holds the GIL")
    half = len(x) // 2

    def two_threads():
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(lambda s: net.predict(s, n_threads=1), (x[:half], x[half:]))
        return np.concatenate([a, b])

    def chunked(n_threads):
        return np.concatenate([net.predict(x[s:s + args.chunk], n_threads)
                               for s in range(0, len(x), args.chunk)])

    own = process_cpu()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.npz")  # the workers read the model file themselves
        sf.save_model(net, path)
        runs = {f"in-process predict(x), n_threads={cores}": (lambda: net.predict(x, cores), own),
                "in-process predict(x), n_threads=1": (lambda: net.predict(x, 1), own),
                "2 Python threads x predict(half, n_threads=1)": (two_threads, own),
                f"in-process loop over chunks, n_threads={cores}": (lambda: chunked(cores), own),
                "in-process loop over chunks, n_threads=1": (lambda: chunked(1), own)}
        clusters = []
        try:
            for kind, kw in (("threads", dict(processes=False, n_workers=1,
                                              threads_per_worker=args.workers)),
                             ("processes", dict(processes=True, n_workers=args.workers,
                                                threads_per_worker=1))):
                t0 = time.perf_counter()
                cluster = LocalCluster(dashboard_address=":0", silence_logs=logging.ERROR, **kw)
                client = Client(cluster)
                clusters.append((client, cluster))
                client.wait_for_workers(kw["n_workers"])
                started = time.perf_counter() - t0
                t0 = time.perf_counter()
                X = scattered(client, x, args.chunk).persist()
                print(f"{kind} cluster: started in {started:.1f} s, images scattered in "
                      f"{time.perf_counter() - t0:.1f} s")
                shape = (f"1 worker x {args.workers} threads" if kind == "threads" else
                         f"{args.workers} workers x 1 thread")
                cpu = own if kind == "threads" else process_cpu(client)
                for n in (1, 2) if kind == "processes" else (1,):
                    runs[f"dask {shape}, n_threads={n} per chunk"] = (
                        lambda c=client, X=X, n=n: c.compute(sfd.predict(path, X, n_threads=n))
                        .result(), cpu)
            times = {name: [] for name in runs}
            for name, (run, _) in runs.items():  # warm-up: every worker loads the model once
                if not np.array_equal(run(), want):
                    raise SystemExit(f"{name}: the classes differ from in-process predict")
            for _ in range(args.repeats):
                for name, (run, cpu) in runs.items():
                    c0, t0 = cpu(), time.perf_counter()
                    run()
                    t = time.perf_counter() - t0
                    times[name].append((t, cpu() - c0))
        finally:
            for client, cluster in clusters:
                client.close()
                cluster.close()

    base = float(np.median([t for t, _ in times[next(iter(runs))]]))
    print(f"\n{'configuration':<50} {'median':>8} {'images/s':>9} {'vs baseline':>11} "
          f"{'CPU/wall':>8}")
    for name, ts in times.items():
        t = float(np.median([t for t, _ in ts]))
        par = float(np.median([c / t for t, c in ts]))
        print(f"{name:<50} {t:>6.2f} s {len(x) / t:>9,.0f} {base / t:>10.2f}x {par:>8.2f}")
    print(f"every configuration's classes are identical to in-process predict; load average "
          f"after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
