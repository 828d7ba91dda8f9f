"""Adversarial attacks on any Network, driven by the engine's input gradients (C backward).

All attacks are batched and seeded, keep pixels in [0, 1], and return an :class:`AttackResult`:
the adversarial inputs, which examples were broken, and the size of each perturbation (the
number of changed pixels for L0, the norm for L2/Linf; ``inf`` where the attack failed).
Success is always judged by the network's real prediction (its aggregate, votes included);
gradients come from a differentiable surrogate of the aggregate scores: the mean logits for
``mean_logits``, the log mean probability for ``mean_prob`` and ``vote``.

Examples that the network already misclassifies count as broken with perturbation size 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from sparsefan import aggregate as agg

if TYPE_CHECKING:
    from sparsefan.network import Network


@dataclass
class AttackResult:
    x_adv: np.ndarray  # (batch, n_in) float32
    success: np.ndarray  # (batch,) bool: prediction differs from the label (or equals target)
    size: np.ndarray  # (batch,) float64: L0 count / L2 / Linf of x_adv - x; inf if failed

    def robust_accuracy(self, budget: float) -> float:
        """Fraction of examples not broken within ``budget``."""
        return float(np.mean(~(self.success & (self.size <= budget + 1e-6))))


# -- surrogate scores and their gradient --------------------------------------------------------

def _surrogate(Z, aggregate):
    """Differentiable scores S (C, B) and a function mapping dS (C, B) -> dZ (M, C, B)."""
    Z = np.asarray(Z, dtype=np.float64)
    M = Z.shape[0]
    if aggregate == "mean_logits":
        return Z.mean(axis=0), lambda dS: np.broadcast_to(dS / M, Z.shape)
    P = agg.softmax(Z, axis=1)  # (M, C, B)
    pbar = np.maximum(P.mean(axis=0), 1e-30)

    def back(dS):
        w = dS[None] * P / pbar[None]  # d log pbar_c / d P_jc = 1 / (M pbar_c)
        return (w - P * w.sum(axis=1, keepdims=True)) / M

    return np.log(pbar), back


def _true_pred(Z, aggregate):
    return agg.scores(Z, aggregate).argmax(axis=1)


def _margin_grad(S, y, target):
    """Margin to minimize and dMargin/dS. Untargeted: S_y - max_{c != y} S_c;
    targeted: max_{c != t} S_c - S_t."""
    C, B = S.shape
    cols = np.arange(B)
    lab = y if target is None else target
    other = S.copy()
    other[lab, cols] = -np.inf
    best = other.argmax(axis=0)
    d = np.zeros_like(S)
    if target is None:
        m = S[lab, cols] - S[best, cols]
        d[lab, cols] = 1.0
        d[best, cols] = -1.0
    else:
        m = S[best, cols] - S[lab, cols]
        d[best, cols] = 1.0
        d[lab, cols] = -1.0
    return m, d


def _ce_grad(S, y, target):
    """Loss to *minimize*: -CE(S, y) (untargeted) or CE(S, t) (targeted); and dLoss/dS.

    The scores are first divided, per example, by max(1, top-2 margin / 10): a model whose
    logits are huge (certified training leaves their scale free) would otherwise saturate the
    softmax to exactly 0 gradient and mask itself from every gradient attack. Scores with
    margins up to 10 are unchanged; beyond, the gradient's direction is the CE's at a higher
    temperature (the attacks use directions, not lengths)."""
    B = S.shape[1]
    cols = np.arange(B)
    top2 = np.sort(S, axis=0)[-2:] if S.shape[0] > 1 else np.zeros((2, B))
    S = S / np.maximum(1.0, (top2[1] - top2[0]) / 10.0)[None, :]
    logp = agg.log_softmax(S, axis=0)
    p = np.exp(logp)
    lab = y if target is None else target
    g = p.copy()
    g[lab, cols] -= 1.0  # dCE/dS
    if target is None:
        return logp[lab, cols], -g
    return -logp[lab, cols], g


class _Oracle:
    """Runs the network once per query: true predictions and the surrogate loss gradient."""

    def __init__(self, network, y, target=None, loss="ce", n_threads=None):
        self.net, self.y, self.target, self.loss = network, y, target, loss
        self.n_threads = n_threads

    def __call__(self, x, rows):
        y = self.y[rows]
        target = None if self.target is None else self.target[rows]
        out = {}

        def objective(Z):
            out["pred"] = _true_pred(Z, self.net.aggregate)
            S, back = _surrogate(Z, self.net.aggregate)
            if self.loss == "ce":
                val, dS = _ce_grad(S, y, target)
            else:
                val, dS = _margin_grad(S, y, target)
            return val, back(dS)

        val, grad = self.net.input_gradient(x, objective, self.n_threads)
        pred = out["pred"]
        ok = pred != y if target is None else pred == target
        return val, grad.astype(np.float64), ok

    def margins(self, x, rows):
        """Forward only: margin (minimize) on the true scores, plus a small surrogate term that
        breaks the plateaus of the vote; and whether each example is broken."""
        Z = self.net.unit_logits(np.ascontiguousarray(x, dtype=np.float32), self.n_threads)
        y = self.y[rows]
        target = None if self.target is None else self.target[rows]
        true = agg.scores(Z, self.net.aggregate).T
        m, _ = _margin_grad(true, y, target)
        if self.net.aggregate == "vote":
            S, _ = _surrogate(Z, "vote")
            m = m + 1e-3 * _margin_grad(S, y, target)[0]
        pred = true.argmax(axis=0)
        ok = pred != y if target is None else pred == target
        return m, ok


def _prepare(network, x, y, target):
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    if x.shape[1] != network.n_in:
        raise ValueError(f"x must have {network.n_in} features per example, got {x.shape[1]}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("x must hold finite pixel values in [0, 1]")
    y = np.asarray(y).astype(np.int64)
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape ({len(x)},)")
    if target is not None:
        target = np.asarray(target).astype(np.int64)
        if target.shape != y.shape:
            raise ValueError("target must have the same shape as y")
    return x, y, target


def _l2(d):
    return np.sqrt((d.astype(np.float64) ** 2).sum(axis=1))


# -- L2 and Linf: PGD -----------------------------------------------------------------------------

def pgd(network: Network, x: np.ndarray | Sequence[Any], y: npt.ArrayLike, eps: float,
        norm: str = "l2", steps: int = 50, restarts: int = 1, step_size: float | None = None,
        seed: int | np.random.Generator | None = 0,
        n_threads: int | None = None) -> AttackResult:
    """Projected gradient descent on the cross-entropy of the surrogate, within an L2 or Linf
    ball of radius ``eps`` intersected with [0, 1]. The first restart starts at x, later ones at
    a random point of the ball. An example is broken if any iterate is misclassified."""
    x, y, _ = _prepare(network, x, y, None)
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    rng = np.random.default_rng(seed)
    oracle = _Oracle(network, y, None, "ce", n_threads)
    B, N = x.shape
    alpha = step_size or 2.5 * eps / steps
    success = np.zeros(B, bool)
    x_adv = x.copy()
    for r in range(restarts):
        rows = np.flatnonzero(~success)
        if rows.size == 0:
            break
        x0 = x[rows].astype(np.float64)
        if r == 0:
            delta = np.zeros_like(x0)
        elif norm == "l2":
            u = rng.standard_normal(x0.shape)
            u *= (eps * rng.random((len(rows), 1)) ** (1 / N)) / _l2(u)[:, None]
            delta = u
        else:
            delta = rng.uniform(-eps, eps, x0.shape)
        delta = np.clip(x0 + delta, 0, 1) - x0
        for it in range(steps + 1):
            xa = (x0 + delta).astype(np.float32)
            _, g, ok = oracle(xa, rows)
            new = ok & ~success[rows]
            x_adv[rows[new]] = xa[new]
            success[rows[new]] = True
            if it == steps:
                break
            if norm == "l2":
                gn = _l2(g)[:, None]
                delta = delta - alpha * g / np.maximum(gn, 1e-12)  # descend on -CE
                dn = _l2(delta)[:, None]
                delta *= np.minimum(1.0, eps / np.maximum(dn, 1e-12))
            else:
                delta = np.clip(delta - alpha * np.sign(g), -eps, eps)
            delta = np.clip(x0 + delta, 0, 1) - x0
    d = (x_adv - x).astype(np.float64)
    size = _l2(d) if norm == "l2" else np.abs(d).max(axis=1)
    return AttackResult(x_adv, success, np.where(success, size, np.inf))


def ddn(network: Network, x: np.ndarray | Sequence[Any], y: npt.ArrayLike, steps: int = 200,
        gamma: float = 0.05, init_norm: float = 1.0,
        n_threads: int | None = None) -> AttackResult:
    """Decoupled Direction and Norm (Rony et al. 2019): a minimal-L2 attack. Steps along the
    normalized gradient and keeps the perturbation on a sphere whose radius shrinks by
    (1 - gamma) while adversarial and grows by (1 + gamma) while not; step size cosine-annealed
    from 1 to 0.01. Returns the smallest adversarial perturbation found."""
    x, y, _ = _prepare(network, x, y, None)
    oracle = _Oracle(network, y, None, "ce", n_threads)
    B = len(x)
    rows = np.arange(B)
    x0 = x.astype(np.float64)
    delta = np.zeros_like(x0)
    eps = np.full(B, float(init_norm))
    best = np.full(B, np.inf)
    x_adv = x.copy()
    for k in range(steps + 1):
        xa = (x0 + delta).astype(np.float32)
        _, g, ok = oracle(xa, rows)
        n = _l2(xa.astype(np.float64) - x0)
        better = ok & (n < best)
        best[better] = n[better]
        x_adv[better] = xa[better]
        if k == steps:
            break
        alpha = 0.01 + (1 - 0.01) * (1 + math.cos(math.pi * k / steps)) / 2
        eps = np.where(ok, (1 - gamma) * eps, (1 + gamma) * eps)
        eps = np.minimum(eps, math.sqrt(x.shape[1]))
        gn = _l2(g)[:, None]
        delta = delta - alpha * g / np.maximum(gn, 1e-12)
        dn = _l2(delta)[:, None]
        delta = delta * (eps[:, None] / np.maximum(dn, 1e-12))
        delta = np.clip(x0 + delta, 0, 1) - x0
    success = np.isfinite(best)
    return AttackResult(x_adv, success, best)


# -- L0 --------------------------------------------------------------------------------------------

def greedy_l0(network: Network, x: np.ndarray | Sequence[Any], y: npt.ArrayLike,
              max_pixels: int = 100, target: npt.ArrayLike | None = None,
              n_threads: int | None = None) -> AttackResult:
    """Greedy saliency attack (JSMA-like): each step sets the one pixel to 0 or 1 whose
    first-order effect on the margin is largest, until the prediction changes (or equals
    ``target``) or ``max_pixels`` pixels are changed. Untargeted unless ``target`` is given."""
    x, y, target = _prepare(network, x, y, target)
    oracle = _Oracle(network, y, target, "margin", n_threads)
    B, N = x.shape
    x_adv = x.copy()
    changed = np.zeros((B, N), bool)
    size = np.full(B, np.inf)
    active = np.arange(B)
    for count in range(max_pixels + 1):
        if active.size == 0:
            break
        _, g, ok = oracle(x_adv[active], active)
        size[active[ok]] = count
        active, g = active[~ok], g[~ok]
        if count == max_pixels or active.size == 0:
            break
        cur = x_adv[active].astype(np.float64)
        # best value per pixel: 0 if the margin grows with the pixel, else 1
        gain = np.where(g > 0, g * cur, -g * (1 - cur))  # predicted margin decrease
        gain[changed[active]] = -np.inf
        pick = gain.argmax(axis=1)
        val = np.where(g[np.arange(len(active)), pick] > 0, 0.0, 1.0)
        x_adv[active, pick] = val
        changed[active, pick] = True
    success = np.isfinite(size)
    return AttackResult(x_adv, success, size)


def sparse_rs(network: Network, x: np.ndarray | Sequence[Any], y: npt.ArrayLike, k: int,
              queries: int = 300, seed: int | np.random.Generator | None = 0,
              n_threads: int | None = None) -> AttackResult:
    """Random search at a fixed budget of ``k`` pixels (Sparse-RS-like, forward passes only):
    keep a set of k pixels set to 0/1; each query re-draws a shrinking fraction of them (new
    positions and values) and keeps the proposal if the margin does not grow."""
    x, y, _ = _prepare(network, x, y, None)
    oracle = _Oracle(network, y, None, "margin", n_threads)
    rng = np.random.default_rng(seed)
    B, N = x.shape
    k = int(min(k, N))
    pos = np.stack([rng.choice(N, k, replace=False) for _ in range(B)])
    val = rng.integers(0, 2, (B, k)).astype(np.float32)
    rows_all = np.arange(B)

    def apply(p, v, rows):
        xa = x[rows].copy()
        np.put_along_axis(xa, p, v, axis=1)
        return xa

    m, ok = oracle.margins(apply(pos, val, rows_all), rows_all)
    success = ok.copy()
    x_adv = np.where(ok[:, None], apply(pos, val, rows_all), x)
    for q in range(queries):
        rows = np.flatnonzero(~success)
        if rows.size == 0:
            break
        frac = 0.3 * (1 - q / queries) + 1.0 / max(k, 1)
        n_new = max(1, int(round(frac * k)))
        p, v = pos[rows].copy(), val[rows].copy()
        for r in range(len(rows)):
            slots = rng.choice(k, n_new, replace=False)
            fresh = rng.choice(N, n_new + k, replace=False)
            fresh = fresh[~np.isin(fresh, p[r])][:n_new]
            p[r, slots[:len(fresh)]] = fresh
            v[r, slots] = rng.integers(0, 2, n_new)
        xa = apply(p, v, rows)
        m_new, ok = oracle.margins(xa, rows)
        keep = m_new <= m[rows]
        pos[rows[keep]], val[rows[keep]], m[rows[keep]] = p[keep], v[keep], m_new[keep]
        x_adv[rows[ok]] = xa[ok]
        success[rows[ok]] = True
    size = np.where(success, (x_adv != x).sum(axis=1), np.inf).astype(np.float64)
    return AttackResult(x_adv, success, size)


def linear_l0(network: Network, x: np.ndarray | Sequence[Any], y: npt.ArrayLike,
              target: npt.ArrayLike | None = None, max_pixels: int = 100,
              kappa: float = 0.1, n_threads: int | None = None) -> AttackResult:
    """The targeted linear-algebra attack behind Shamir et al. 2019 (arXiv 1901.10861).

    Linearize the C aggregate scores at the current point (C backward passes give the
    Jacobian), pick the pixels with the largest influence on the target-vs-other score
    differences, and solve the least-norm linear system that makes the target win by
    ``kappa`` using only those pixels; clip to [0, 1]; repeat, growing the pixel set by C
    each round, until the target wins or ``max_pixels`` are used. Default target: the
    runner-up class at x."""
    x, y, target = _prepare(network, x, y, target)
    B, N = x.shape
    C = network.n_classes
    if target is None:
        S0 = agg.scores(network.unit_logits(x, n_threads), network.aggregate)
        S0[np.arange(B), y] = -np.inf
        target = S0.argmax(axis=1)
    x_adv = x.astype(np.float64).copy()
    sets = [np.zeros(0, np.int64) for _ in range(B)]
    size = np.full(B, np.inf)
    active = np.arange(B)
    while active.size:
        xa = x_adv[active].astype(np.float32)
        J = np.empty((C, len(active), N))
        for c in range(C):
            out = {}

            def objective(Z, c=c):
                S, back = _surrogate(Z, network.aggregate)
                out["S"], out["pred"] = S, _true_pred(Z, network.aggregate)
                dS = np.zeros_like(S)
                dS[c] = 1.0
                return S[c], back(dS)

            _, J[c] = network.input_gradient(xa, objective, n_threads)
        S, pred = out["S"], out["pred"]
        won = pred == target[active]
        size[active[won]] = (x_adv[active[won]] != x[active[won]]).sum(axis=1)
        keep = []
        for r, b in enumerate(active):
            if won[r] or len(sets[b]) >= max_pixels:
                continue
            t = target[b]
            others = [c for c in range(C) if c != t]
            D = J[t, r][None, :] - J[others, r]  # (C-1, N): d(S_t - S_c)/dx
            gap = S[t, r] - S[others, r]  # want gap + D delta >= kappa
            infl = np.abs(D).sum(axis=0)
            infl[sets[b]] = -np.inf
            room = np.maximum(x_adv[b], 1 - x_adv[b])
            infl = np.where(room > 1e-6, infl * room, -np.inf)
            add = np.argsort(-infl)[:C]
            add = add[np.isfinite(infl[add])]
            sets[b] = np.concatenate([sets[b], add])[:max_pixels]
            cols = sets[b]
            need = np.maximum(kappa - gap, 0.0)
            delta, *_ = np.linalg.lstsq(D[:, cols], need, rcond=None)
            x_adv[b, cols] = np.clip(x_adv[b, cols] + delta, 0.0, 1.0)
            keep.append(b)
        active = np.array(keep, dtype=np.int64)
    success = np.isfinite(size)
    return AttackResult(x_adv.astype(np.float32), success, size)
