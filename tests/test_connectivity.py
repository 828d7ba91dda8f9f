import numpy as np
import pytest
import scipy.sparse as sp

import sparsefan as sf
from sparsefan import Connectivity


def rows_of(conn):
    return [conn.row(j).tolist() for j in range(conn.n_out)]


def assert_valid_fixed(conn, n_in, n_out, k):
    assert conn.n_in == n_in and conn.n_out == n_out and conn.k == k
    assert conn.indices.dtype == np.int32 and conn.indptr.dtype == np.int64
    for r in rows_of(conn):
        assert len(set(r)) == k and min(r) >= 0 and max(r) < n_in
        assert r == sorted(r)


@pytest.mark.parametrize("ctor", ["random", "partitions"])
def test_random_and_partition_tables_are_valid_and_seeded(ctor):
    make = getattr(Connectivity, ctor)
    a = make(100, 230, 9, seed=3)
    assert_valid_fixed(a, 100, 230, 9)
    assert a == make(100, 230, 9, seed=3)
    assert a != make(100, 230, 9, seed=4)


def test_random_rows_are_uniform_subsets():
    # every input equally likely: out-degrees concentrate around n_out * k / n_in
    conn = Connectivity.random(20, 20000, 3, seed=0)
    deg = conn.out_degree()
    expected = 20000 * 3 / 20
    assert np.all(np.abs(deg - expected) < 5 * np.sqrt(expected))
    # every pair equally likely too (Floyd's algorithm is exact, not just marginally uniform)
    pairs = np.zeros((20, 20))
    for r in rows_of(conn):
        for a in r:
            for b in r:
                if a != b:
                    pairs[a, b] += 1
    off = pairs[~np.eye(20, dtype=bool)]
    assert np.abs(off - off.mean()).max() < 5 * np.sqrt(off.mean())


@pytest.mark.parametrize("n_in,n_out,k", [(784, 1568, 28), (100, 57, 7), (10, 3, 10), (13, 40, 4)])
def test_partitions_out_degrees_within_one(n_in, n_out, k):
    conn = Connectivity.partitions(n_in, n_out, k, seed=1)
    assert_valid_fixed(conn, n_in, n_out, k)
    deg = conn.out_degree()
    assert deg.max() - deg.min() <= 1
    assert deg.sum() == n_out * k


def test_partitions_first_round_is_disjoint_when_k_divides():
    conn = Connectivity.partitions(60, 10, 6, seed=0)
    first = np.concatenate(rows_of(conn))
    assert sorted(first.tolist()) == list(range(60))


@pytest.mark.parametrize("shape", [(28, 28), (10, 12, 3), (5, 1)])
def test_gaussian_reads_nearby_inputs(shape):
    n_in = int(np.prod(shape))
    k = min(9, n_in)
    conn = Connectivity.gaussian(shape, 50, k, sigma=1.5, seed=0)
    assert_valid_fixed(conn, n_in, 50, k)
    assert conn == Connectivity.gaussian(shape, 50, k, sigma=1.5, seed=0)
    H, W = shape[:2]
    C = shape[2] if len(shape) == 3 else 1
    for r in rows_of(conn):
        pix = np.array(r) // C
        h, w = pix // W, pix % W
        # a gaussian blob: the pixels of a row span a small window
        assert np.ptp(h) <= 2 * int(np.ceil(3 * 1.5)) and np.ptp(w) <= 2 * int(np.ceil(3 * 1.5))


