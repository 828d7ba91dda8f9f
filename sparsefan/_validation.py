"""Argument checks at the Python boundary. The C kernels trust what passes these."""
import numpy as np


def check_array(value, name, dtype, ndim=None, shape=None, finite=False):
    """Return ``value`` if it is a C-contiguous ndarray of ``dtype`` with the given shape.

    ``shape`` may hold None for free dimensions. No silent copies or casts: a wrong dtype or a
    non-contiguous array is the caller's to fix (``np.ascontiguousarray(x, dtype=...)``).
    """
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {value.dtype.name}")
    if ndim is not None and value.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {value.shape}")
    if shape is not None:
        if value.ndim != len(shape) or any(
            s is not None and s != v for s, v in zip(shape, value.shape)
        ):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if finite and not np.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return value


def check_no_overlap(out, name, **inputs):
    """Refuse an output buffer that shares memory with an input: the kernels read inputs while
    they write outputs, so an overlap gives a silently wrong answer."""
    for other, arr in inputs.items():
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{name} must not share memory with {other}")
    return out


def check_writable(value, name):
    if not value.flags.writeable:
        raise ValueError(f"{name} must be writable")
    return value


def check_int(value, name, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_chain(layers, layer_type, n_classes):
    """Raise unless ``layers`` is a non-empty chain of ``layer_type`` (a class, or a tuple of
    ``(class, name in the message)``) reading one value per input and ending in ``n_classes``
    logits per unit with no activation: what a network's fused C forward trusts."""
    cls, cls_name = layer_type if isinstance(layer_type, tuple) else (layer_type,
                                                                      layer_type.__name__)
    if not layers:
        raise ValueError("layers must not be empty")
    for i, layer in enumerate(layers):
        if not isinstance(layer, cls):
            raise TypeError(f"layers[{i}] must be a {cls_name}, got {type(layer).__name__}")
    if layers[0].c_in != 1:
        raise ValueError(f"layers[0] must have c_in=1 (one value per input), got "
                         f"{layers[0].c_in}")
    for i in range(1, len(layers)):
        a, b = layers[i - 1], layers[i]
        if a.n_out != b.n_in or a.c_out != b.c_in:
            raise ValueError(f"layers[{i - 1}] outputs {a.n_out} units x {a.c_out} channels but "
                             f"layers[{i}] reads {b.n_in} units x {b.c_in} channels")
    head = layers[-1]
    if head.c_out != n_classes:
        raise ValueError(f"the last layer must have c_out = n_classes = {n_classes}, got "
                         f"{head.c_out}")
    if head.activation is not None:
        raise ValueError("the last layer emits logits: it must have no activation")
