"""Certified robustness: sound lower bounds on the perturbation needed to change a prediction.

L0 (number of changed pixels, each free to take any value in [0, 1]):

- ``vote``: D(i) = the output units whose receptive field contains input i. Changing the
  inputs S changes at most the units in the union of D(i), i in S. Against class c, a changed
  unit costs the vote margin n_y - n_c at most 2 if it votes y, 1 if it votes a third class and
  0 if it votes c. The cost of input i is the sum over D(i); the certificate at radius r needs
  the margin to exceed the sum of the r largest input costs, for every c. For disjoint
  partitions (every D(i) a single unit) this is the exact worst case.
- ``mean_prob``: a changed unit j moves p_jy - p_jc by at most 1 + p_jy - p_jc, i.e. the
  margin pbar_y - pbar_c by at most (1 + p_jy - p_jc) / M; input costs add up as above.
- ``mean_logits``: the per-pixel influence bound. For ReLU networks, changing input i by
  delta moves unit j's logit difference z_jy - z_jc by at most G_jyc(i) |delta|, where G is the
  backward pass of |W| through every layer starting from |W_head[:, :, y] - W_head[:, :, c]|
  (triangle inequality; ReLU is 1-Lipschitz; a MaxMin pair's outputs each move by at most
  the sum of its inputs' moves). A pixel can move by max(x_i, 1 - x_i); costs add
  over pixels and units. Data-independent, computed once per network.

L2: the margin S_y - S_c of mean logits is Lipschitz with constant at most K_yc, the
wiring-weighted chain bound of :mod:`sparsefan.lipschitz` (or the layer-product bound
||u_yc|| * prod_l sqrt(max_i sum_{j reads i} ||W_j||_2^2) where that is smaller). The certified
radius is min_c margin_c / K_yc.

Radii: the largest certified radius, -1 for a misclassified example. Ties in the aggregate go
to the lowest class index, and the certificates account for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sparsefan import _engine
from sparsefan import aggregate as agg
from sparsefan import lipschitz
from sparsefan._threads import resolve_n_threads

if TYPE_CHECKING:
    from sparsefan.network import Network


def _fields_csr(network):
    """(M, N) 0/1 sparse matrix: unit j reaches input i."""
    fields = network.receptive_fields()
    return fields.to_scipy(np.ones(fields.nnz))


def _top_sums(costs, r_max):
    """(r_max, ...) sums of the r = 1..r_max largest costs along axis 0."""
    return np.cumsum(-np.sort(-costs, axis=0)[:r_max], axis=0)


def _radius_from_costs(margins, costs, y, n_classes, max_radius):
    """Largest r with margin_c - (sum of the r largest costs_c) > 0 for all c != y (>= 0 is
    enough when y < c, as ties go to the lower class). margins (C, B), costs (N, C, B)."""
    N, C, B = costs.shape
    return _radius_from_cum(margins, _top_sums(costs, min(N, max_radius)), y)


def _radius_from_cum(margins, cum, y):
    """Largest r with margin_c - cum[r - 1, c] > 0 for all c != y (>= 0 when y < c); cum
    (r_max, C, B) nondecreasing in r: the most r changed pixels can move each margin."""
    r_max, C, B = cum.shape
    radius = np.full(B, r_max, dtype=np.int64)
    for c in range(C):
        m = margins[c]  # (B,) margin of y over c
        slack = m[None, :] - cum[:, c, :]  # after r = 1..r_max changes
        ok = slack > 0
        ok |= (slack >= 0) & (y < c)[None, :]
        # first failing r (1-based); certified up to r - 1
        fail = ~ok
        first = np.where(fail.any(axis=0), fail.argmax(axis=0), r_max)
        radius = np.minimum(radius, np.where(y == c, r_max, first))
    return radius


def _wins(margins, y):
    """Does y beat every class: margin > 0, or = 0 with y the lower index."""
    C, B = margins.shape
    ok = np.ones(B, bool)
    for c in range(C):
        ok &= (margins[c] > 0) | ((margins[c] >= 0) & (y <= c))
    return ok


def l0_radius(network: Network, x: np.ndarray | Sequence[Any], y: npt.ArrayLike,
              max_radius: int = 200, method: str | None = None, n_threads: int | None = None,
              refine: bool = True, room: str = "input") -> np.ndarray:
    """Certified L0 radius per example (int, -1 if misclassified). ``method`` defaults to the
    network's aggregate: "vote", "mean_prob" or "mean_logits". ``refine`` (default) charges
    each unit only the share of its effect an input can buy (see ``_unit_fractions``), where
    the network allows it; ``refine=False`` charges every unit in D(i) in full.

    ``room`` (mean_logits): how far a changed pixel can move — "input", max(x_i, 1 - x_i)
    (tighter), or "box", 1 for every pixel (data-independent: the certificate
    ``Network.predict_certified`` computes from precomputed tables)."""
    if room not in ("input", "box"):
        raise ValueError(f"room must be 'input' or 'box', got {room!r}")
    method = method or network.aggregate
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    y = np.asarray(y).astype(np.int64)
    Z = network.unit_logits(x, n_threads).astype(np.float64)  # (M, C, B)
    M, C, B = Z.shape
    cols = np.arange(B)
    if method == "mean_logits":
        if network.aggregate != "mean_logits":
            raise ValueError("the influence certificate is for mean_logits networks")
        S = Z.mean(axis=0)
        margins = S[y, cols][None, :] - S
        G = influence_bounds(network)  # (C, C, N)
        room = (np.maximum(x, 1 - x).T.astype(np.float64) if room == "input"
                else np.ones((x.shape[1], B)))  # (N, B)
        costs = G[y].transpose(2, 1, 0) * room[:, None, :]  # (N, C, B)
        r_max = min(x.shape[1], max_radius)
        cum = np.minimum(_top_sums(costs, r_max), _chain_cum(network, y, room ** 2, r_max))
        radius = _radius_from_cum(margins, cum, y)
        return np.where(_wins(margins, y), radius, -1)
    else:
        if method == "vote":
            if network.aggregate != "vote":
                raise ValueError("the vote certificate is for vote networks")
            win = Z.argmax(axis=1)  # (M, B)
            counts = np.stack([(win == c).sum(axis=0) for c in range(C)])  # (C, B)
            margins = (counts[y, cols][None, :] - counts).astype(np.float64)
            w = np.where(win[:, None, :] == y[None, None, :], 2.0,
                         np.where(win[:, None, :] == np.arange(C)[None, :, None], 0.0, 1.0))
        elif method == "mean_prob":
            if network.aggregate != "mean_prob":
                raise ValueError("the mean_prob certificate is for mean_prob networks")
            P = agg.softmax(Z, axis=1)
            pbar = P.mean(axis=0)
            margins = pbar[y, cols][None, :] - pbar
            w = (1.0 + P[:, y, cols][:, None, :] - P) / M  # (M, C, B)
        else:
            raise ValueError(f"method must be vote, mean_prob or mean_logits, got {method!r}")
        frac = _unit_fractions(network, x, Z, y, method) if refine else None
        if frac is None:
            F = _fields_csr(network).T.tocsr()  # (N, M)
            costs = (F @ w.reshape(M, C * B)).reshape(-1, C, B)
        else:
            # connection p = (unit j, input i) charges w_j * frac_p to input i
            conn = network.layers[0].connectivity
            owner = conn.row_of_connection()
            charge = w[owner] * frac  # (nnz, C, B)
            costs = np.zeros((network.n_in, C, B))
            np.add.at(costs, conn.indices, charge)
    radius = _radius_from_costs(margins, costs, y, C, max_radius)
    return np.where(_wins(margins, y), radius, -1)


def single_mixing_layer(network: Network) -> bool:
    """True when only the first layer mixes units: every later layer reads unit j from unit j
    (identity connectivity). Then each output unit is a function of its own receptive field
    through its own weights, and influences can be kept per (unit, input) connection."""
    return all(layer.connectivity.is_identity() for layer in network.layers[1:])


def connection_influence(network: Network) -> tuple[np.ndarray, np.ndarray]:
    """For single-mixing-layer ReLU networks: A (nnz, C, C) and A1 (nnz, C), where A[p, a, b]
    bounds |d(z_ja - z_jb)| and A1[p, m] bounds |d z_jm| per unit change of the input that
    connection p = (unit j, input i) reads. Products of |W| along the unit's own layers.
    Cached per weight state (``Network.derived``)."""
    return network.derived("connection_influence", _connection_influence)


def _connection_influence(network):
    layers = network.layers
    first, head = layers[0], layers[-1]
    C = network.n_classes
    Wh = head.weight.astype(np.float64)[:, :, :]  # (M, h, C): identity head, one block per unit
    pair = np.abs(Wh[:, :, :, None] - Wh[:, :, None, :])  # (M, h, C, C)
    single = np.abs(Wh)  # (M, h, C)
    for layer in reversed(layers[1:-1]):
        Wa = np.abs(layer.weight.astype(np.float64))  # (M, c_in, c_out)
        pair = np.einsum("mio,mocd->micd", Wa, pair)
        single = np.einsum("mio,moc->mic", Wa, single)
    owner = first.connectivity.row_of_connection()
    W0 = np.abs(first.weight.astype(np.float64))[:, 0, :]  # (nnz, h0), c_in = 1
    A = np.einsum("ph,phcd->pcd", W0, pair[owner])
    A1 = np.einsum("ph,phc->pc", W0, single[owner])
    return A, A1


def _unit_fractions(network, x, Z, y, method):
    """frac (nnz, C or 1, B) in [0, 1]: the share of unit j's worst-case effect on the margin
    against class c that changing connection p's input can buy; None when the network is not
    single-mixing-layer (then every unit in D(i) is charged in full).

    vote: unit j (voting v) changes its vote only if, for some m, the changed inputs move
    z_v - z_m by its margin z_v - z_m; so sum_{i in S} max_m A[p, v, m] room_i / margin_m >= 1
    for every unit that flips, and charging min(1, that ratio) per connection is sound.
    mean_prob: p_y - p_c of a unit moves by at most max_m |dz_m| (the softmax Jacobian has
    absolute row sums <= 1/2) <= sum_i max_m A1[p, m] room_i, and by at most its cap
    1 + p_y - p_c; min(a + b, cap) <= min(a, cap) + min(b, cap) makes the per-input charge
    cap * min(1, delta_p / cap) sound.
    """
    if not single_mixing_layer(network):
        return None
    if any(layer.activation not in (None, "relu") for layer in network.layers):
        return None
    A, A1 = connection_influence(network)
    conn = network.layers[0].connectivity
    owner = conn.row_of_connection()
    nnz = len(owner)
    room = np.maximum(x, 1 - x).astype(np.float64).T[conn.indices]  # (nnz, B)
    Zp = Z[owner]  # (nnz, C, B)
    if method == "vote":
        v = Zp.argmax(axis=1)  # (nnz, B): the unit's vote
        zv = np.take_along_axis(Zp, v[:, None, :], axis=1)  # (nnz, 1, B)
        margin = zv - Zp  # (nnz, C, B)
        Av = A[np.arange(nnz)[:, None], v].transpose(0, 2, 1)  # (nnz, C=m, B): |d(z_v - z_m)|
        need = Av * room[:, None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(margin > 0, need / margin, np.where(need > 0, np.inf, 0.0))
        is_v = np.arange(Z.shape[1])[None, :, None] == v[:, None, :]
        ratio = np.where(is_v, 0.0, ratio)
        return np.minimum(1.0, ratio.max(axis=1))[:, None, :]
    P = agg.softmax(Zp, axis=1)  # (nnz, C, B)
    cols = np.arange(Z.shape[2])
    cap = 1.0 + P[:, y, cols][:, None, :] - P  # (nnz, C, B)
    delta = (A1.max(axis=1)[:, None] * room)[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cap > 0, np.minimum(1.0, delta / cap), 0.0)


def _abs_weights(network):
    """|W| (float32, C-contiguous) of every layer below the head: the influence passes."""
    return [np.ascontiguousarray(np.abs(l.weight)) for l in network.layers[:-1]]


def influence_bounds(network: Network) -> np.ndarray:
    """G (C, C, N): G[y, c, i] bounds |d (S_y - S_c)| per unit change of input i, for mean
    logits S (see the module docstring). Computed with the C backward kernels on |W|, once
    per weight state (``Network.derived``)."""
    return network.derived("influence_bounds", _influence_bounds)


def _check_influence_activations(network):
    for layer in network.layers[:-1]:
        if layer.activation not in (None, "relu", "maxmin"):
            raise ValueError("influence bounds need ReLU, MaxMin or linear layers")


def _head_signal(network, weight, pairs):
    """(d, g): d (nnz, h, P) = W_head[:, :, a] - W_head[:, :, b] for pairs p = (a, b), g
    (n_in, h, P) the sum of |d| over the head's connections that read each input, / M."""
    head = network.layers[-1]
    d = weight[:, :, [a for a, _ in pairs]] - weight[:, :, [b for _, b in pairs]]
    if head.connectivity.is_identity():  # one connection per input, in order: no scatter
        return d, np.abs(d) / network.n_units
    g = np.zeros((head.n_in, head.c_in, len(pairs)), dtype=d.dtype)
    np.add.at(g, head.connectivity.indices, np.abs(d) / network.n_units)
    return d, g


