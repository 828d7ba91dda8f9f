"""L2 Lipschitz bounds on the class margins of a network: the certificate and its training.

For classes (y, c) the margin is f_yc(x) = S_y - S_c, S the aggregate of mean logits over the
M output units. A bound K_yc >= Lip(f_yc) certifies every x whose margin exceeds eps * K_yc
against every c at L2 radius eps.

The wiring-weighted chain bound (DESIGN §4). Each unit j of layer l has one dense block W_lj
(fan_in_j * c_in x c_out) on its field R_j; its output moves by at most s_lj ||dx_Rj||, with
s_lj = ||W_lj||_2 (ReLU and MaxMin are 1-Lipschitz in L2 on the unit's channels). Let m be the last layer that mixes units (every later
layer is per-unit, identity connectivity), u_j the gradient of f_yc w.r.t. output unit j's last
hidden activations (exact: (W_head_j[:, y] - W_head_j[:, c]) / M) and

    a_j = ||u_j|| * prod_{l = m .. L-2} s_lj          (unit j's margin sensitivity to x_Rj at m)

Then |df| <= sum_j a_j ||dh_Rj|| <= sqrt(sum_j a_j) * sqrt(sum_i v_i ||dh_i||^2) with
v_i = sum_{j reads i} a_j (Cauchy-Schwarz weighted by a_j), and each earlier layer l carries the
weights down: sum_i v_i ||dh_i||^2 <= sum_k ||dh'_k||^2 * sum_{i reads k} v_i s_li^2. At the
input, sum_k v_k ||dx_k||^2 <= max_k v_k ||dx||^2, so

    K_yc = sqrt(sum_j a_j) * sqrt(max_k v_k).

Sparse wiring is what makes it small: with equal a_j and out-degree d, K = a sqrt(d / M). For a
dense MLP (M = 1) it is the usual ||w_y - w_c|| * prod ||W_l||_2. The certificate computes the
spectral norms exactly (float64 SVD) and takes the elementwise minimum with the layer-product
bound (both sound); training uses power-iteration estimates and a smoothed maximum
(:class:`MarginBound`), with the gradient of K w.r.t. every weight in vectorized NumPy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sparsefan.network import Network

SAFETY = 1.0 + 1e-5  # float32 forward passes and float64 SVDs round; keep K an upper bound


def _pairs(C):
    """Unordered class pairs (y < c) and E (P, C): +1 at y, -1 at c (d = W @ E.T)."""
    pairs = [(a, b) for a in range(C) for b in range(a + 1, C)]
    E = np.zeros((len(pairs), C))
    for p, (a, b) in enumerate(pairs):
        E[p, a], E[p, b] = 1.0, -1.0
    return pairs, E


class _Wiring:
    """What the bound needs from the connectivity alone: per layer the unit blocks' layout and
    the 0/1 matrix (n_out, n_in); the last mixing layer m."""

    def __init__(self, network):
        layers = network.layers
        self.n_layers = len(layers)
        for layer in layers[:-1]:
            if layer.activation not in (None, "relu", "maxmin"):
                raise ValueError("the L2 bound needs ReLU, MaxMin or linear layers")
        m = self.n_layers - 1
        while m > 0 and layers[m].connectivity.is_identity():
            m -= 1
        self.m = m
        self.groups = []  # per layer: list of (rows, connection index (n_rows, k) or None)
        self.A = []
        for layer in layers:
            conn = layer.connectivity
            fan = conn.fan_in()
            if conn.k is not None:
                self.groups.append([(None, None)])
            else:
                g = []
                for k in np.unique(fan):
                    rows = np.flatnonzero(fan == k)
                    g.append((rows, conn.indptr[rows][:, None] + np.arange(k)[None, :]))
                self.groups.append(g)
            self.A.append(conn.to_scipy(np.ones(conn.nnz)))

    def blocks(self, l, layer, weight):
        """Layer l's unit blocks: [(rows, blocks (n_rows, fan_in * c_in, c_out))], rows None
        for all units (fixed fan-in: a view of ``weight``)."""
        conn = layer.connectivity
        out = []
        for rows, idx in self.groups[l]:
            if rows is None:
                k = conn.k
                out.append((rows, weight.reshape(conn.n_out, k * layer.c_in, layer.c_out)))
            else:
                out.append((rows, weight[idx].reshape(len(rows), -1, layer.c_out)))
        return out


def _spectral_exact(blocks, n_out):
    s = np.zeros(n_out)
    for rows, B in blocks:
        if B.shape[1] == 0:
            continue
        val = np.linalg.norm(B, ord=2, axis=(1, 2)) if B.shape[0] else np.zeros(0)
        if rows is None:
            s[:] = val
        else:
            s[rows] = val
    return s


def _head_norms(head_blocks, n_units, E, M):
    """n (P, M): ||(W_head_j[:, y] - W_head_j[:, c])|| / M per pair p = (y, c), and the diffs."""
    n = np.zeros((E.shape[0], n_units))
    diffs = []
    for rows, B in head_blocks:
        d = B @ E.T  # (n_rows, K, P)
        nd = np.sqrt((d * d).sum(axis=1)).T / M  # (P, n_rows)
        if rows is None:
            n[:] = nd
        else:
            n[:, rows] = nd
        diffs.append(d)
    return n, diffs


def _chain(wiring, s, n):
    """Forward of the weighted chain. s: per layer (< head) unit norms (n_out,), n (P, M).
    Returns K (P,), and the intermediates the backward needs."""
    m, L = wiring.m, wiring.n_layers
    rho = np.ones(n.shape[1])
    for l in range(m, L - 1):
        rho = rho * s[l]
    a = n * rho[None, :]  # (P, M)
    T = a.sum(axis=1)
    vs = {m: wiring.A[m].T @ a.T}  # (n_in of layer m, P)
    for l in range(m - 1, -1, -1):
        vs[l] = wiring.A[l].T @ (vs[l + 1] * (s[l] ** 2)[:, None])
    V = vs[0].max(axis=0)
    return np.sqrt(T * V), dict(rho=rho, a=a, T=T, V=V, vs=vs)


def _product_bound(network, wiring, s, n):
    """The layer-product bound (P,): ||u|| * prod_l sqrt(max_i sum_{j reads i} s_lj^2)."""
    body = 1.0
    for l in range(wiring.n_layers - 1):
        per_input = wiring.A[l].T @ (s[l] ** 2)
        body *= float(np.sqrt(per_input.max())) if per_input.size else 0.0
    head = network.layers[-1]
    if head.connectivity.is_identity():
        return np.sqrt((n * n).sum(axis=1)) * body
    # a mixing head: u lives on its inputs; sum the per-connection rows that read each input
    W = head.weight.astype(np.float64)
    _, E = _pairs(network.n_classes)
    d = W @ E.T / network.n_units  # (nnz, c_in, P)
    u = np.zeros((head.n_in, head.c_in, E.shape[0]))
    np.add.at(u, head.connectivity.indices, d)
    return np.sqrt((u * u).sum(axis=(0, 1))) * body


def _to_matrix(Kp, C):
    pairs, _ = _pairs(C)
    K = np.zeros((C, C))
    for p, (a, b) in enumerate(pairs):
        K[a, b] = K[b, a] = Kp[p]
    return K


def input_weights(network: Network) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(T (P,), v (n_in, P), pairs): the chain bound's parts for class pairs p = (y < c), exact
    spectral norms: |d(S_y - S_c)| <= sqrt(T_p * sum_i v_ip dx_i^2) for any change dx. With r
    changed pixels each moving at most 1 this is at most sqrt(T_p * (the r largest v_ip)): an
    L0 certificate sublinear in r (sparsefan.certify.l0_radius). Cached per weight state."""
    if network.aggregate != "mean_logits":
        raise ValueError("the chain bound is implemented for mean_logits networks")
    return network.derived("l2_input_weights", lambda net: _exact_chain(net)[1:])


