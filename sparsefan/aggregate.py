"""Aggregation: turn every output unit's class scores into one prediction (DESIGN §2).

Per-unit logits are held as ``Z`` of shape (M units, C classes, batch) — the kernels' layout.

- ``mean_logits``: scores = mean_j Z[j]; probabilities = softmax(scores).
- ``mean_prob``:   probabilities = mean_j softmax(Z[j]); scores = log(probabilities).
- ``vote``:        each unit votes for its argmax (ties -> lowest class); probabilities = vote
                   fractions; scores = vote fractions. Not differentiable: train it with the
                   per-unit loss.

Losses (mean over the batch) and their gradients w.r.t. Z, in float64 for stability. Targets
``y`` are int labels (batch,) or, for soft labels, probability vectors (batch, C): the loss is
then the cross-entropy against the distribution, -sum_c y[b, c] log p[b, c].
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sparsefan import _engine

AGGREGATES = ("mean_logits", "mean_prob", "vote")


def softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = z - z.max(axis=axis, keepdims=True)  # the one array-sized result; then in place
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    z = z - z.max(axis=axis, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=axis, keepdims=True))
    return z


def mean_logits(Z: np.ndarray) -> np.ndarray:
    """(C, batch) mean over the units of Z (M, C, batch), summed in float64 without a float64
    copy of Z (a plain mean over axis 0 walks M short rows: slow when the batch is small)."""
    if (isinstance(Z, np.ndarray) and Z.dtype == np.float32 and Z.ndim == 3
            and Z.flags.c_contiguous and Z.size):
        M, C, B = Z.shape
        out = np.empty(C * B)
        _engine.mean_units(Z.reshape(M, C * B), out)
        return out.reshape(C, B)
    return np.einsum("mcb->cb", Z, dtype=np.float64, casting="safe") / Z.shape[0]


def votes(Z: np.ndarray) -> np.ndarray:
    """(C, batch) fraction of units whose argmax is each class."""
    M, C, B = Z.shape
    winners = Z.argmax(axis=1)  # (M, B)
    counts = np.zeros((C, B))
    for c in range(C):
        counts[c] = (winners == c).sum(axis=0)
    return counts / M


def probabilities(Z: np.ndarray, aggregate: str) -> np.ndarray:
    """(batch, C) class probabilities of the aggregate."""
    if aggregate == "mean_logits":
        return softmax(mean_logits(Z), axis=0).T
    Z = np.asarray(Z, dtype=np.float64)
    if aggregate == "mean_prob":
        return softmax(Z, axis=1).mean(axis=0).T
    if aggregate == "vote":
        return votes(Z).T
    raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def scores(Z: np.ndarray, aggregate: str) -> np.ndarray:
    """(batch, C) aggregate scores whose argmax is the prediction (mean logits, log mean
    probability, or vote fraction)."""
    if aggregate == "mean_logits":
        return mean_logits(Z).T
    Z = np.asarray(Z, dtype=np.float64)
    if aggregate == "mean_prob":
        with np.errstate(divide="ignore"):
            return np.log(softmax(Z, axis=1).mean(axis=0)).T
    return probabilities(Z, aggregate)


def refuse_overflow(aggregate: str, Z: np.ndarray | None, S: np.ndarray, whose: str,
                    cause: str, allow_neg_inf: bool = False) -> None:
    """Raise FloatingPointError when outputs overflowed float32: they would turn into class 0
    or NaN probabilities silently. Mean aggregates carry a non-finite unit into S (batch, C),
    which is checked (``allow_neg_inf``: -inf is a valid mean_prob score); the vote reads every
    unit of Z (M, C, batch). ``whose`` and ``cause`` word the message."""
    if aggregate == "vote":
        ok = np.isfinite(Z).all(axis=(0, 1))
    else:
        ok = (np.isfinite(S) | (allow_neg_inf & (S == -np.inf))).all(axis=1)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise FloatingPointError(
            f"{whose} outputs overflowed float32 for {len(bad)} example(s) of x "
            f"(first: {int(bad[0])}): {cause}")


def is_soft(y: npt.ArrayLike) -> bool:
    """True for soft targets (batch, C), False for int labels (batch,)."""
    return np.ndim(y) == 2


def _cross_entropy(logp, y):
    """Mean over the batch of the cross-entropy of log-probabilities logp (C, B) against the
    targets, and dL/d logits = (softmax - target) / B."""
    B = logp.shape[1]
    d = np.exp(logp)
    if is_soft(y):
        t = np.asarray(y, dtype=np.float64).T
        loss = -(t * logp).sum() / B
        d -= t
    else:
        cols = np.arange(B)
        loss = -logp[y, cols].mean()
        d[y, cols] -= 1.0
    d /= B
    return loss, d


def mean_logits_loss(Z: np.ndarray, y: np.ndarray,
                     S: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Cross-entropy of the mean-logits aggregate and its gradient, which is the same for every
    unit: returns (loss, g) with g (C, B) float64 and dL/dZ[j] = g for every unit j. ``S``:
    ``mean_logits(Z)`` when the caller has it already."""
    M = np.shape(Z)[0]
    loss, dS = _cross_entropy(log_softmax(mean_logits(Z) if S is None else S, axis=0), y)
    return loss, dS / M