def _pair_sum(t, layer):
    """MaxMin's bound on (units, channels, P): each output of a pair moves by at most the sum
    of its inputs' moves (a symmetric map: the same forward and backward)."""
    v = t.reshape(layer.n_out, -1, 2, t.shape[2])
    return np.ascontiguousarray(np.repeat(v.sum(axis=2, keepdims=True), 2, axis=2)
                                .reshape(t.shape))


def _abs_backward(network, abs_layers, g):
    """Back-propagate g (head inputs, h, P) through |W| of every layer below the head (C
    kernels, float32): (input bound (n_in, c_in, P), [the signal at each layer's
    pre-activation output])."""
    dy = np.ascontiguousarray(g, dtype=np.float32)
    n = resolve_n_threads(None)
    signals = [None] * len(abs_layers)
    for l in range(len(abs_layers) - 1, -1, -1):
        layer = network.layers[l]
        if layer.activation == "maxmin":
            dy = _pair_sum(dy, layer)
        signals[l] = dy
        dy = _engine.linear_backward_input(layer.connectivity, abs_layers[l], layer.c_in,
                                           layer.c_out, dy, n)
    return dy, signals


def _influence_bounds(network):
    _check_influence_activations(network)
    C = network.n_classes
    pairs = [(a, b) for a in range(C) for b in range(C) if a != b]
    # one backward pass with batch = pairs: column k carries pair k
    _, g = _head_signal(network, network.layers[-1].weight.astype(np.float64), pairs)
    dy, _ = _abs_backward(network, _abs_weights(network), g)
    G = np.zeros((C, C, network.n_in))
    for k, (a, b) in enumerate(pairs):
        G[a, b] = dy[:, 0, k]
    G *= 1.0 + 1e-5  # the float32 backward may round down; keep the bound an upper bound
    return G


