"""Builders for the essay's designs (DESIGN §1) and the baselines they are measured against.

Every size is overridable. ``N`` is the number of inputs (784 for MNIST).

- :func:`direct`: 2N output units, each reading ~N^(2/3) inputs, a per-unit MLP and a per-unit
  head; cost O(N^(5/3)).
- :func:`hierarchy`: L levels of 2N units, fan-in ~N^(1/L) per level, then the per-unit head;
  levels=2 is the essay's O(N^(4/3)) design.
- :func:`partition_ensemble`: one disjoint partition of the inputs, one small MLP per part, a
  vote — the Feature Partition Aggregation configuration, as a baseline.
- :func:`dense_mlp`: a dense MLP, trained by the same trainer, for fair comparisons.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable

import numpy as np

from sparsefan.connectivity import Connectivity, grid_centres
from sparsefan.layers import FanIn
from sparsefan.network import Network

WIRINGS = ("gaussian", "partitions", "random")


def _image_shape(input_shape):
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) not in (1, 2, 3):
        raise ValueError(f"input_shape must be (N,), (H, W) or (H, W, C), got {input_shape}")
    return input_shape


def _first_wiring(wiring, input_shape, n_units, k, sigma, seed):
    n_in = int(np.prod(input_shape))
    if wiring == "gaussian":
        if len(input_shape) == 1:
            raise ValueError("gaussian wiring needs an image input_shape (H, W) or (H, W, C)")
        return Connectivity.gaussian(input_shape, n_units, k, sigma=sigma, seed=seed)
    if wiring == "partitions":
        return Connectivity.partitions(n_in, n_units, k, seed=seed)
    if wiring == "random":
        return Connectivity.random(n_in, n_units, k, seed=seed)
    raise ValueError(f"wiring must be one of {WIRINGS}, got {wiring!r}")


ACTIVATIONS = ("relu", "maxmin")


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def _per_unit_mlp(first, hidden, n_classes, seed, activation="relu"):
    """FanIn(first, 1 -> h1, act) -> FanIn(identity, h1 -> h2, act) ... -> head (-> C)."""
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden must list at least one positive width, got {hidden}")
    activation = _check_activation(activation)
    rng = np.random.default_rng(seed)
    layers = [FanIn(first, 1, hidden[0], activation=activation, seed=rng)]
    ident = Connectivity.identity(first.n_out)
    for a, b in zip(hidden[:-1], hidden[1:]):
        layers.append(FanIn(ident, a, b, activation=activation, seed=rng))
    layers.append(FanIn(ident, hidden[-1], n_classes, seed=rng))
    return layers


def direct(input_shape: Iterable[int] = (28, 28), n_classes: int = 10,
           n_units: int | None = None, fan_in: int | None = None, wiring: str = "gaussian",
           hidden: Iterable[int] = (32,), aggregate: str = "mean_logits",
           sigma: float | None = None, seed: int = 0, activation: str = "relu") -> Network:
    """2N output units (default), each reading ``fan_in`` (default round(N^(2/3))) inputs,
    each computing its own MLP (``hidden`` widths, ``activation`` "relu" or "maxmin") and
    emitting n_classes scores."""
    input_shape = _image_shape(input_shape)
    N = int(np.prod(input_shape))
    n_units = 2 * N if n_units is None else int(n_units)
    k = min(N, round(N ** (2 / 3))) if fan_in is None else int(fan_in)
    first = _first_wiring(wiring, input_shape, n_units, k, sigma, seed)
    layers = _per_unit_mlp(first, hidden, n_classes, seed + 1, activation)
    act = "" if activation == "relu" else f", activation={activation}"
    return Network(layers, n_classes, aggregate, input_shape,
                   name=f"direct(units={n_units}, fan_in={k}, wiring={wiring}{act})")


def hierarchy(input_shape: Iterable[int] = (28, 28), n_classes: int = 10, levels: int = 2,
              n_units: int | None = None, fan_in: int | None = None, wiring: str = "gaussian",
              channels: Iterable[int] | None = None, head_hidden: Iterable[int] = (),
              aggregate: str = "mean_logits", spread: float = 1.5, seed: int = 0,
              activation: str = "relu") -> Network:
    """``levels`` FanIn levels of ``n_units`` (default 2N) units each, fan-in ``fan_in``
    (default round(N^(1/levels))) per level, ReLU, then the per-unit head.

    ``channels`` gives each level's output channels (default 8 at level 1, 16 above);
    ``activation`` is "relu" or "maxmin" (even channel counts).
    Gaussian wiring keeps receptive fields local: level-1 units sit on a grid over the image
    and read nearby pixels; a level-l unit reads level-(l-1) units near its own position, with
    sigma = ``spread`` x the radius of a disc holding ``fan_in`` of them. Partition wiring
    reads disjoint groups of the previous level at every level (partition-aligned).
    """
    input_shape = _image_shape(input_shape)
    N = int(np.prod(input_shape))
    levels = int(levels)
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    M = 2 * N if n_units is None else int(n_units)
    k = max(1, round(N ** (1 / levels))) if fan_in is None else int(fan_in)
    if channels is None:
        channels = [8] + [16] * (levels - 1)
    channels = [int(c) for c in channels]
    if len(channels) != levels:
        raise ValueError(f"channels must have one entry per level ({levels}), got {channels}")
    activation = _check_activation(activation)
    rng = np.random.default_rng(seed)
    conns = [_first_wiring(wiring, input_shape, M, min(k, N), None, seed)]
    if wiring == "gaussian":
        H, W = input_shape[:2]
        pos = grid_centres(H, W, M)
        density = M / (H * W)
        sigma = spread * math.sqrt(k / (math.pi * density))
        for lvl in range(1, levels):
            conns.append(Connectivity.gaussian_points(pos, pos, min(k, M), sigma, seed=seed + lvl))
    else:
        for lvl in range(1, levels):
            conns.append(_first_wiring(wiring, (M,), M, min(k, M), None, seed + lvl))
    layers = []
    c_prev = 1
    for conn, c in zip(conns, channels):
        layers.append(FanIn(conn, c_prev, c, activation=activation, seed=rng))
        c_prev = c
    ident = Connectivity.identity(M)
    for h in head_hidden:
        layers.append(FanIn(ident, c_prev, int(h), activation=activation, seed=rng))
        c_prev = int(h)
    layers.append(FanIn(ident, c_prev, n_classes, seed=rng))
    act = "" if activation == "relu" else f", activation={activation}"
    return Network(layers, n_classes, aggregate, input_shape,
                   name=f"hierarchy(levels={levels}, units={M}, fan_in={k}, wiring={wiring}{act})")


def partition_ensemble(input_shape: Iterable[int] = (28, 28), n_classes: int = 10,
                       part_size: int = 13, hidden: Iterable[int] = (32,),
                       aggregate: str = "vote", seed: int = 0,
                       activation: str = "relu") -> Network:
    """One random disjoint partition of the inputs into groups of ~``part_size`` (N // part_size
    groups, sizes differing by at most 1), a small MLP per group, and a plurality vote: the
    Feature Partition Aggregation configuration. Train it with the per-unit loss."""
    input_shape = _image_shape(input_shape)
    N = int(np.prod(input_shape))
    n_parts = max(1, N // int(part_size))
    first = Connectivity.partition(N, n_parts, seed=seed)
    layers = _per_unit_mlp(first, hidden, n_classes, seed + 1, activation)
    return Network(layers, n_classes, aggregate, input_shape,
                   name=f"partition_ensemble(parts={n_parts}, part_size~{part_size})")


def dense_mlp(input_shape: Iterable[int] = (28, 28), n_classes: int = 10,
              hidden: Iterable[int] = (256, 256), seed: int = 0,
              activation: str = "relu") -> Network:
    """A dense MLP: FanIn(dense(N -> 1 unit), 1 -> h1, act) -> ... -> head; runs as GEMMs."""
    input_shape = _image_shape(input_shape)
    N = int(np.prod(input_shape))
    activation = _check_activation(activation)
    rng = np.random.default_rng(seed)
    hidden = [int(h) for h in hidden]
    layers = [FanIn(Connectivity.dense(N, 1), 1, hidden[0], activation=activation, seed=rng)]
    one = Connectivity.identity(1)
    for a, b in zip(hidden[:-1], hidden[1:]):
        layers.append(FanIn(one, a, b, activation=activation, seed=rng))
    layers.append(FanIn(one, hidden[-1], n_classes, seed=rng))
    act = "" if activation == "relu" else f", activation={activation}"
    return Network(layers, n_classes, "mean_logits", input_shape,
                   name=f"dense_mlp(hidden={tuple(hidden)}{act})")


BUILDERS: dict[str, Callable[..., Network]] = {
    "direct": direct,
    "hierarchy": hierarchy,
    "partition_ensemble": partition_ensemble,
    "dense_mlp": dense_mlp,
}


def build(architecture: str, input_shape: Iterable[int], n_classes: int, *,
          fan_in: int | None = None, n_units: int | None = None, levels: int = 2,
          hidden: Iterable[int] | None = None, head_hidden: Iterable[int] | None = None,
          wiring: str = "gaussian", aggregate: str | None = None,
          activation: str = "relu", seed: int = 0) -> Network:
    """One entry point over :data:`BUILDERS` with one name per option (what the CLI and
    ``FanInClassifier`` call): ``fan_in`` is the inputs per unit (the partition ensemble's
    ``part_size``), ``hidden`` the widths (a hierarchy's ``channels``); None takes the
    builder's own default. Options an architecture does not have are ignored."""
    if architecture not in BUILDERS:
        raise ValueError(f"architecture must be one of {sorted(BUILDERS)}, got "
                         f"{architecture!r}")
    opts = dict(input_shape=input_shape, n_classes=n_classes, seed=seed, activation=activation)
    given = dict(fan_in=fan_in, n_units=n_units, hidden=hidden, head_hidden=head_hidden,
                 wiring=wiring, aggregate=aggregate, levels=levels)
    rename = {"partition_ensemble": {"fan_in": "part_size"}, "hierarchy": {"hidden": "channels"}}
    params = inspect.signature(BUILDERS[architecture]).parameters
    for key, value in given.items():
        name = rename.get(architecture, {}).get(key, key)
        if value is not None and name in params:
            opts[name] = tuple(value) if isinstance(value, list) else value
    return BUILDERS[architecture](**opts)