def margin_loss(Z: np.ndarray, y: np.ndarray, offsets: np.ndarray, scale: float = 1.0,
                S: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray, float, int]:
    """Lipschitz-margin cross-entropy of mean logits: CE of scale * (S_c + offsets[y, c])
    (offsets[y, y] = 0).

    With offsets = eps * K (K the margins' Lipschitz bounds) a zero loss needs every margin to
    exceed eps * K[y, c]: the certificate at radius eps. Returns (loss, g, d_offsets, d_scale,
    certified) with dL/dZ[j] = g (C, B) for every unit, d_offsets (C, C) = dL/d offsets,
    d_scale = dL/d scale, and the number of examples whose margins clear their offsets. ``S``:
    ``mean_logits(Z)`` when the caller has it already."""
    M, C, B = np.shape(Z)
    cols = np.arange(B)
    if S is None:
        S = mean_logits(Z)
    shifted = S + offsets[y].T  # offsets[y, y] = 0: the true logit is not raised
    raised = scale * shifted
    logp = log_softmax(raised, axis=0)
    loss = -logp[y, cols].mean()
    dR = np.exp(logp)  # dL / d raised
    dR[y, cols] -= 1.0
    dR /= B
    d_scale = float((dR * shifted).sum())
    dS = dR * scale
    d_off = np.zeros((C, C))
    np.add.at(d_off, y, dS.T)
    d_off[np.arange(C), np.arange(C)] = 0.0
    others = np.where(np.arange(C)[:, None] == y[None, :], -np.inf, shifted)
    certified = int((S[y, cols] > others.max(axis=0)).sum())
    return loss, dS / M, d_off, d_scale, certified


def aggregate_loss(Z: np.ndarray, y: np.ndarray, aggregate: str) -> tuple[float, np.ndarray]:
    """Cross-entropy of the aggregate and its gradient dL/dZ (same shape as Z).

    Z (M, C, B), y (B,) int class labels or (B, C) soft targets.
    """
    M, C, B = np.shape(Z)
    cols = np.arange(B)
    if aggregate == "mean_logits":
        loss, g = mean_logits_loss(Z, y)
        return loss, np.broadcast_to(g, (M, C, B)).copy()
    if aggregate == "mean_prob" and is_soft(y):
        P = softmax(np.asarray(Z, dtype=np.float64), axis=1)  # (M, C, B)
        pbar = np.maximum(P.mean(axis=0), 1e-30)  # (C, B)
        t = np.asarray(y, dtype=np.float64).T
        loss = -(t * np.log(pbar)).sum() / B
        G = -t / (M * B * pbar)  # dL/dP[j] for every unit j; then through each softmax
        dZ = P * (G - (P * G).sum(axis=1, keepdims=True))
        return loss, dZ
    if aggregate == "mean_prob":
        P = softmax(np.asarray(Z, dtype=np.float64), axis=1)  # (M, C, B)
        pbar_y = np.maximum(P[:, y, cols].mean(axis=0), 1e-30)  # (B,)
        loss = -np.log(pbar_y).mean()
        # dL/dZ_j[c] = -(P_j[y] / (M B pbar_y)) * (delta_cy - P_j[c])
        coef = -P[:, y, cols] / (M * B * pbar_y)  # (M, B)
        dZ = -P * coef[:, None, :]
        dZ[:, y, cols] += coef
        return loss, dZ
    if aggregate == "vote":
        raise ValueError("the vote aggregate is not differentiable; train it with the unit loss")
    raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def unit_loss(Z: npt.ArrayLike, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over units and examples of each unit's own cross-entropy, and dL/dZ."""
    Z = np.asarray(Z, dtype=np.float64)
    M, C, B = Z.shape
    cols = np.arange(B)
    logp = log_softmax(Z, axis=1)
    dZ = np.exp(logp)
    if is_soft(y):
        t = np.asarray(y, dtype=np.float64).T  # (C, B), the same target for every unit
        loss = -(t * logp).sum() / (M * B)
        dZ -= t
    else:
        loss = -logp[:, y, cols].mean()
        dZ[:, y, cols] -= 1.0
    return loss, dZ / (M * B)
