"""Batch inference on Dask: ``Network.predict`` over a ``dask.array``, one task per chunk.

    X (n, n_in) float32 dask array, chunked by rows
        --map_blocks--> predict: (n,) int64 classes, predict_proba: (n, C) float64

The model travels as its model file (the versioned, pickle-free format of :mod:`sparsefan.io`):
a :class:`~sparsefan.Network` is saved to bytes once per call, which enter the graph as one
key; a path is read by each worker itself. Either way the call records the file's SHA-256, and
each worker process keeps the networks it has loaded under that hash (a few, least recently
used first out), so a model is parsed once per worker, never once per chunk, and a file
changed at the same path is a new hash, never a stale hit. A worker that reads a path whose
content no longer has the recorded hash raises :class:`~sparsefan.io.ModelFileError` instead
of scoring with another model.

The kernels run without the GIL (the whole forward pass is one ``nogil`` C call), so the
threads of one worker score their chunks in parallel. Each chunk uses ``n_threads=1`` by
default: the workers' threads already fill the cores, and more OpenMP threads per task would
only oversubscribe them.

    import dask.array as da
    from sparsefan import dask as sfd
    X = da.from_array(x, chunks=(5000, -1))            # x (n, 784) float32
    classes = sfd.predict("model.npz", X).compute()    # under any dask scheduler

Dask is an optional dependency (``pip install 'sparsefan[dask]'``); the rest of the package
never imports this module.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict

import dask
import dask.array as da
import numpy as np

from sparsefan import io
from sparsefan._threads import resolve_n_threads
from sparsefan.io import ModelFileError
from sparsefan.network import Network

__all__ = ["predict", "predict_proba", "cache_info", "CACHE_SIZE"]

CACHE_SIZE = 4  # networks kept per process
_cache = OrderedDict()  # sha256 hex -> Network, least recently used first
_lock = threading.Lock()  # one load at a time: concurrent tasks wait for it, then hit
_loads = 0


def predict(model, X, *, n_threads=1):
    """Predicted classes of every row of ``X``: a lazy (n,) int64 dask array, equal to
    ``network.predict(x)``.

    Parameters
    ----------
    model : Network, str or os.PathLike
        A network (saved to bytes now: later edits to it do not reach the result) or the path
        of a model file that every worker can read (hashed now; see the module docstring).
    X : dask.array.Array
        (n, n_in) float32, chunked by rows; chunks across columns are merged first.
    n_threads : int or None
        Threads per chunk (``sparsefan.resolve_n_threads`` rules, resolved on the worker).
        The default 1 leaves the parallelism to the workers.
    """
    return _map(model, X, n_threads, proba=False)


def predict_proba(model, X, *, n_threads=1):
    """Class probabilities of every row of ``X``: a lazy (n, n_classes) float64 dask array,
    equal to ``network.predict_proba(x)``. Parameters as :func:`predict`."""
    return _map(model, X, n_threads, proba=True)


def cache_info():
    """This process's model cache: ``{"models": [sha256, ...], "loads": n}`` (least recently
    used first; ``loads`` counts every file parsed). Per worker with ``client.run``."""
    with _lock:
        return {"models": list(_cache), "loads": _loads}


# -- the client side ---------------------------------------------------------------------------

def _map(model, X, n_threads, proba):
    resolve_n_threads(n_threads)  # refuse a bad value now, not on every worker
    if isinstance(model, Network):
        blob = _to_bytes(model)
        sha, net = _sha256(blob), model
        source = dask.delayed(blob, name=f"sparsefan-model-{sha}")  # one key, not one per task
        path = None
    elif isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(model))
        blob = _read(path)
        sha = _sha256(blob)
        net = _network(sha, path, blob)  # checks the file now, and warms this process's cache
        source = None
    else:
        raise TypeError(f"model must be a sparsefan Network or a model file path, got "
                        f"{type(model).__name__}")
    X = _check_X(X, net.n_in)
    if proba:
        return X.map_blocks(_predict_block, path, sha, source, n_threads, True,
                            chunks=(X.chunks[0], (net.n_classes,)), dtype=np.float64,
                            meta=np.empty((0, 0), np.float64), token="sparsefan-predict-proba")
    return X.map_blocks(_predict_block, path, sha, source, n_threads, False, drop_axis=1,
                        dtype=np.int64, meta=np.empty((0,), np.int64), token="sparsefan-predict")


def _check_X(X, n_in):
    if not isinstance(X, da.Array):
        raise TypeError(f"X must be a dask.array.Array, got {type(X).__name__} (wrap a NumPy "
                        f"array with dask.array.from_array(x, chunks=(rows, -1)))")
    if X.ndim != 2:
        raise ValueError(f"X must have 2 dimensions (examples, {n_in} inputs), got shape "
                         f"{X.shape} (reshape images with X.reshape(len(X), -1))")
    if X.shape[1] != n_in:
        raise ValueError(f"X must have {n_in} columns (the model's inputs), got {X.shape[1]}")
    if X.dtype != np.float32:
        raise TypeError(f"X must have dtype float32, got {X.dtype.name} "
                        f"(use X.astype(numpy.float32))")
    if len(X.chunks[1]) > 1:  # a task must see whole examples
        X = X.rechunk({1: -1})
    return X


def _to_bytes(network):
    """The network's model file, as bytes (io.save_model writes files only)."""
    with tempfile.TemporaryDirectory(prefix="sparsefan-dask-") as d:
        path = os.path.join(d, "model.npz")
        io.save_model(network, path)
        with open(path, "rb") as f:
            return f.read()


