"""The layout change between NumPy's ``(batch, units[, channels])`` and the kernels' layout.

The C kernels store activations *feature-major*: ``(units, channels, batch)`` with the batch
contiguous, so that every gathered input is one contiguous batch vector. Public arrays stay
``(batch, ...)``; a network changes layout once at its entry and once at its exit. Both
directions are one parallel blocked transpose in C.
"""
import numpy as np

from sparsefan import _kernels
from sparsefan._threads import resolve_n_threads
from sparsefan._validation import check_array


def to_feature_major(x, n_threads=None):
    """``(batch, units)`` or ``(batch, units, channels)`` float32 -> ``(units, channels, batch)``.

    A 2-D input gets one channel. Returns a new C-contiguous float32 array.
    """
    check_array(x, "x", np.float32, ndim=(2, 3))
    n = resolve_n_threads(n_threads)
    batch = x.shape[0]
    feats = x.shape[1:] if x.ndim == 3 else (x.shape[1], 1)
    out = np.empty(feats + (batch,), dtype=np.float32)
    _kernels.transpose(out.reshape(-1), x.reshape(-1), batch, int(np.prod(feats)), n)
    return out


def from_feature_major(xt, squeeze_channels=False, n_threads=None):
    """``(units, channels, batch)`` float32 -> ``(batch, units, channels)``.

    With ``squeeze_channels=True`` and one channel, returns ``(batch, units)``.
    """
    check_array(xt, "xt", np.float32, ndim=3)
    n = resolve_n_threads(n_threads)
    units, channels, batch = xt.shape
    out = np.empty((batch, units, channels), dtype=np.float32)
    _kernels.transpose(out.reshape(-1), xt.reshape(-1), units * channels, batch, n)
    if squeeze_channels:
        if channels != 1:
            raise ValueError(f"squeeze_channels needs 1 channel, xt has {channels}")
        return out.reshape(batch, units)
    return out