def test_gaussian_with_given_centres_follows_them():
    centres = np.array([[0.0, 0.0], [27.0, 27.0], [14.0, 3.0]])
    conn = Connectivity.gaussian((28, 28), 3, 5, sigma=1.0, centres=centres, seed=0)
    for j, (ch, cw) in enumerate(centres):
        pix = conn.row(j)
        d = np.hypot(pix // 28 - ch, pix % 28 - cw)
        assert d.max() <= 4


def test_gaussian_prefers_the_centre():
    conn = Connectivity.gaussian((21, 21), 2000, 1, sigma=2.0,
                                 centres=np.full((2000, 2), 10.0), seed=0)
    pix = conn.indices
    d2 = (pix // 21 - 10) ** 2 + (pix % 21 - 10) ** 2
    # the centre pixel has the largest single probability: 1 / sum exp(-d^2/8) ~ 1/(8*pi)
    freq = np.mean(d2 == 0)
    assert 0.02 < freq < 0.06


def test_identity_and_dense():
    assert rows_of(Connectivity.identity(4)) == [[0], [1], [2], [3]]
    assert rows_of(Connectivity.dense(3, 2)) == [[0, 1, 2], [0, 1, 2]]


def test_transpose_lists_every_reader():
    conn = Connectivity.from_rows(5, [[3, 1], [], [1, 4, 0], [1]])
    t = conn.transpose()
    assert t.indptr.tolist() == [0, 1, 4, 4, 5, 6]
    readers = {i: [(int(t.rows[q]), int(t.slots[q])) for q in range(t.indptr[i], t.indptr[i + 1])]
               for i in range(5)}
    assert readers == {0: [(2, 4)], 1: [(0, 1), (2, 2), (3, 5)], 2: [], 3: [(0, 0)], 4: [(2, 3)]}
    assert conn.transpose() is t  # cached


def test_transpose_matches_scipy_on_a_random_table():
    conn = Connectivity.random(50, 70, 6, seed=2)
    t = conn.transpose()
    m = conn.to_scipy(np.arange(conn.nnz, dtype=np.int64)).T.tocsr()
    m.sort_indices()
    for i in range(50):
        slots = sorted(t.slots[t.indptr[i]:t.indptr[i + 1]].tolist())
        assert slots == sorted(m.data[m.indptr[i]:m.indptr[i + 1]].tolist())
        assert all(conn.indices[s] == i for s in slots)


def test_degree_statistics():
    conn = Connectivity.from_rows(4, [[0, 1], [1], [1, 2, 3]])
    assert conn.fan_in().tolist() == [2, 1, 3]
    assert conn.out_degree().tolist() == [1, 3, 1, 1]
    assert conn.k is None
    s = conn.degree_stats()
    assert (s["fan_in_min"], s["fan_in_max"], s["out_degree_max"]) == (1, 3, 3)
    assert s["out_degree_mean"] == 1.5


def test_compose_is_the_boolean_product():
    first = Connectivity.random(30, 20, 4, seed=0)
    second = Connectivity.random(20, 10, 3, seed=1)
    fields = second.compose(first)
    assert fields.n_in == 30 and fields.n_out == 10
    for j in range(10):
        expect = sorted(set(np.concatenate([first.row(m) for m in second.row(j)]).tolist()))
        assert fields.row(j).tolist() == expect
    with pytest.raises(ValueError, match="first has n_out=10 but this table reads n_in=30"):
        first.compose(second.compose(first))


def test_scipy_round_trip_keeps_row_order():
    conn = Connectivity.from_rows(6, [[5, 0, 2], [1], []])
    m = conn.to_scipy()
    assert isinstance(m, sp.csr_array) and m.shape == (3, 6)
    assert Connectivity.from_scipy(m) == conn
    assert Connectivity.from_scipy(sp.csr_matrix(m.toarray())) == Connectivity.from_rows(
        6, [[0, 2, 5], [1], []])


def test_tables_are_read_only():
    conn = Connectivity.random(10, 5, 2, seed=0)
    with pytest.raises(ValueError):
        conn.indices[0] = 1
    with pytest.raises(ValueError):
        conn.indptr[0] = 1


# -- bad tables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_in,indptr,indices,exc,match", [
    (5, [0, 2], [0, 5], ValueError, r"indices must lie in \[0, n_in=5\), found 5"),
    (5, [0, 2], [-1, 2], ValueError, r"indices must lie in \[0, n_in=5\), found -1"),
    (5, [0, 2, 1], [0, 1], ValueError, "indptr must be non-decreasing"),
    (5, [1, 2], [0, 1], ValueError, r"indptr\[0\] must be 0"),
    (5, [0, 3], [0, 1], ValueError, r"indptr\[-1\] must equal len\(indices\)"),
    (5, [0, 2], [3, 3], ValueError, "row 0 reads input 3 more than once"),
    (5, [0], [], ValueError, "indptr must have n_out"),
    (5, [0, 2], [0.5, 1.0], TypeError, "indices must hold integers"),
    (5, [[0, 2]], [0, 1], ValueError, "indptr must be one-dimensional"),
    (0, [0, 0], [], ValueError, "n_in must be >= 1"),
    (2.0, [0, 0], [], TypeError, "n_in must be an int"),
    (2**31, [0, 0], [], ValueError, "n_in must be < 2\\*\\*31"),
    (5, [0, 1], [2**40], ValueError, r"indices must lie in"),
])
def test_bad_tables_are_rejected(n_in, indptr, indices, exc, match):
    with pytest.raises(exc, match=match):
        Connectivity(n_in, indptr, indices)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: Connectivity.random(5, 3, 6), ValueError, "k must be <= n_in = 5"),
    (lambda: Connectivity.random(5, 3, 0), ValueError, "k must be >= 1"),
    (lambda: Connectivity.partitions(5, 0, 2), ValueError, "n_out must be >= 1"),
    (lambda: Connectivity.gaussian((4,), 3, 2), ValueError, "shape must be"),
    (lambda: Connectivity.gaussian((4, 4), 3, 17), ValueError, "k must be <= H\\*W\\*C = 16"),
    (lambda: Connectivity.gaussian((4, 4), 3, 2, sigma=0), ValueError, "sigma must be"),
    (lambda: Connectivity.gaussian((4, 4), 3, 2, centres=np.zeros((2, 2))), ValueError,
     r"centres must have shape \(3, 2\)"),
    (lambda: Connectivity.from_scipy(np.eye(3)), TypeError, "matrix must be a scipy.sparse"),
    (lambda: Connectivity.identity(3).compose("x"), TypeError, "first must be a Connectivity"),
])
def test_bad_constructor_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
