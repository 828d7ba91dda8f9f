import pytest

import sparsefan as sf
from sparsefan import _threads


def test_none_uses_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    expect = 3 if sf.openmp_enabled() else 1
    assert sf.resolve_n_threads(None) == expect


def test_none_without_env_uses_usable_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expect = _threads.usable_cpu_count() if sf.openmp_enabled() else 1
    assert sf.resolve_n_threads(None) == expect


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
