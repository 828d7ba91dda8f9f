"""Thread-count rules, following scikit-learn's ``n_threads`` conventions."""
import functools
import numbers
import os
import warnings

from sparsefan import _engine


@functools.lru_cache(maxsize=None)
def usable_cpu_count():
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2/v1 CPU quota.

    Read once per process (the quota files are re-read only after ``cache_clear()``).
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def _cgroup_cpu_quota():
    try:  # cgroup v2
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, quota // period)
    except (OSError, ValueError):
        pass
    return None


def default_n_threads():
    """``OMP_NUM_THREADS`` if set to a positive integer, else the usable CPU count."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value > 0:
            return value
    return usable_cpu_count()


MAX_THREADS_PER_CPU = 4  # more threads than this per usable CPU only add overhead
MIN_THREAD_CAP = 16


def max_threads():
    """The most threads a call uses: ``MAX_THREADS_PER_CPU`` times the usable CPU count, and
    at least ``MIN_THREAD_CAP``."""
    return max(MIN_THREAD_CAP, MAX_THREADS_PER_CPU * usable_cpu_count())


def resolve_n_threads(n_threads, name="n_threads"):
    """Turn a user's ``n_threads`` into a positive thread count.

    None -> ``OMP_NUM_THREADS`` or the usable CPU count; a positive int is taken as is;
    a negative int counts back from the usable count (-1 = all, -2 = all but one; at least 1);
    0 is an error. Counts above :func:`max_threads` (4 per usable CPU, at least 16) are capped
    there with a RuntimeWarning: OpenMP would try to allocate a stack per thread and abort the process.
    Results do not depend on the count. Without OpenMP the kernels run on one thread.
    """
    if n_threads is None:
        n = default_n_threads()
    elif isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(n_threads).__name__}")
    elif n_threads == 0:
        raise ValueError(f"{name}=0 is not a thread count; use None, a positive or a negative int")
    elif n_threads > 0:
        n = int(n_threads)
    else:
        n = max(1, usable_cpu_count() + 1 + int(n_threads))
    cap = max_threads()
    if n > cap:  # warned about with or without OpenMP: the same call, the same message
        warnings.warn(f"{name}={n} is more threads than {cap} (the cap for "
                      f"{usable_cpu_count()} usable CPUs); using {cap}", RuntimeWarning,
                      stacklevel=3)
        n = cap
    if not _engine.openmp_enabled():
        return 1
    return n
