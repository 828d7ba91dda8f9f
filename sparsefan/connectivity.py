"""Connectivity: which input units each output unit reads, as a CSR index table.

Row ``j`` of the table lists the input units that output unit ``j`` reads, in *slot* order:
slot ``t`` of row ``j`` is connection ``p = indptr[j] + t``, and the FanIn layer's weight block
``W[p]`` belongs to that connection. Rows need not be sorted (the constructors here emit sorted
rows); a row must not read the same input twice. Rows may be ragged (variable fan-in) and may be
empty (the unit then outputs its bias).

Index dtypes: ``indices`` are int32 (so ``n_in`` < 2**31); ``indptr`` is int64 (so the number of
connections may exceed 2**31). Both arrays are read-only: training never rewires a network.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import scipy.sparse

INDEX_DTYPE = np.dtype(np.int32)
INDPTR_DTYPE = np.dtype(np.int64)
_MAX_INDEX = np.iinfo(np.int32).max


class Transposed(NamedTuple):
    """The transposed table: per input unit ``i``, the connections that read it.

    For ``q`` in ``indptr[i] .. indptr[i+1]``, connection ``slots[q]`` (an index into the forward
    table's ``indices`` and the layer's weights) of output row ``rows[q]`` reads input ``i``.
    Within an input, entries are in increasing connection order.
    """

    indptr: np.ndarray  # int64 [n_in + 1]
    rows: np.ndarray  # int32 [nnz]
    slots: np.ndarray  # int64 [nnz]


def _as_index_array(value: npt.ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype.name}")
    return arr


def _readonly(arr, dtype):
    out = np.array(arr, dtype=dtype, copy=True, order="C")
    out.flags.writeable = False
    return out


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_size(n_in, n_out, k):
    """Refuse a table too large to address before anything is allocated: n_in and n_out below
    2**31, and at most 2**31 - 1 connections (Python ints: no wrap-around)."""
    if n_in > _MAX_INDEX:
        raise ValueError(f"n_in must be < 2**31 (indices are int32), got {n_in}")
    if n_out > _MAX_INDEX:
        raise ValueError(f"n_out must be < 2**31, got {n_out}")
    if n_out * k > _MAX_INDEX:
        raise ValueError(f"n_out * k = {n_out} * {k} connections is more than a table holds "
                         f"(2**31 - 1)")


def _rng(seed):
    return np.random.default_rng(seed)


def grid_centres(H: int, W: int, n: int) -> np.ndarray:
    """Centres (row, col) of ``n`` units spread evenly over an H x W image: the cells of a
    ``gh x gw`` grid, ``gh = round(sqrt(n H / W))``, ``gw = ceil(n / gh)``, row-major, first n."""
    gh = max(1, min(n, round(math.sqrt(n * H / W))))
    gw = math.ceil(n / gh)
    a, b = np.divmod(np.arange(n), gw)
    return np.stack([(a + 0.5) * H / gh - 0.5, (b + 0.5) * W / gw - 0.5], axis=1)


class Connectivity:
    """A validated CSR index table with ``n_out`` rows over ``n_in`` input units.

    Parameters
    ----------
    n_in : int
        Number of input units (>= 1, < 2**31).
    indptr : array of int, shape (n_out + 1,)
        Row pointers: ``indptr[0] == 0``, non-decreasing, ``indptr[-1] == len(indices)``.
    indices : array of int, shape (nnz,)
        Input unit of each connection, in ``[0, n_in)``, no repeats within a row.
    """

    __slots__ = ("n_in", "n_out", "indptr", "indices", "_transposed")

    def __init__(self, n_in: int, indptr: npt.ArrayLike, indices: npt.ArrayLike) -> None:
        n_in = _check_int(n_in, "n_in", 1)
        indptr = _as_index_array(indptr, "indptr")
        indices = _as_index_array(indices, "indices")
        if indptr.size < 2:
            raise ValueError("indptr must have n_out + 1 >= 2 entries")
        _check_size(n_in, indptr.size - 1, 0)
        if indices.size > _MAX_INDEX:
            raise ValueError(f"a table holds at most 2**31 - 1 connections, got {indices.size}")
        if indptr[0] != 0:
            raise ValueError(f"indptr[0] must be 0, got {indptr[0]}")
        if np.any(np.diff(indptr.astype(np.int64)) < 0):
            raise ValueError("indptr must be non-decreasing")
        if indptr[-1] != indices.size:
            raise ValueError(
                f"indptr[-1] must equal len(indices) = {indices.size}, got {indptr[-1]}"
            )
        if indices.size:
            lo, hi = indices.min(), indices.max()
            if lo < 0 or hi >= n_in:
                bad = lo if lo < 0 else hi
                raise ValueError(f"indices must lie in [0, n_in={n_in}), found {bad}")
        self.n_in: int = n_in
        self.n_out: int = indptr.size - 1
        self.indptr: np.ndarray = _readonly(indptr, INDPTR_DTYPE)
        self.indices: np.ndarray = _readonly(indices, INDEX_DTYPE)
        self._transposed: Transposed | None = None
        self._check_no_repeats()

    def _check_no_repeats(self):
        if self.nnz < 2:
            return
        key = self.row_of_connection().astype(np.int64) * self.n_in + self.indices
        key.sort()
        dup = np.flatnonzero(key[1:] == key[:-1])
        if dup.size:
            row, col = divmod(int(key[dup[0]]), self.n_in)
            raise ValueError(f"indices: row {row} reads input {col} more than once")

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, n_in: int, indptr: npt.ArrayLike,
                    indices: npt.ArrayLike) -> Connectivity:
        """The table given by user-supplied ``indptr`` / ``indices`` (validated, copied)."""
        return cls(n_in, indptr, indices)

    @classmethod
    def from_rows(cls, n_in: int, rows: Iterable[npt.ArrayLike]) -> Connectivity:
        """The table whose row ``j`` is the sequence ``rows[j]`` (rows may differ in length)."""
        rows = [_as_index_array(np.asarray(r).reshape(-1), f"rows[{j}]").astype(np.int64)
                for j, r in enumerate(rows)]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([r.size for r in rows], out=indptr[1:])  # type: ignore[union-attr]
        indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return cls(n_in, indptr, indices)

    @classmethod
    def _fixed(cls, n_in, table):
        n_out, k = table.shape
        indptr = np.arange(n_out + 1, dtype=np.int64) * k
        return cls(n_in, indptr, np.sort(table, axis=1).reshape(-1))

    @classmethod
    def identity(cls, n: int) -> Connectivity:
        """Unit ``j`` reads unit ``j``: a per-unit (pointwise) layer over ``n`` units."""
        n = _check_int(n, "n", 1)
        _check_size(n, n, 1)
        return cls._fixed(n, np.arange(n).reshape(n, 1))

    @classmethod
    def dense(cls, n_in: int, n_out: int) -> Connectivity:
        """Every output reads every input (a dense layer as a FanIn; k = n_in)."""
        n_in, n_out = _check_int(n_in, "n_in", 1), _check_int(n_out, "n_out", 1)
        _check_size(n_in, n_out, n_in)
        return cls._fixed(n_in, np.broadcast_to(np.arange(n_in), (n_out, n_in)))

    @classmethod
    def random(cls, n_in: int, n_out: int, k: int,
               seed: int | np.random.Generator | None = None) -> Connectivity:
        """Each output reads ``k`` distinct inputs chosen uniformly at random (rows sorted).

        Uses Floyd's subset algorithm vectorized over rows: exact uniform k-subsets,
        O(n_out * k^2) time and no O(n_out * n_in) memory.
        """
        n_in, n_out = _check_int(n_in, "n_in", 1), _check_int(n_out, "n_out", 1)
        k = _check_int(k, "k", 1)
        if k > n_in:
            raise ValueError(f"k must be <= n_in = {n_in}, got {k}")
        _check_size(n_in, n_out, k)
        rng = _rng(seed)
        table = np.empty((n_out, k), dtype=np.int64)
        for col, top in enumerate(range(n_in - k, n_in)):
            pick = rng.integers(0, top + 1, size=n_out)
            taken = (table[:, :col] == pick[:, None]).any(axis=1)
            table[:, col] = np.where(taken, top, pick)
        return cls._fixed(n_in, table)

    @classmethod
    def partitions(cls, n_in: int, n_out: int, k: int,
                   seed: int | np.random.Generator | None = None) -> Connectivity:
        """Rows cut from repeated random disjoint partitions of the inputs into groups of ``k``.

        Groups of ``k`` are cut in order from a stream of independent random permutations of
        the inputs. When ``k`` divides ``n_in`` every permutation is a partition into
        ``n_in / k`` disjoint groups. Otherwise the ``r = n_in mod k`` inputs left at the end of a
        permutation form a group with the first ``k - r`` inputs of the next permutation that
        are not among them (so no row repeats an input), and that next permutation continues
        without those. Every input appears exactly once per permutation consumed, so all
        out-degrees are within 1 of each other.
        """
        n_in, n_out = _check_int(n_in, "n_in", 1), _check_int(n_out, "n_out", 1)
        k = _check_int(k, "k", 1)
        if k > n_in:
            raise ValueError(f"k must be <= n_in = {n_in}, got {k}")
        _check_size(n_in, n_out, k)
        rng = _rng(seed)
        groups = []
        n_rows = 0
        rest = np.zeros(0, dtype=np.int64)
        while n_rows < n_out:
            perm = rng.permutation(n_in)
            if rest.size:
                fresh = perm[~np.isin(perm, rest)][: k - rest.size]
                groups.append(np.concatenate([rest, fresh])[None, :])
                n_rows += 1
                perm = perm[~np.isin(perm, fresh)]
            full = perm.size // k
            groups.append(perm[: full * k].reshape(full, k))
            n_rows += full
            rest = perm[full * k:]
        return cls._fixed(n_in, np.concatenate(groups)[:n_out])

    @classmethod
    def partition(cls, n_in: int, n_parts: int,
                  seed: int | np.random.Generator | None = None) -> Connectivity:
        """One random disjoint partition of the inputs into ``n_parts`` groups whose sizes
        differ by at most 1 (rows sorted). Every input is read exactly once."""
        n_in, n_parts = _check_int(n_in, "n_in", 1), _check_int(n_parts, "n_parts", 1)
        if n_parts > n_in:
            raise ValueError(f"n_parts must be <= n_in = {n_in}, got {n_parts}")
        _check_size(n_in, n_parts, 1)
        rows = [np.sort(r) for r in np.array_split(_rng(seed).permutation(n_in), n_parts)]
        return cls.from_rows(n_in, rows)

    @classmethod
    def gaussian(cls, shape: Sequence[int], n_out: int, k: int, sigma: float | None = None,
                 centres: npt.ArrayLike | None = None,
                 seed: int | np.random.Generator | None = None,
                 chunk: int = 4096) -> Connectivity:
        """Each output reads ``k`` distinct inputs near its centre on an image grid.

        Parameters
        ----------
        shape : (H, W) or (H, W, C)
            The input grid; input unit index is ``(h * W + w) * C + c`` (row-major).
        n_out : int
            Number of output units.
        k : int
            Inputs per output unit (1 <= k <= H*W*C).
        sigma : float, optional
            Gaussian width in pixels. Default ``sqrt(k / (pi * C))``: the radius of a disc
            holding about k inputs.
        centres : array (n_out, 2), optional
            Centre (row, col) of each unit in pixel coordinates (may be fractional). Default:
            the cells of a regular ``gh x gw`` grid spread evenly over the image, row-major,
            ``gh = round(sqrt(n_out * H / W))``, ``gw = ceil(n_out / gh)``; the first n_out cells.

        Inputs are drawn without replacement with probability proportional to
        ``exp(-d^2 / (2 sigma^2))`` (d = distance of the pixel from the centre; every channel of a
        pixel has the pixel's weight), via Gumbel top-k, which is exactly sequential sampling
        without replacement. Candidates are truncated at the image border and to a window of
        radius ``max(ceil(3 sigma), r_k)`` around the centre, where r_k is the smallest radius
        whose window holds k inputs even in a corner.
        """
        shape = tuple(shape) if not isinstance(shape, (int, np.integer)) else (shape,)
        if len(shape) not in (2, 3):
            raise ValueError(f"shape must be (H, W) or (H, W, C), got {shape}")
        H = _check_int(shape[0], "shape[0]", 1)
        W = _check_int(shape[1], "shape[1]", 1)  # type: ignore[misc]  # (shape,): refused above
        C = _check_int(shape[2], "shape[2]", 1) if len(shape) == 3 else 1
        n_in = H * W * C
        n_out = _check_int(n_out, "n_out", 1)
        k = _check_int(k, "k", 1)
        if k > n_in:
            raise ValueError(f"k must be <= H*W*C = {n_in}, got {k}")
        _check_size(n_in, n_out, k)
        if sigma is None:
            sigma = math.sqrt(k / (math.pi * C))
        sigma = float(sigma)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        if centres is None:
            centres = grid_centres(H, W, n_out)
        else:
            centres = np.asarray(centres, dtype=np.float64)
            if centres.shape != (n_out, 2):
                raise ValueError(f"centres must have shape ({n_out}, 2), got {centres.shape}")
            if not np.isfinite(centres).all():
                raise ValueError("centres contains NaN or Inf")
        # Window radius: wide enough for the gaussian and for k inputs at a corner.
        radius = max(1, math.ceil(3 * sigma))
        while (radius + 1) ** 2 * C < k and (radius < H or radius < W):
            radius += 1
        off = np.arange(-radius, radius + 1)
        dh, dw = [g.reshape(-1) for g in np.meshgrid(off, off, indexing="ij")]
        rng = _rng(seed)
        table = np.empty((n_out, k), dtype=np.int64)
        base = np.clip(np.rint(centres), [0, 0], [H - 1, W - 1]).astype(np.int64)
        for r0 in range(0, n_out, chunk):
            r1 = min(n_out, r0 + chunk)
            ph = base[r0:r1, 0:1] + dh  # (rows, window)
            pw = base[r0:r1, 1:2] + dw
            inside = (ph >= 0) & (ph < H) & (pw >= 0) & (pw < W)
            d2 = (ph - centres[r0:r1, 0:1]) ** 2 + (pw - centres[r0:r1, 1:2]) ** 2
            logw = np.where(inside, -d2 / (2 * sigma * sigma), -np.inf)
            pix = (np.clip(ph, 0, H - 1) * W + np.clip(pw, 0, W - 1)) * C
            # Expand pixels to their channels; each channel draws its own Gumbel key.
            logw = np.repeat(logw, C, axis=1)
            cand = (np.repeat(pix, C, axis=1) + np.tile(np.arange(C), pix.shape[1])[None, :])
            keys = logw + rng.gumbel(size=logw.shape)
            top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
            if not np.isfinite(np.take_along_axis(keys, top, axis=1)).all():
                raise ValueError("gaussian: fewer than k inputs in a unit's window")
            table[r0:r1] = np.take_along_axis(cand, top, axis=1)
        return cls._fixed(n_in, table)

    @classmethod
    def gaussian_points(cls, in_points: npt.ArrayLike, out_points: npt.ArrayLike, k: int,
                        sigma: float,
                        seed: int | np.random.Generator | None = None) -> Connectivity:
        """Each output reads ``k`` distinct inputs near it, for inputs and outputs at given
        positions (for example the centres of a previous layer's units).

        in_points (n_in, d), out_points (n_out, d). Inputs are drawn without replacement with
        probability proportional to ``exp(-d^2 / (2 sigma^2))`` among each output's
        ``max(4k, expected count within 3 sigma)`` nearest inputs (a k-d tree query), by Gumbel
        top-k.
        """
        from scipy.spatial import cKDTree

        in_points = np.asarray(in_points, dtype=np.float64)
        out_points = np.asarray(out_points, dtype=np.float64)
        if in_points.ndim != 2 or out_points.ndim != 2 or in_points.shape[1] != out_points.shape[1]:
            raise ValueError("in_points and out_points must be (n, d) arrays with the same d")
        if not (np.isfinite(in_points).all() and np.isfinite(out_points).all()):
            raise ValueError("points contain NaN or Inf")
        n_in, n_out = len(in_points), len(out_points)
        if n_in < 1 or n_out < 1:
            raise ValueError("in_points and out_points must not be empty")
        k = _check_int(k, "k", 1)
        if k > n_in:
            raise ValueError(f"k must be <= n_in = {n_in}, got {k}")
        _check_size(n_in, n_out, k)
        sigma = float(sigma)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        tree = cKDTree(in_points)
        # expected number of inputs within 3 sigma, from the mean density in 2-D
        span = np.ptp(in_points, axis=0).prod() if in_points.shape[1] == 2 else 0
        dens = n_in / span if span > 0 else 0.0
        n_cand = int(min(n_in, max(4 * k, math.ceil(dens * math.pi * 9 * sigma * sigma))))
        dist, cand = tree.query(out_points, k=n_cand)
        dist, cand = dist.reshape(n_out, n_cand), cand.reshape(n_out, n_cand)
        rng = _rng(seed)
        keys = -dist ** 2 / (2 * sigma * sigma) + rng.gumbel(size=dist.shape)
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        return cls._fixed(n_in, np.take_along_axis(cand, top, axis=1))

    # -- interop -------------------------------------------------------------------------------

    @classmethod
    def from_scipy(cls, matrix: scipy.sparse.sparray | scipy.sparse.spmatrix) -> Connectivity:
        """The pattern of a ``scipy.sparse`` matrix of shape (n_out, n_in); values are ignored.

        Explicitly stored zeros count as connections; the row order of stored entries is kept.
        """
        import scipy.sparse as sp

        if not sp.issparse(matrix):
            raise TypeError(f"matrix must be a scipy.sparse matrix, got {type(matrix).__name__}")
        csr = sp.csr_array(matrix)
        return cls(csr.shape[1], csr.indptr, csr.indices)

    def to_scipy(self, data: npt.ArrayLike | None = None) -> scipy.sparse.csr_array:
        """A ``scipy.sparse.csr_array`` of shape (n_out, n_in) with this pattern.

        ``data`` (nnz,) gives the values (default: ones, float32).
        """
        import scipy.sparse as sp

        if data is None:
            data = np.ones(self.nnz, dtype=np.float32)
        data = np.asarray(data)
        if data.shape != (self.nnz,):
            raise ValueError(f"data must have shape ({self.nnz},), got {data.shape}")
        return sp.csr_array(
            (data, self.indices.copy(), self.indptr.copy()), shape=(self.n_out, self.n_in)
        )

    # -- structure -----------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        """Number of connections (= number of weight blocks of a FanIn layer)."""
        return int(self.indptr[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_out, self.n_in)

    def fan_in(self) -> np.ndarray:
        """int64 array (n_out,): how many inputs each output unit reads."""
        return np.diff(self.indptr)

    @property
    def k(self) -> int | None:
        """The fan-in if every row has the same length, else None (ragged)."""
        f = self.fan_in()
        return int(f[0]) if f.size and (f == f[0]).all() else None

    def out_degree(self) -> np.ndarray:
        """int64 array (n_in,): how many output units read each input."""
        return np.bincount(self.indices, minlength=self.n_in).astype(np.int64)

    def degree_stats(self) -> dict[str, int | float]:
        """Min / mean / max of the fan-in (per output) and of the out-degree (per input)."""
        f, d = self.fan_in(), self.out_degree()
        return {
            "fan_in_min": int(f.min()), "fan_in_mean": float(f.mean()), "fan_in_max": int(f.max()),
            "out_degree_min": int(d.min()), "out_degree_mean": float(d.mean()),
            "out_degree_max": int(d.max()),
        }

    def is_identity(self) -> bool:
        """True when unit j reads input j alone, for every j (a per-unit layer)."""
        return (self.n_in == self.n_out and self.nnz == self.n_out
                and np.array_equal(self.indptr, np.arange(self.n_out + 1))
                and np.array_equal(self.indices, np.arange(self.n_out)))

    def row(self, j: int) -> np.ndarray:
        """The inputs that output unit ``j`` reads, in slot order (read-only view)."""
        return self.indices[self.indptr[j]: self.indptr[j + 1]]

    def row_of_connection(self) -> np.ndarray:
        """int32 array (nnz,): the output row of each connection."""
        return np.repeat(np.arange(self.n_out, dtype=np.int32), self.fan_in())

    def transpose(self) -> Transposed:
        """The :class:`Transposed` table (computed once and cached)."""
        if self._transposed is None:
            slots = np.argsort(self.indices, kind="stable").astype(np.int64)
            rows = self.row_of_connection()[slots]
            indptr = np.zeros(self.n_in + 1, dtype=np.int64)
            np.cumsum(self.out_degree(), out=indptr[1:])
            t = Transposed(_readonly(indptr, np.int64), _readonly(rows, np.int32),
                           _readonly(slots, np.int64))
            self._transposed = t
        return self._transposed

    def compose(self, first: Connectivity) -> Connectivity:
        """Receptive fields of the two-layer stack ``self`` after ``first``.

        ``first`` maps n_in -> m units and ``self`` maps m -> n_out. Row ``j`` of the result is the
        sorted set of original inputs that reach unit ``j``: the boolean product of the tables.
        """
        if not isinstance(first, Connectivity):
            raise TypeError(f"first must be a Connectivity, got {type(first).__name__}")
        if first.n_out != self.n_in:
            raise ValueError(
                f"first has n_out={first.n_out} but this table reads n_in={self.n_in} units"
            )
        prod = (self.to_scipy(np.ones(self.nnz, np.int64)) @
                first.to_scipy(np.ones(first.nnz, np.int64)))
        prod.sort_indices()
        prod = prod.tocsr()
        return Connectivity(first.n_in, prod.indptr, prod.indices)

    # -- dunder --------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Connectivity):
            return NotImplemented
        return (self.n_in == other.n_in and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.indices, other.indices))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        k = self.k
        fan = f"k={k}" if k is not None else f"fan_in={self.fan_in().min()}..{self.fan_in().max()}"
        return f"Connectivity(n_in={self.n_in}, n_out={self.n_out}, {fan}, nnz={self.nnz})"