def _exact_chain(network):
    wiring = _Wiring(network)
    C, M = network.n_classes, network.n_units
    layers = network.layers
    s = [_spectral_exact(wiring.blocks(i, l, l.weight.astype(np.float64)), l.n_out)
         for i, l in enumerate(layers[:-1])]
    pairs, E = _pairs(C)
    n, _ = _head_norms(wiring.blocks(len(layers) - 1, layers[-1],
                                     layers[-1].weight.astype(np.float64)), M, E, M)
    chain, inter = _chain(wiring, s, n)
    return (wiring, s, n, chain), inter["T"] * SAFETY, inter["vs"][0] * SAFETY, pairs


def margin_bounds(network: Network) -> np.ndarray:
    """K (C, C) float64: K[y, c] is a sound upper bound on the L2 Lipschitz constant of the
    mean-logit margin S_y - S_c (0 on the diagonal). Exact spectral norms; the minimum of the
    wiring-weighted chain and the layer-product bound, inflated by ``SAFETY``."""
    if network.aggregate != "mean_logits":
        raise ValueError("L2 certificates are implemented for mean_logits networks")
    return network.derived("l2_margin_bounds", _margin_bounds)


def _margin_bounds(network):
    (wiring, s, n, chain), _, _, _ = _exact_chain(network)
    K = np.minimum(chain, _product_bound(network, wiring, s, n)) * SAFETY
    return _to_matrix(K, network.n_classes)