# -- the worker side ---------------------------------------------------------------------------

def _predict_block(block, path, sha, blob, n_threads, proba, block_info=None):
    net = _network(sha, path, blob)
    if not np.isfinite(block).all():  # name the rows: the core's message cannot
        start, stop = block_info[0]["array-location"][0]
        raise ValueError(f"X contains NaN or Inf in rows {start}:{stop}")
    # dask decides the blocks' memory layout (a rechunk or a slice may leave strides): copy
    # only such a block, the kernels read C order
    block = np.ascontiguousarray(block)
    rows = len(block)
    if rows == 1:
        # the kernels' batch-1 path sums in another order (last bits): score a lone row as
        # part of a batch, so that the result does not depend on how X is chunked
        block = np.concatenate([block, block])
    if proba:
        return net.predict_proba(block, n_threads=n_threads)[:rows]
    return net.predict(block, n_threads=n_threads)[:rows].astype(np.int64, copy=False)


def _network(sha, path, blob):
    """The network whose model file has SHA-256 ``sha``: from this process's cache, or parsed
    from ``blob`` (the file's bytes) or else from the file at ``path``, whose content must
    still have that hash."""
    global _loads
    with _lock:
        net = _cache.get(sha)
        if net is not None:
            _cache.move_to_end(sha)
            return net
        if blob is None:
            blob = _read(path)
            if _sha256(blob) != sha:
                raise ModelFileError(f"{path}: the model file changed after the graph was "
                                     f"built (SHA-256 {_sha256(blob)[:12]}..., expected "
                                     f"{sha[:12]}...); call predict again")
        net = _from_bytes(blob, path or "the model")
        _cache[sha] = net
        _loads += 1
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return net


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the file: {e}") from None


def _sha256(blob):
    return hashlib.sha256(blob).hexdigest()


def _from_bytes(blob, where):
    """io.load_model on bytes (it reads files only): through a private temporary file, its
    name replaced by ``where`` in any error."""
    with tempfile.TemporaryDirectory(prefix="sparsefan-dask-") as d:
        tmp = os.path.join(d, "model.npz")
        with open(tmp, "wb") as f:
            f.write(blob)
        try:
            return io.load_model(tmp)
        except ModelFileError as e:
            raise ModelFileError(str(e).replace(tmp, where)) from None