class L0Bound:
    """The training side of the certified L0 bound at ``radius`` r changed pixels (each free
    in [0, 1], the "box" room of :func:`l0_radius`): per class pair, the smaller of the
    influence bound's r largest G[y, c, i] and the chain bound sqrt(T * the r largest v_i)
    (:class:`sparsefan.lipschitz.MarginBound` with ``top=r``). A margin above it certifies r
    pixels. The influence term and its weight gradient run on the C kernels over |W|, batch =
    class pairs: a backward pass gives G, a forward pass of the r selected pixels' indicator
    and a second backward give d(sum of the selected G)/d|W| (times sign W). An estimate for
    the loss (float32, power iteration); certificates use :func:`l0_radius`.

    Same interface as ``MarginBound``: ``value(warm)`` -> K (C, C), ``backward(dK, grads)``,
    ``buffers()``."""

    def __init__(self, network: Network, radius: int, iterations: int = 1,
                 seed: int | np.random.Generator | None = 0,
                 dtype: npt.DTypeLike = np.float32) -> None:
        if network.aggregate != "mean_logits":
            raise ValueError("certified L0 training needs a mean_logits network")
        _check_influence_activations(network)
        self.network = network
        self.radius = min(int(radius), network.n_in)
        self.chain = lipschitz.MarginBound(network, iterations=iterations, seed=seed,
                                           dtype=dtype, top=self.radius)
        self.pairs, self.E = lipschitz._pairs(network.n_classes)
        self._saved: dict[str, Any] | None = None

    def buffers(self) -> list[np.ndarray]:
        return self.chain.buffers()

    def value(self, warm: bool = False) -> np.ndarray:
        Kc = self.chain.value(warm=warm)
        Ki = self._influence_value()
        self._use_chain = Kc <= Ki
        return np.minimum(Kc, Ki)

    def backward(self, dK: np.ndarray, grads: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.chain.backward(np.where(self._use_chain, dK, 0.0), grads)
        self._influence_backward(np.where(self._use_chain, 0.0, dK), grads)

    def _influence_value(self):
        net, r = self.network, self.radius
        W = net.layers[-1].weight
        d, g = _head_signal(net, W, self.pairs)
        abs_layers = _abs_weights(net)
        G, signals = _abs_backward(net, abs_layers, g)
        G = G.reshape(net.n_in, -1)  # (N, P) (c_in = 1 at the input)
        sel = np.argpartition(-G, r - 1, axis=0)[:r]  # (r, P): the r costliest pixels
        value = np.take_along_axis(G, sel, axis=0).astype(np.float64).sum(axis=0)
        self._saved = dict(sign=np.sign(d), sel=sel, abs_layers=abs_layers, signals=signals)
        return lipschitz._to_matrix(value, net.n_classes)

    def _influence_backward(self, dK, grads):
        gK = np.array([dK[a, b] + dK[b, a] for a, b in self.pairs])
        if not gK.any():
            return
        net, sv = self.network, self._saved
        layers, P = net.layers, len(self.pairs)
        # forward the selected pixels' indicator through |W|: h_l, the input of layer l
        h = np.zeros((net.n_in, 1, P), np.float32)
        np.put_along_axis(h[:, 0, :], sv["sel"], 1.0, axis=0)
        inputs = []
        n = resolve_n_threads(None)
        for l, a in enumerate(sv["abs_layers"]):
            inputs.append(h)
            layer = layers[l]
            h = _engine.linear_forward(layer.connectivity, a, layer.c_in, layer.c_out, h, n)
            if layers[l].activation == "maxmin":
                h = _pair_sum(h, layers[l])
        # head: value_p = sum_q |d[q, :, p]| . h[idx_q, :, p] / M
        head = layers[-1]
        hq = h[head.connectivity.indices]  # (nnz, h, P)
        gd = sv["sign"] * hq * (gK / net.n_units).astype(np.float32)[None, None, :]
        gw = grads[-1][0]
        gw += gd @ self.E.astype(np.float32)
        # the layers below: d value / d|W_l| = sum_p h_l x (the signal at l's output) * gK_p
        scale = gK.astype(np.float32)[None, None, :]
        for l, layer in enumerate(layers[:-1]):
            dy = np.ascontiguousarray(sv["signals"][l] * scale)
            gw = _engine.linear_weight_grad(layer.connectivity, layer.c_in, layer.c_out,
                                            inputs[l], dy, n)
            acc = grads[l][0]
            acc += gw * np.sign(layers[l].weight)


# -- L2 --------------------------------------------------------------------------------------------

def lipschitz_margin_bounds(network: Network) -> np.ndarray:
    """L (C, C): L[y, c] bounds the L2 Lipschitz constant of S_y - S_c (mean logits); see
    :func:`sparsefan.lipschitz.margin_bounds`. Cached per weight state."""
    return lipschitz.margin_bounds(network)


def _chain_cum(network, y, room2, r_max):
    """(r_max, C, B): the chain bound's cap on how far r changed pixels move S_y - S_c,
    sqrt(T_yc * (sum of the r largest v_i,yc * room_i^2)) (sparsefan.lipschitz.input_weights):
    sublinear in r, where the influence bound adds up per pixel. room2 (N, B)."""
    T, v, pairs = lipschitz.input_weights(network)
    C = network.n_classes
    pair_of = np.zeros((C, C), dtype=np.int64)
    for p, (a, b) in enumerate(pairs):
        pair_of[a, b] = pair_of[b, a] = p
    idx = pair_of[y]  # (B, C): the pair of (y_b, c)
    w = v[:, idx] * room2[:, :, None]  # (N, B, C)
    cum = np.sqrt(T[idx][None] * _top_sums(w, r_max))  # (r_max, B, C)
    cum = cum.transpose(0, 2, 1).copy()
    cum[:, y, np.arange(len(y))] = 0.0  # c = y: no margin to lose
    return cum


def certificate_tables(network: Network,
                       max_radius: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The constants of ``Network.predict_certified``, per weight state: K (C, C) from
    :func:`lipschitz_margin_bounds` and cum (C, C, R + 1), cum[y, c, r] the sum of the r
    largest influence bounds G[y, c, :] (R = min(n_in, max_radius))."""
    def compute(net):
        K = lipschitz_margin_bounds(net)
        G = influence_bounds(net)
        C, N = net.n_classes, net.n_in
        R = min(N, int(max_radius))
        cum = np.zeros((C, C, R + 1))
        for y in range(C):  # room 1 for every pixel: the box of inputs in [0, 1]
            yy = np.full(1, y)
            infl = _top_sums(G[y].T[:, :, None], R)  # (R, C, 1)
            cum[y, :, 1:] = np.minimum(infl, _chain_cum(net, yy, np.ones((N, 1)), R))[:, :, 0].T
        return np.ascontiguousarray(K), cum
    return network.derived(f"certificate_tables/{int(max_radius)}", compute)


def radius_from_margins(S: np.ndarray, y: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Certified L2 radius from mean logits S (C, B), labels y (B,) and bounds K (C, C):
    min_c (S_y - S_c) / K[y, c], -1 where y does not win."""
    B = len(y)
    cols = np.arange(B)
    margins = S[y, cols][None, :] - S  # (C, B)
    Ky = K[y].T  # (C, B)
    with np.errstate(divide="ignore", invalid="ignore"):
        # a zero bound: that margin cannot move at all
        r = np.where((np.arange(S.shape[0])[:, None] == y[None, :]) | (Ky == 0), np.inf,
                     margins / Ky)
    radius = np.maximum(r.min(axis=0), 0.0)
    return np.where(_wins(margins, y), radius, -1.0)


def l2_radius(network: Network, x: np.ndarray | Sequence[Any], y: npt.ArrayLike,
              n_threads: int | None = None) -> np.ndarray:
    """Certified L2 radius per example (float, -1 if misclassified), mean_logits networks."""
    K = lipschitz_margin_bounds(network)
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    y = np.asarray(y).astype(np.int64)
    S = agg.mean_logits(network.unit_logits(x, n_threads))
    return radius_from_margins(S, y, K)
