"""Training-set transforms that teach how confidence falls off (the essay's zoom and mosaic ideas).

Every transform takes a batch of images (n, H, W) with values in [0, 1] and their labels, and
returns new images of the same shape and **soft labels**: probability vectors (n, C), float64.
A label is either an int class or already a distribution; the transforms mix it toward the
uniform distribution by a confidence weight::

    target = w * label + (1 - w) * uniform,        w = falloff(s) in [0, 1]

so w = 1 keeps the label and w = 0 says "nothing recognisable here".

- :func:`zoom_out`: the digit scaled down by s < 1 onto a blank canvas, at a random place
  inside it. Full confidence down to ``Falloff.out_full`` (0.5: a 14-pixel digit is still a
  clear digit), falling smoothly to none at ``Falloff.out_zero`` (0.15: 4 pixels of ink).
- :func:`zoom_in`: a crop scaled up by s > 1, centred at a random place of the digit. The
  visible part is 1/s of the image's width; confidence falls the same way in 1/s, from full at
  s = ``Falloff.in_full`` (1.5) to none at ``Falloff.in_zero`` (4).
- :func:`mosaic`: an n x n grid of tiny digits, each the zoom-out of one image at scale 1/n.
  The target is the mean of the tiles' own zoom-out targets, so no class of a mosaic is more
  likely than a tile's most likely class: a mosaic is never more confident than one of its
  tiles (ten percent cat stays ten percent).
- :func:`composite`: a full-size digit over a mosaic background (pixel-wise maximum of ink). The
  target stays the foreground's own: tiny distractors do not lower confidence in a large digit.

**One resampling method for every scale**: area (box) resampling. The image is read as
piecewise-constant pixels and each output pixel is the mean of the input over the square it
sees, computed exactly from the overlaps; outside the canvas is blank. Down-scaling averages
(no aliasing, ink is conserved), up-scaling repeats pixels with a linear blend at their
borders, and s = 1 at the centre is exactly the identity. Mixing methods (say, a bilinear zoom
in and an averaging zoom out) would give each scale its own artifacts, which a network can
learn to read instead of the digit; one linear operator, separable in rows and columns, leaves
none that depend on the direction of the zoom.

Every transform is vectorized (two batched matrix products per image) and seeded: the same
``rng`` state gives the same images and targets. :class:`Augmenter` applies a random mix of them
to a fraction of every training batch.
"""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

TRANSFORMS = ("zoom", "mosaic")  # the names Augmenter and the CLI accept
MOSAIC_SIZES = (2, 3, 4, 5, 6)


@dataclass(frozen=True)
class Falloff:
    """The confidence weight w(s) of a digit shown at scale s (1 = the original size).

    w = 1 for ``out_full`` <= s <= ``in_full``; below, w falls along a smoothstep in s to 0
    at ``out_zero``; above, it falls along a smoothstep in the visible fraction 1/s to 0 at
    s = ``in_zero``. The smoothstep 3t^2 - 2t^3 starts and ends flat: no cliff anywhere.
    """

    out_full: float = 0.5
    out_zero: float = 0.15
    in_full: float = 1.5
    in_zero: float = 4.0

    def __post_init__(self):
        if not 0 < self.out_zero < self.out_full <= 1:
            raise ValueError(f"need 0 < out_zero < out_full <= 1, got out_zero={self.out_zero}, "
                             f"out_full={self.out_full}")
        if not 1 <= self.in_full < self.in_zero:
            raise ValueError(f"need 1 <= in_full < in_zero, got in_full={self.in_full}, "
                             f"in_zero={self.in_zero}")

    def __call__(self, s: npt.ArrayLike) -> np.ndarray:
        """w(s) for an array (or scalar) of scales s > 0, as float64."""
        s = np.asarray(s, dtype=np.float64)
        if not (np.isfinite(s).all() and (s > 0).all()):
            raise ValueError("scales must be finite and > 0")
        small = _smoothstep((s - self.out_zero) / (self.out_full - self.out_zero))
        v, v_full, v_zero = 1 / s, 1 / self.in_full, 1 / self.in_zero
        large = _smoothstep((v - v_zero) / (v_full - v_zero))
        return np.where(s < 1, small, large)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


