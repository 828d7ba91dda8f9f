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


def _env_num_threads():
    """``OMP_NUM_THREADS`` (its first level) as a positive int, or None if unset or not one."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        return None
    return value if value > 0 else None


def default_n_threads():
    """The thread count ``n_threads=None`` stands for.

    With OpenMP: the OpenMP runtime's current limit, ``omp_get_max_threads()``: the
    ``OMP_NUM_THREADS`` the runtime read at startup (joblib's and Dask's worker processes are
    started with one), or what ``omp_set_num_threads`` set since (as
    ``threadpoolctl.threadpool_limits`` does). When ``OMP_NUM_THREADS`` is not set, the
    runtime's own default is the affinity mask's CPU count, which ignores a cgroup CPU quota, so
    the limit is then also capped at :func:`usable_cpu_count` (a limit is an upper bound:
    ``threadpool_limits(8)`` under a 2-CPU quota gives 2; ask for more with an explicit count).
    This is scikit-learn's rule for its own OpenMP code. A limit the runtime cannot hold in its
    int (``OMP_NUM_THREADS`` of 2**31 or more wraps around) is taken from the variable.

    Without OpenMP (the kernels run on one thread): ``OMP_NUM_THREADS`` if set to a positive
    integer, else the usable CPU count; it only decides whether the count is capped.
    """
    env = _env_num_threads()
    if _engine.openmp_enabled():
        n = _engine.openmp_max_threads()
        if n < 1:  # OMP_NUM_THREADS >= 2**31 wraps around in the runtime's int
            n = env or usable_cpu_count()
        return min(n, usable_cpu_count()) if env is None else n
    return usable_cpu_count() if env is None else env


MAX_THREADS_PER_CPU = 4  # more threads than this per usable CPU only add overhead
MIN_THREAD_CAP = 16


def max_threads():
    """The most threads a call uses: ``MAX_THREADS_PER_CPU`` times the usable CPU count, and
    at least ``MIN_THREAD_CAP``."""
    return max(MIN_THREAD_CAP, MAX_THREADS_PER_CPU * usable_cpu_count())


def resolve_n_threads(n_threads, name="n_threads"):
    """Turn a user's ``n_threads`` into a positive thread count.

    None -> the OpenMP runtime's thread limit (:func:`default_n_threads`: what
    ``OMP_NUM_THREADS`` or threadpoolctl set; without ``OMP_NUM_THREADS`` at most the usable CPU
    count); a positive int is taken as is;
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
        given = f"{name}={n}" if n_threads is not None else f"{name}=None ({n} threads)"
        warnings.warn(f"{given} is more threads than {cap} (the cap for "
                      f"{usable_cpu_count()} usable CPUs); using {cap}", RuntimeWarning,
                      stacklevel=3)
        n = cap
    if not _engine.openmp_enabled():
        return 1
    return n
