"""sparsefan.dask: predictions over dask arrays, on a threaded and on a two-process LocalCluster,
bit-identical to in-process Network.predict / predict_proba for any chunking; a model file is
parsed once per worker, a changed file at the same path is reloaded (never served stale), and
bad input raises naming the argument. The core never imports dask."""
import hashlib
import logging

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")
import dask  # noqa: E402
import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from sparsefan import builders, io  # noqa: E402
from sparsefan import dask as sfd  # noqa: E402
from sparsefan.io import ModelFileError  # noqa: E402
from helpers import run_fresh  # noqa: E402

# uneven chunks, one of a single row (the kernels' batch-1 path)
CHUNKS = ((50, 1, 37, 100, 12),)


def small_net(seed=0, aggregate="mean_logits"):
    return builders.direct((6, 6), 3, n_units=24, fan_in=6, hidden=(4,), aggregate=aggregate,
                           seed=seed)


def data(n=200, seed=0):
    return np.random.default_rng(seed).random((n, 36), dtype=np.float32)


def chunked(x, chunks=CHUNKS):
    return da.from_array(x, chunks=chunks + ((x.shape[1],),))


@pytest.fixture(scope="module", params=["threads", "processes"])
def client(request):
    """A LocalCluster of one worker with two threads, or of two single-threaded processes."""
    if request.param == "threads":
        kw = dict(processes=False, n_workers=1, threads_per_worker=2)
    else:
        kw = dict(processes=True, n_workers=2, threads_per_worker=1)
    with LocalCluster(dashboard_address=":0", silence_logs=logging.ERROR, **kw) as cluster, \
            Client(cluster) as c:
        c.processes = request.param == "processes"
        yield c


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def loads(client):
    return {w: info["loads"] for w, info in client.run(sfd.cache_info).items()}


@pytest.mark.parametrize("aggregate", ["mean_logits", "mean_prob", "vote"])
def test_network_on_a_cluster_equals_in_process(client, aggregate):
    net = small_net(aggregate=aggregate)
    x = data()
    X = chunked(x)
    classes = sfd.predict(net, X).compute()
    proba = sfd.predict_proba(net, X).compute()
    assert classes.dtype == np.int64 and classes.shape == (200,)
    assert np.array_equal(classes, net.predict(x))
    assert proba.dtype == np.float64 and proba.shape == (200, 3)
    assert np.array_equal(proba, net.predict_proba(x))


def test_model_file_is_parsed_once_per_worker(client, tmp_path):
    net = small_net(seed=3)
    path = tmp_path / "model.npz"
    io.save_model(net, path)
    x = data(400, seed=1)
    X = da.from_array(x, chunks=(25, 36))  # 16 tasks
    before = loads(client)
    assert np.array_equal(sfd.predict(str(path), X).compute(), net.predict(x))
    assert np.array_equal(sfd.predict_proba(path, X).compute(), net.predict_proba(x))
    after = loads(client)
    infos = client.run(sfd.cache_info)
    for w in after:
        assert after[w] - before[w] <= 1  # 32 tasks, at most one parse per worker
    if client.processes:  # both workers scored chunks: each parsed the file itself
        assert all(sha256(path) in info["models"] for info in infos.values())


def test_changed_model_file_at_the_same_path_is_reloaded(client, tmp_path):
    path = tmp_path / "model.npz"
    x = data(300, seed=2)
    X = chunked(x, ((100, 100, 100),))
    first, second = small_net(seed=1), small_net(seed=2)
    io.save_model(first, path)
    assert np.array_equal(sfd.predict_proba(path, X).compute(), first.predict_proba(x))
    io.save_model(second, path)
    assert np.array_equal(sfd.predict_proba(path, X).compute(), second.predict_proba(x))
    assert not np.array_equal(first.predict_proba(x), second.predict_proba(x))


def test_a_graph_built_before_the_file_changed_never_mixes_models(client, tmp_path):
    """The graph records the file's hash when it is built: a worker holding that model scores
    with it, a worker that must read the changed file refuses it."""
    path = tmp_path / "model.npz"
    x = data(300, seed=4)
    first = small_net(seed=5)
    io.save_model(first, path)
    lazy = sfd.predict_proba(path, chunked(x, ((150, 150),)))
    io.save_model(small_net(seed=6), path)
    if client.processes:  # the workers never loaded the first file
        with pytest.raises(ModelFileError, match="changed after the graph was built"):
            lazy.compute()
    else:  # the worker is this process, which loaded the file when the graph was built
        assert np.array_equal(lazy.compute(), first.predict_proba(x))