class MarginBound:
    """The training side of :func:`margin_bounds`: power-iteration estimates of the unit
    spectral norms (vectors kept between steps), a smoothed max over inputs, and the gradient
    of K w.r.t. every layer's weight. An estimate for the loss; never used to certify.

    ``value()`` returns K (C, C); ``backward(dK, grads)`` adds dLoss/dW for dLoss/dK into the
    trainer's ``grads`` [(grad_weight, grad_bias)] (float32).

    With ``top`` = r the input reduction is the sum of the r largest v_k instead of their
    (smoothed) maximum: K_yc = sqrt(T * (the r largest v_k)), the chain bound on how far r
    changed pixels, each moving at most 1, move the margin (the L0 certificate's chain term,
    :func:`input_weights`); its gradient goes to the r selected inputs."""

    def __init__(self, network: Network, iterations: int = 1, temperature: float = 0.05,
                 seed: int | np.random.Generator | None = 0, dtype: npt.DTypeLike = np.float32,
                 top: int | None = None) -> None:
        if network.aggregate != "mean_logits":
            raise ValueError("certified L2 training needs a mean_logits network")
        self.network = network
        self.wiring = _Wiring(network)
        self.iterations = int(iterations)
        self.temperature = float(temperature)
        self.dtype = np.dtype(dtype)  # of the power iteration (float64: for exact tests)
        self.top = None if top is None else min(int(top), network.n_in)
        self.pairs, self.E = _pairs(network.n_classes)
        rng = np.random.default_rng(seed)
        # per layer (< head), per group: right singular vectors (n_rows, c_out), float32 so
        # that a checkpoint holds them exactly (see ``buffers``)
        self.vectors = []
        for l, layer in enumerate(network.layers[:-1]):
            vecs = []
            for rows, B in self.wiring.blocks(l, layer, layer.weight):
                v = rng.standard_normal((B.shape[0], B.shape[2]))
                vecs.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
            self.vectors.append(vecs)
        self._saved: dict[str, Any] | None = None

    def buffers(self) -> list[np.ndarray]:
        """The power-iteration vectors (float32 arrays, updated in place): training state a
        checkpoint keeps, so that a resumed run is bit-identical."""
        return [v for vecs in self.vectors for v in vecs]

    def value(self, warm: bool = False) -> np.ndarray:
        """K (C, C) for the current weights (one step of power iteration, ten with ``warm``,
        from the kept vectors), remembering what :meth:`backward` needs."""
        net, wiring = self.network, self.wiring
        layers = net.layers
        L = len(layers)
        iters = max(self.iterations, 10 if warm else 0)
        s, uv = [], []
        for l, layer in enumerate(layers[:-1]):
            sl = np.zeros(layer.n_out)
            per = []
            # float32 by default (the weights as they are, no copy): an estimate for training
            W = layer.weight.astype(self.dtype, copy=False)
            for g, (rows, B) in enumerate(wiring.blocks(l, layer, W)):
                v = self.vectors[l][g].astype(self.dtype)
                if B.shape[1] == 0:
                    per.append((rows, B, np.zeros((B.shape[0], B.shape[1])), v))
                    continue
                for _ in range(iters):
                    u = np.einsum("nkc,nc->nk", B, v)
                    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-30)
                    v = np.einsum("nkc,nk->nc", B, u)
                    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
                u = np.einsum("nkc,nc->nk", B, v)
                sig = np.linalg.norm(u, axis=1)
                u /= np.maximum(sig, 1e-30)[:, None]
                sig = sig.astype(np.float64)
                self.vectors[l][g][...] = v
                if rows is None:
                    sl[:] = sig
                else:
                    sl[rows] = sig
                per.append((rows, B, u, v))
            s.append(sl)
            uv.append(per)
        head = layers[-1]
        hb = wiring.blocks(L - 1, head, head.weight.astype(self.dtype, copy=False))
        n, diffs = _head_norms(hb, net.n_units, self.E, net.n_units)
        Kp, inter = _chain(wiring, s, n)
        if self.top is not None:  # the r largest v_k: the chain's L0 term
            v0 = inter["vs"][0]
            sel = np.argpartition(-v0, self.top - 1, axis=0)[:self.top]  # (r, P)
            inter["V"] = np.take_along_axis(v0, sel, axis=0).sum(axis=0)
            inter["sel"] = sel
            Kp = np.sqrt(inter["T"] * inter["V"])
        self._saved = dict(s=s, uv=uv, n=n, diffs=diffs, head_blocks=hb, K=Kp, **inter)
        return _to_matrix(Kp, net.n_classes)

    def backward(self, dK: np.ndarray, grads: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """dK (C, C): dLoss/dK[y, c]. Adds the weight gradients into ``grads``."""
        sv, wiring, net = cast("dict[str, Any]", self._saved), self.wiring, self.network
        m, L = wiring.m, wiring.n_layers
        gK = np.array([dK[a, b] + dK[b, a] for a, b in self.pairs])
        Kp, T, V = sv["K"], sv["T"], sv["V"]
        with np.errstate(divide="ignore", invalid="ignore"):
            gT = np.where(T > 0, gK * Kp / (2 * T), 0.0)
            gV = np.where(V > 0, gK * Kp / (2 * V), 0.0)
        v0 = sv["vs"][0]
        if self.top is not None:  # the sum of the r selected v_k
            gv = np.zeros_like(v0)
            np.put_along_axis(gv, sv["sel"], gV[None, :], axis=0)
        else:  # smoothed max: the gradient of max_k v_k spread by softmax((v - max) / (t max))
            scale = np.maximum(self.temperature * V, 1e-30)
            w = np.exp((v0 - V[None, :]) / scale[None, :])
            w /= w.sum(axis=0, keepdims=True)
            gv = w * gV[None, :]
        s = sv["s"]
        gs = [np.zeros_like(x) for x in s]
        for l in range(0, m):
            back = wiring.A[l] @ gv  # (n_out of l, P): gradient of vs[l+1] * s_l^2
            gs[l] += 2 * s[l] * (back * sv["vs"][l + 1]).sum(axis=1)
            gv = back * (s[l] ** 2)[:, None]
        ga = (wiring.A[m] @ gv).T + gT[:, None]  # (P, M)
        rho, n = sv["rho"], sv["n"]
        gn = ga * rho[None, :]
        grho = (ga * n).sum(axis=0)
        for l in range(m, L - 1):
            others = np.ones_like(rho)
            for k in range(m, L - 1):
                if k != l:
                    others = others * s[k]
            gs[l] += grho * others
        for l in range(L - 1):
            gw = grads[l][0]
            for group, (rows, B, u, v) in enumerate(sv["uv"][l]):
                # d sigma / d block = u v^T (top singular pair), one float32 outer product each
                scale = (gs[l] if rows is None else gs[l][rows]).astype(u.dtype)
                g = (u * scale[:, None])[:, :, None] @ v[:, None, :]
                self._add_block_grad(l, group, g, gw)
        # head: n_pj = ||d_pj|| / M with d = B @ E.T
        M = net.n_units
        gw = grads[L - 1][0]
        for group, ((rows, B), d) in enumerate(zip(sv["head_blocks"], sv["diffs"])):
            nd = np.sqrt((d * d).sum(axis=1))  # (n_rows, P)
            gnr = gn if rows is None else gn[:, rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                coef = np.where(nd > 0, gnr.T / (M * nd), 0.0)  # (n_rows, P)
            gd = d * coef[:, None, :]
            self._add_block_grad(L - 1, group, gd @ self.E, gw)

    def _add_block_grad(self, l, group, g, gw):
        """Add the gradient of a group of unit blocks (n_rows, fan_in * c_in, c_out) into the
        layer's weight gradient gw (nnz, c_in, c_out), float32."""
        rows, idx = self.wiring.groups[l][group]
        if rows is None:
            np.add(gw, g.reshape(gw.shape), out=gw, casting="unsafe")
        else:
            gw[idx.reshape(-1)] += g.reshape(-1, *gw.shape[1:]).astype(np.float32)
