import json
import os

import numpy as np
import pytest

import sparsefan as sf
from helpers import run_fresh
from sparsefan import _engine, _threads, builders

needs_openmp = pytest.mark.skipif(not sf.openmp_enabled(),
                                  reason="single-threaded build: every count resolves to 1")


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter (the OpenMP runtime reads its environment once, at
    startup) importing the tests' sparsefan, with ``env`` set (None unsets); its last stdout
    line, parsed as JSON."""
    out = run_fresh(["-c", code], env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_none_uses_omp_num_threads():
    got = run_python("import json, sparsefan as sf; "
                     "print(json.dumps(sf.resolve_n_threads(None)))", OMP_NUM_THREADS="3")
    assert got == (3 if sf.openmp_enabled() else 1)


def test_none_without_env_uses_usable_cpus():
    # the runtime's default (the affinity mask's CPU count) capped at the cgroup quota
    got = run_python("import json, sparsefan as sf; from sparsefan import _threads; "
                     "print(json.dumps([sf.resolve_n_threads(None), "
                     "_threads.usable_cpu_count()]))", OMP_NUM_THREADS=None)
    assert got[0] == (got[1] if sf.openmp_enabled() else 1)


def test_an_omp_num_threads_the_runtime_wraps_around_is_capped():
    # the runtime holds 2**31 as a negative int; the count comes from the variable, capped
    got = run_python("import json, warnings, sparsefan as sf; from sparsefan import _threads\n"
                     "with warnings.catch_warnings(record=True) as w:\n"
                     "    warnings.simplefilter('always')\n"
                     "    n = sf.resolve_n_threads(None)\n"
                     "print(json.dumps([n, _threads.max_threads(), [str(m.message) for m in w]]))",
                     OMP_NUM_THREADS=str(2**31))
    n, cap, messages = got
    assert n == (cap if sf.openmp_enabled() else 1)
    assert len(messages) == 1 and "n_threads=None (2147483648 threads)" in messages[0]


@needs_openmp
def test_none_follows_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        assert _engine.openmp_max_threads() == 1
        assert sf.resolve_n_threads(None) == 1
        assert sf.resolve_n_threads(2) == 2  # an explicit count is the caller's
    if _threads.usable_cpu_count() < 2:
        pytest.skip("one usable CPU: a limit of 2 is capped at 1")
    with threadpoolctl.threadpool_limits(2):
        assert sf.resolve_n_threads(None) == 2


@needs_openmp
def test_the_runtime_limit_is_capped_at_the_quota_only_without_omp_num_threads(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(_threads, "usable_cpu_count", lambda: 1)  # e.g. a 1-CPU cgroup quota
    with threadpoolctl.threadpool_limits(3):
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert sf.resolve_n_threads(None) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # asked for explicitly: honoured
        assert sf.resolve_n_threads(None) == 3


def test_predict_under_threadpool_limits_starts_no_worker():
    """OpenMP keeps a parallel region's worker threads alive afterwards: a predict under
    threadpool_limits(1) must leave the thread count unchanged, the same predict without the
    limit (two threads) adds a worker, and the results are equal."""
    pytest.importorskip("threadpoolctl")
    code = """if True:
        import json, os
        import numpy as np
        import threadpoolctl
        from sparsefan import builders

        def n_os_threads():
            return len(os.listdir("/proc/self/task"))

        net = builders.direct((12, 12), 10, n_units=288, fan_in=16, hidden=(8,), seed=0)
        x = np.random.default_rng(0).random((256, 144), dtype=np.float32)
        before = n_os_threads()
        with threadpoolctl.threadpool_limits(1):
            limited = net.predict_proba(x)
        after_limited = n_os_threads()
        free = net.predict_proba(x)
        equal = bool(np.array_equal(limited, free))
        print(json.dumps([before, after_limited, n_os_threads(), equal]))
    """
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc/self/task to count threads")
    before, after_limited, after_free, equal = run_python(
        code, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1")
    assert equal
    assert after_limited == before
    if sf.openmp_enabled():
        assert after_free == before + 1  # the measure sees a worker when there is one


@needs_openmp
def test_joblib_workers_control_the_count():
    joblib = pytest.importorskip("joblib")
    with joblib.parallel_config(backend="loky", inner_max_num_threads=1):
        counts = joblib.Parallel(n_jobs=2)(joblib.delayed(sf.resolve_n_threads)(None)
                                           for _ in range(2))
    assert counts == [1, 1]


def test_a_predict_is_the_same_under_any_limit(rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    net = builders.direct((6, 6), 3, n_units=24, fan_in=5, hidden=(4,), seed=0)
    x = rng.random((300, 36), dtype=np.float32)
    want = net.predict_proba(x)
    for limit in (1, 2):
        with threadpoolctl.threadpool_limits(limit):
            assert np.array_equal(net.predict_proba(x), want)


def test_negative_counts_back(monkeypatch):
    monkeypatch.setattr(_threads, "usable_cpu_count", lambda: 8)  # replaces the cached one
    if not sf.openmp_enabled():
        pytest.skip("single-threaded build: every count resolves to 1")
    assert sf.resolve_n_threads(-1) == 8
    assert sf.resolve_n_threads(-2) == 7
    assert sf.resolve_n_threads(-20) == 1
    assert sf.resolve_n_threads(5) == 5


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_counts(bad, exc):
    with pytest.raises(exc, match="n_threads"):
        sf.resolve_n_threads(bad)


def test_usable_cpu_count_is_positive():
    assert _threads.usable_cpu_count() >= 1