def test_network_edited_after_the_call_does_not_reach_the_result():
    net = small_net(seed=7)
    x = data(100, seed=5)
    want = net.predict_proba(x)
    lazy = sfd.predict_proba(net, chunked(x, ((60, 40),)))
    with net.layers[0].edit() as (w, b):
        w *= 2
    got = lazy.compute(scheduler="sync")
    assert np.array_equal(got, want) and not np.array_equal(got, net.predict_proba(x))


def test_chunks_across_columns_and_fortran_ordered_input():
    net = small_net(seed=8)
    x = data(120, seed=6)
    columns = da.from_array(x, chunks=(40, 12))  # 3 chunks across the columns
    fortran = da.from_array(np.asfortranarray(x), chunks=(40, 36))
    with dask.config.set(scheduler="threads"):
        got = [sfd.predict_proba(net, X).compute() for X in (columns, fortran)]
        every_other = sfd.predict(net, fortran[::2]).compute()
    assert all(np.array_equal(g, net.predict_proba(x)) for g in got)
    assert np.array_equal(every_other, net.predict(np.ascontiguousarray(x[::2])))


def test_a_block_that_is_not_c_contiguous_is_scored():
    """dask does not promise C-ordered blocks (in practice it hands them over so): the chunk
    function copies such a block rather than refuse it."""
    net = small_net(seed=8)
    x = np.asfortranarray(data(40, seed=6))
    blob = sfd._to_bytes(net)
    got = sfd._predict_block(x, None, hashlib.sha256(blob).hexdigest(), blob, 1, True)
    assert np.array_equal(got, net.predict_proba(np.ascontiguousarray(x)))


def test_n_threads_per_chunk_does_not_change_results():
    net = small_net(seed=9)
    x = data(150, seed=7)
    got = [sfd.predict_proba(net, chunked(x, ((75, 75),)), n_threads=n).compute(scheduler="sync")
           for n in (1, 2, None)]
    assert all(np.array_equal(g, net.predict_proba(x)) for g in got)


def test_bad_input_names_the_argument(tmp_path):
    net = small_net()
    x = data(20)
    X = chunked(x, ((20,),))
    with pytest.raises(TypeError, match="X must be a dask.array.Array"):
        sfd.predict(net, x)
    with pytest.raises(ValueError, match="X must have 2 dimensions"):
        sfd.predict(net, da.from_array(x.reshape(20, 6, 6)))
    with pytest.raises(ValueError, match="X must have 36 columns"):
        sfd.predict(net, da.from_array(data(20)[:, :35]))
    with pytest.raises(TypeError, match="X must have dtype float32, got float64"):
        sfd.predict_proba(net, X.astype(np.float64))
    with pytest.raises(TypeError, match="model must be a sparsefan Network"):
        sfd.predict(object(), X)
    with pytest.raises(ValueError, match="n_threads=0"):
        sfd.predict(net, X, n_threads=0)
    with pytest.raises(TypeError, match="n_threads must be an int"):
        sfd.predict(net, X, n_threads=1.5)
    missing = tmp_path / "missing.npz"
    with pytest.raises(ModelFileError, match="missing.npz: cannot read the file"):
        sfd.predict(missing, X)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model file")
    with pytest.raises(ModelFileError, match=f"^{bad}: not a sparsefan file"):
        sfd.predict(bad, X)
    nan = x.copy()
    nan[13, 4] = np.nan
    lazy = sfd.predict(net, chunked(nan, ((10, 10),)))  # checked when the chunk is scored
    with pytest.raises(ValueError, match="X contains NaN or Inf in rows 10:20"):
        lazy.compute(scheduler="sync")


def test_the_core_never_imports_dask():
    code = ("import sys, sparsefan, sparsefan.cli, sparsefan.train; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed')))")
    out = run_fresh(["-c", code], check=True).stdout
    assert out.strip() == "[]"
