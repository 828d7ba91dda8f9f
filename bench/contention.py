"""Speed on a busy machine: Network.predict with 1 and 2 threads, with and without competing
CPU-bound processes, same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/contention.py \
        [--competitors N] [--batches 1,64] [--rounds 8] [--spin 50:0,50:1000]

The model is the direct MNIST network of the issue (builders.direct: 1568 units, fan-in 49, a
per-unit MLP of 24), random weights. A competitor is a Python process spinning in
``while True: pass``; the default is one per usable CPU minus one (at least one). Each round
measures every cell -- batch x threads, idle, then with the competitors running (started for
the phase and stopped after it) -- so that drift in the machine's load reaches idle and busy
cells alike; the tables give medians and means over all rounds. The goal of issue 14: with one
competing process, 2 threads no slower than 1.2 x 1 thread, at batch 1 and 64.

``--spin WAIT:IDLE,...`` (builds with the thread pool of csrc/pool.c only) also alternates the
times a thread spins before it sleeps, in microseconds -- waiting for work inside a call, and a
worker waiting for the next call: the measurement behind the defaults.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

import sparsefan as sf
from sparsefan import _kernels
from sparsefan._threads import usable_cpu_count


def start_competitors(n):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.3)  # let them start spinning
    return procs


def stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def set_spin(pair):
    """'WAIT:IDLE' microseconds (a lone number sets both)."""
    wait, _, idle = pair.partition(":")
    _kernels.spin_microseconds(int(wait))
    _kernels.spin_microseconds(int(idle or wait), idle=True)


def block(fn, seconds):
    """Per-call seconds of fn, called for about ``seconds`` (after one warm-up call)."""
    fn()
    out = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if t1 > end and len(out) >= 3:
            return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--competitors", type=int, default=max(1, usable_cpu_count() - 1))
    p.add_argument("--batches", default="1,64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.15, help="per cell and round")
    p.add_argument("--spin", default=None, help="spin times to alternate (microseconds)")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    has_pool = hasattr(_kernels, "spin_microseconds")
    if args.spin and not has_pool:
        raise SystemExit("--spin needs a build with csrc/pool.c")
    spins = [s.strip() for s in args.spin.split(",")] if args.spin else [None]
    net = sf.builders.direct(fan_in=49, hidden=(24,))
    x = sf.datasets.load_embedded()[2][:max(batches)].reshape(-1, 784).astype(np.float32) / 255
    inputs = {b: np.ascontiguousarray(x[:b]) for b in batches}
    backend = _kernels.thread_backend() if has_pool else "openmp"
    default_spin = (f"{_kernels.spin_microseconds()}:{_kernels.spin_microseconds(idle=True)}"
                    if has_pool else None)
    print(f"model: builders.direct(fan_in=49, hidden=(24,)), {net.n_units} units; kernels "
          f"{_kernels.cpu_variant()}; threads from {backend}"
          + (f" (spin {default_spin} us, in a call:between calls)" if has_pool else "")
          + f"; {usable_cpu_count()} usable CPUs; {args.competitors} competitor(s); "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    times = {}  # (phase, spin, batch, threads) -> [seconds]
    procs = []
    try:
        for r in range(args.rounds):
            for phase in ("idle", "busy"):
                if phase == "busy":
                    procs = start_competitors(args.competitors)
                for spin in spins:
                    if spin is not None:
                        set_spin(spin)
                    for b in batches:
                        for n in (threads if r % 2 == 0 else threads[::-1]):
                            xb = inputs[b]
                            times.setdefault((phase, spin, b, n), []).extend(
                                block(lambda: net.predict(xb, n), args.seconds))
                if phase == "busy":
                    stop(procs)
                    procs = []
    finally:
        stop(procs)
        if has_pool:
            set_spin(default_spin)
    print(f"medians (means) of {args.rounds} rounds, milliseconds per predict; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    head = "".join(f"{f'{n} thr':>17s}" for n in threads)
    ratio = f"{f'{threads[-1]}/{threads[0]} thr':>16s}" if len(threads) > 1 else ""
    print(f"{'phase':6s} {'spin':>10s} {'batch':>5s}{head}{ratio}")
    for phase in ("idle", "busy"):
        for spin in spins:
            for b in batches:
                cells = [np.asarray(times[(phase, spin, b, n)]) * 1e3 for n in threads]
                row = "".join(f"{np.median(c):8.3f} ({np.mean(c):6.2f})" for c in cells)
                if len(threads) > 1:
                    row += (f"{np.median(cells[-1]) / np.median(cells[0]):9.2f} "
                            f"({np.mean(cells[-1]) / np.mean(cells[0]):4.2f})")
                sp = "-" if spin is None else spin
                print(f"{phase:6s} {sp:>10s} {b:5d}{row}")


if __name__ == "__main__":
    main()