DEFAULT_FALLOFF = Falloff()


def soft_targets(labels: npt.ArrayLike, weight: npt.ArrayLike, n_classes: int) -> np.ndarray:
    """``weight * label + (1 - weight) * uniform`` for int labels (n,) or distributions (n, C)."""
    labels = _as_distributions(labels, n_classes, len(np.atleast_1d(weight)))
    w = np.asarray(weight, dtype=np.float64).reshape(-1, 1)
    return w * labels + (1 - w) / n_classes


def _as_distributions(labels, n_classes, n):
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape != (n, n_classes):
            raise ValueError(f"labels must have shape ({n}, {n_classes}), got {labels.shape}")
        return labels.astype(np.float64)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {n} int classes or ({n}, {n_classes}) distributions, "
                         f"got shape {labels.shape} dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    out = np.zeros((n, n_classes))
    out[np.arange(n), labels] = 1.0
    return out


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 3 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be a float array (n, height, width), got shape "
                         f"{images.shape} dtype {images.dtype}")
    return images


def _check_scales(scale, n, lo, hi, name="scale"):
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64), (n,))
    if not (np.isfinite(s).all() and ((s >= lo) & (s <= hi)).all()):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {scale!r}")
    return s


def _resampling(n_out, n_in, scale, centre_out, centre_in):
    """(m, n_out, n_in) area-resampling matrices of one axis: output pixel i sees the input
    interval centre_in + ([i, i + 1) - centre_out) / scale, and is the input's mean over it
    (what falls outside [0, n_in) is blank)."""
    edges = np.arange(n_out + 1, dtype=np.float64)
    pre = centre_in[:, None] + (edges[None, :] - centre_out[:, None]) / scale[:, None]
    lo, hi = pre[:, :-1, None], pre[:, 1:, None]
    k = np.arange(n_in, dtype=np.float64)
    overlap = np.minimum(hi, k + 1) - np.maximum(lo, k)
    np.maximum(overlap, 0.0, out=overlap)
    overlap *= scale[:, None, None]
    return overlap


def resample(images: npt.ArrayLike, scale: npt.ArrayLike,
             centre_out: npt.ArrayLike | None = None,
             centre_in: npt.ArrayLike | None = None) -> np.ndarray:
    """Area resampling of each image by its own scale: the point ``centre_in`` (row, column)
    of the input lands on ``centre_out`` of the output, distances multiplied by ``scale``.
    Centres default to the image centre; shape (n, 2) or (2,). Returns float32 (n, H, W)."""
    images = _check_images(images)
    n, H, W = images.shape
    scale = _check_scales(scale, n, 1e-3, 1e3)
    mid = np.array([H / 2, W / 2])
    co = np.broadcast_to(mid if centre_out is None else np.asarray(centre_out, float), (n, 2))
    ci = np.broadcast_to(mid if centre_in is None else np.asarray(centre_in, float), (n, 2))
    rows = _resampling(H, H, scale, co[:, 0], ci[:, 0])
    cols = _resampling(W, W, scale, co[:, 1], ci[:, 1])
    out = rows @ images.astype(np.float64) @ cols.transpose(0, 2, 1)
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32)


