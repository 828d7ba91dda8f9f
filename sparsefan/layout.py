"""The layout change between NumPy's ``(batch, units[, channels])`` and the kernels' layout.

The C kernels store activations *feature-major*: ``(units, channels, batch)`` with the batch
contiguous, so that every gathered input is one contiguous batch vector. Public arrays stay
``(batch, ...)``; a network changes layout once at its entry and once at its exit. Both
directions are one parallel blocked transpose in C.
"""
import math

import numpy as np

from sparsefan import _kernels
from sparsefan._threads import resolve_n_threads
from sparsefan._validation import check_array

# Feature-major activations are gathered one batch vector at a time; vector loads that straddle two
# cache lines cost the kernels up to a third of their speed, so the arrays this package allocates
# start on a cache-line boundary (so does every row when the batch is a multiple of 16).
ALIGNMENT = 64


def empty_aligned(shape, zero=False):
    """A C-contiguous float32 array of ``shape`` starting on a 64-byte boundary."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(map(int, shape))
    n = math.prod(shape)
    buf = np.empty(n + ALIGNMENT // 4, np.float32)
    start = (-buf.ctypes.data % ALIGNMENT) // 4
    out = buf[start:start + n].reshape(shape)
    if zero:
        out.fill(0.0)
    return out


def to_feature_major(x, n_threads=None):
    """``(batch, units)`` or ``(batch, units, channels)`` float32 -> ``(units, channels, batch)``.

    A 2-D input gets one channel. Returns a new C-contiguous float32 array.
    """
    check_array(x, "x", np.float32, ndim=(2, 3))
    n = resolve_n_threads(n_threads)
    batch = x.shape[0]
    feats = x.shape[1:] if x.ndim == 3 else (x.shape[1], 1)
    out = empty_aligned(feats + (batch,))
    _kernels.transpose(out.reshape(-1), x.reshape(-1), batch, int(np.prod(feats)), n)
    return out


def from_feature_major(xt, squeeze_channels=False, n_threads=None):
    """``(units, channels, batch)`` float32 -> ``(batch, units, channels)``.

    With ``squeeze_channels=True`` and one channel, returns ``(batch, units)``.
    """
    check_array(xt, "xt", np.float32, ndim=3)
    n = resolve_n_threads(n_threads)
    units, channels, batch = xt.shape
    out = empty_aligned((batch, units, channels))
    _kernels.transpose(out.reshape(-1), xt.reshape(-1), units * channels, batch, n)
    if squeeze_channels:
        if channels != 1:
            raise ValueError(f"squeeze_channels needs 1 channel, xt has {channels}")
        return out.reshape(batch, units)
    return out
