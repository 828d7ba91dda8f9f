"""The layout change between NumPy's ``(batch, units[, channels])`` and the kernels' layout.

The C kernels store activations *feature-major*: ``(units, channels, batch)`` with the batch
contiguous, so that every gathered input is one contiguous batch vector. Public arrays stay
``(batch, ...)``; a network changes layout once at its entry and once at its exit. Both
directions are one parallel blocked transpose in C.
"""
from __future__ import annotations

import numpy as np

from sparsefan import _engine
from sparsefan._engine import ALIGNMENT, empty_aligned  # noqa: F401 (public here)
from sparsefan._threads import resolve_n_threads
from sparsefan._validation import check_array


def to_feature_major(x: np.ndarray, n_threads: int | None = None) -> np.ndarray:
    """``(batch, units)`` or ``(batch, units, channels)`` float32 -> ``(units, channels, batch)``.

    A 2-D input gets one channel. Returns a new C-contiguous float32 array.
    """
    check_array(x, "x", np.float32, ndim=(2, 3))
    return _engine.to_feature_major(x, resolve_n_threads(n_threads))


def from_feature_major(xt: np.ndarray, squeeze_channels: bool = False,
                       n_threads: int | None = None) -> np.ndarray:
    """``(units, channels, batch)`` float32 -> ``(batch, units, channels)``.

    With ``squeeze_channels=True`` and one channel, returns ``(batch, units)``.
    """
    check_array(xt, "xt", np.float32, ndim=3)
    units, channels, batch = xt.shape
    if squeeze_channels and channels != 1:
        raise ValueError(f"squeeze_channels needs 1 channel, xt has {channels}")
    out = _engine.from_feature_major(xt, resolve_n_threads(n_threads))
    return out.reshape(batch, units) if squeeze_channels else out