def zoom_out(images: npt.ArrayLike, labels: npt.ArrayLike, n_classes: int = 10,
             scale: npt.ArrayLike | None = None, rng: int | np.random.Generator | None = None,
             falloff: Falloff = DEFAULT_FALLOFF,
             min_scale: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Digits scaled down by ``scale`` (default: uniform in [min_scale, 1] per image) on a blank
    canvas, each at a uniformly random place where it fits. Returns (images, targets)."""
    images = _check_images(images)
    n, H, W = images.shape
    rng = _rng(rng)
    s = rng.uniform(min_scale, 1.0, n) if scale is None else _check_scales(scale, n, 1e-3, 1)
    room = (1 - s)[:, None] * np.array([H, W]) / 2  # how far the small digit's centre may move
    centre = np.array([H / 2, W / 2]) + rng.uniform(-1, 1, (n, 2)) * room
    return resample(images, s, centre_out=centre), soft_targets(labels, falloff(s), n_classes)


def zoom_in(images: npt.ArrayLike, labels: npt.ArrayLike, n_classes: int = 10,
            scale: npt.ArrayLike | None = None, rng: int | np.random.Generator | None = None,
            falloff: Falloff = DEFAULT_FALLOFF,
            max_scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Crops scaled up by ``scale`` (default: uniform in [1, max_scale] per image), each crop
    centred at a uniformly random place that keeps it inside the image. Returns (images,
    targets)."""
    images = _check_images(images)
    n, H, W = images.shape
    rng = _rng(rng)
    s = rng.uniform(1.0, max_scale, n) if scale is None else _check_scales(scale, n, 1, 1e3)
    room = (1 - 1 / s)[:, None] * np.array([H, W]) / 2
    centre = np.array([H / 2, W / 2]) + rng.uniform(-1, 1, (n, 2)) * room
    return resample(images, s, centre_in=centre), soft_targets(labels, falloff(s), n_classes)


def mosaic(images: npt.ArrayLike, labels: npt.ArrayLike, n_classes: int = 10,
           grid: npt.ArrayLike | None = None, rng: int | np.random.Generator | None = None,
           falloff: Falloff = DEFAULT_FALLOFF,
           pool: tuple[npt.ArrayLike, npt.ArrayLike] | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """One n x n mosaic per image (``grid`` n: an int or one per image; default uniform over
    2..6). Tile (0, 0) is the image itself, the others are drawn from ``pool`` = (images,
    labels) (default: the batch). Every tile is its image at scale 1/n filling one cell; the
    target is the mean of the tiles' zoom-out targets at 1/n. Returns (images, targets)."""
    images = _check_images(images)
    n, H, W = images.shape
    rng = _rng(rng)
    if grid is None:
        g = rng.choice(MOSAIC_SIZES, n)
    else:
        g = np.broadcast_to(np.asarray(grid), (n,))
        if not np.issubdtype(g.dtype, np.integer) or (g < 1).any() or (g > min(H, W)).any():
            raise ValueError(f"grid must be an int in [1, {min(H, W)}], got {grid!r}")
    pool_x, pool_y = (images, labels) if pool is None else pool
    pool_x = _check_images(pool_x)
    if pool_x.shape[1:] != (H, W):
        raise ValueError(f"pool images must be {H} x {W}, got {pool_x.shape[1:]}")
    pool_t = _as_distributions(pool_y, n_classes, len(pool_x))
    own_t = _as_distributions(labels, n_classes, n)
    out = np.empty((n, H, W), np.float32)
    targets = np.empty((n, n_classes))
    for size in np.unique(g):  # one pass per grid size
        rows = np.flatnonzero(g == size)
        m = len(rows)
        pick = rng.integers(0, len(pool_x), (m, size * size))
        tiles = pool_x[pick]  # (m, size * size, H, W); tile (0, 0) is the image itself
        tiles[:, 0] = images[rows]
        t = pool_t[pick]
        t[:, 0] = own_t[rows]
        out[rows] = _tile(tiles.reshape(m, size, size, H, W))
        w = falloff(np.full(m * size * size, 1.0 / size))
        targets[rows] = soft_targets(t.reshape(-1, n_classes), w, n_classes).reshape(
            m, size * size, n_classes).mean(axis=1)
    return out, targets


def _tile(tiles):
    """(m, n, n, H, W) tiles -> (m, H, W) mosaics: tile (a, b) at scale 1/n filling cell (a, b).
    A tile's ink lands in its cell only: each is resampled onto a cell-sized patch (the
    resampling matrices' nonzero rows) and the patches are added in place."""
    m, n, _, H, W = tiles.shape
    rows, r0 = _cell_matrices(H, n)
    cols, c0 = _cell_matrices(W, n)
    h, w = rows.shape[1], cols.shape[1]
    patches = np.einsum("ahk,mabkl,bwl->mabhw", rows, tiles, cols, optimize=True)
    out = np.zeros((m, H + h, W + w), np.float32)  # room for the last cells' overhang
    for a in range(n):
        for b in range(n):
            out[:, r0[a]:r0[a] + h, c0[b]:c0[b] + w] += patches[:, a, b]
    out = out[:, :H, :W]
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _cell_matrices(size, n):
    """Area resampling by 1/n into each of n cells along one axis: (n, patch, size) matrices
    (the rows of the full matrix the cell can touch) and each patch's first row."""
    full = _resampling(size, size, np.full(n, 1.0 / n), (np.arange(n) + 0.5) * size / n,
                       np.full(n, size / 2))
    starts = np.floor(np.arange(n) * size / n).astype(np.int64)
    patch = -(-size // n) + 1
    padded = np.zeros((n, size + patch, size), np.float32)
    padded[:, :size] = full
    return np.stack([padded[a, s:s + patch] for a, s in enumerate(starts)]), starts


def composite(images: npt.ArrayLike, labels: npt.ArrayLike, n_classes: int = 10,
              grid: npt.ArrayLike | None = None, rng: int | np.random.Generator | None = None,
              falloff: Falloff = DEFAULT_FALLOFF,
              pool: tuple[np.ndarray | Sequence[Any], npt.ArrayLike] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Each full-size digit over a mosaic background of other digits (the background's first
    tile is also drawn from the pool), ink combined by the pixel-wise maximum. The target is
    the foreground's label. Returns (images, targets)."""
    images = _check_images(images)
    rng = _rng(rng)
    pool = (images, labels) if pool is None else pool
    first = rng.integers(0, len(pool[0]), len(images))
    pool_y = np.asarray(pool[1])
    background, _ = mosaic(np.asarray(pool[0])[first], pool_y[first], n_classes, grid, rng,
                           falloff, pool)
    return (np.maximum(images, background).astype(np.float32),
            _as_distributions(labels, n_classes, len(images)))


@dataclass(frozen=True)
class Augmenter:
    """Replaces a ``fraction`` of every batch by transformed copies: each chosen image gets one
    transform drawn uniformly from those enabled (``"zoom"``: zoom out or zoom in; ``"mosaic"``:
    mosaic or composite). ``shape`` is the images' (height, width)."""

    transforms: tuple
    shape: tuple
    n_classes: int = 10
    fraction: float = 0.5
    falloff: Falloff = DEFAULT_FALLOFF

    def __post_init__(self):
        names = tuple(self.transforms)
        bad = [t for t in names if t not in TRANSFORMS]
        if not names or bad:
            raise ValueError(f"augment must name some of {TRANSFORMS}, got {self.transforms!r}")
        object.__setattr__(self, "transforms", names)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"augment_fraction must be in (0, 1], got {self.fraction}")
        shape = tuple(self.shape)
        if len(shape) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in shape):
            raise ValueError(f"shape must be (height, width), got {self.shape!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def _ops(self):
        ops = []
        if "zoom" in self.transforms:
            ops += [zoom_out, zoom_in]
        if "mosaic" in self.transforms:
            ops += [mosaic, composite]
        return ops

    def __call__(self, x: np.ndarray, y: npt.ArrayLike,
                 rng: int | np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, H*W) float32, soft targets (n, C) float64) for flat inputs x and int or soft
        labels y. Unchosen rows keep their image and label."""
        rng = _rng(rng)
        n = len(x)
        targets = _as_distributions(y, self.n_classes, n)
        chosen = np.flatnonzero(rng.random(n) < self.fraction)
        if not len(chosen):
            return x, targets
        images = np.asarray(x, np.float32).reshape(n, *self.shape)
        pool = (images, targets)
        out = images.copy()
        which = rng.integers(0, len(self._ops), len(chosen))
        for k, op in enumerate(self._ops):
            rows = chosen[which == k]
            if len(rows):
                kwargs = {"pool": pool} if op in (mosaic, composite) else {}
                out[rows], targets[rows] = op(images[rows], targets[rows], self.n_classes,
                                              rng=rng, falloff=self.falloff, **kwargs)
        return out.reshape(n, -1), targets

    def to_dict(self) -> dict[str, Any]:
        return {"transforms": list(self.transforms), "shape": list(self.shape),
                "n_classes": self.n_classes, "fraction": self.fraction,
                "falloff": dataclasses.asdict(self.falloff)}
