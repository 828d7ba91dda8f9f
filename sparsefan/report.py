"""The robustness experiment: attacks and certificates for a set of models, as a Markdown
report with PNG plots (``sparsefan robustness``; plots need matplotlib, the ``plot`` extra)."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sparsefan import attacks, certify
from sparsefan.network import Network

L0_BUDGETS = list(range(0, 41))
L2_GRID = [round(0.1 * i, 2) for i in range(31)]
PGD_L2_EPS = (0.5, 1.0, 1.58, 2.0)
LINF_EPS = (0.1, 0.2, 0.3)

# Published MNIST reference points (DESIGN §4), drawn as points on the plots.
ANCHORS_L2 = [("GloRo (deterministic)", 1.58, 0.628), ("BCOP (deterministic)", 1.58, 0.567)]
ANCHORS_L0 = [("FPA paper, median", 12, 0.5), ("randomized ablation, median (probabilistic)", 8,
                                                0.5)]
ANCHORS_TRADEOFF = [("BCOP", 0.988, 0.567)]  # (clean, certified L2 at 1.58)


def evaluate_model(net: Network, x: np.ndarray, y: np.ndarray,
                   rs_budgets: Sequence[int] = (5, 10, 20), rs_queries: int = 100,
                   ddn_steps: int = 100, pgd_steps: int = 40,
                   log: Callable[[str], object] = print,
                   n_threads: int | None = None) -> dict[str, Any]:
    """All attacks and certificates on (x, y); returns a JSON-able dict of per-example
    results and summary curves."""
    t0 = time.perf_counter()
    correct = net.predict(x, n_threads) == y
    out = {"name": net.name, "aggregate": net.aggregate, "n": int(len(y)),
           "clean_accuracy": float(correct.mean())}

    # L0: smallest number of pixels any attack needed (0 if already misclassified)
    sizes = {"greedy": attacks.greedy_l0(net, x, y, 40, n_threads=n_threads).size,
             "linear": attacks.linear_l0(net, x, y, max_pixels=40, n_threads=n_threads).size}
    for k in rs_budgets:
        sizes[f"sparse_rs_{k}"] = attacks.sparse_rs(net, x, y, k, rs_queries, seed=0,
                                                    n_threads=n_threads).size
    l0 = np.min(np.stack(list(sizes.values())), axis=0)
    l0 = np.where(correct, l0, 0)
    log(f"  L0 attacks done ({time.perf_counter() - t0:.0f}s)")

    # L2: minimal-norm DDN, plus PGD at fixed radii
    l2 = attacks.ddn(net, x, y, steps=ddn_steps, n_threads=n_threads).size
    l2 = np.where(correct, l2, 0.0)
    pgd_broken = {}
    for eps in PGD_L2_EPS:
        r = attacks.pgd(net, x, y, eps, steps=pgd_steps, restarts=1, n_threads=n_threads)
        pgd_broken[eps] = r.success
    log(f"  L2 attacks done ({time.perf_counter() - t0:.0f}s)")
    linf = {eps: float(1 - attacks.pgd(net, x, y, eps, norm="linf", steps=pgd_steps,
                                       n_threads=n_threads).success.mean())
            for eps in LINF_EPS}

    # certificates
    r0 = certify.l0_radius(net, x, y, n_threads=n_threads)
    try:
        r2 = certify.l2_radius(net, x, y, n_threads=n_threads)
    except ValueError:
        r2 = None
    log(f"  certificates done ({time.perf_counter() - t0:.0f}s)")

    # soundness, checked on every run: no attack beats a certificate
    violations = int(((l0 <= r0) & (r0 >= 0) & correct).sum())
    if r2 is not None:
        violations += int(((l2 < r2 * (1 - 1e-4)) & (r2 > 0)).sum())
        for eps in PGD_L2_EPS:  # PGD found an example inside a certified ball
            violations += int((pgd_broken[eps] & (r2 > eps)).sum())

    out["attack_l0_min"] = {name: float(np.median(np.where(correct, s, 0))) for name, s in
                            sizes.items()}
    out["robust_l0"] = {k: float(np.mean(l0 > k)) for k in L0_BUDGETS}
    broken_l2 = lambda eps: (l2 <= eps) | (pgd_broken[eps] if eps in pgd_broken else False)
    out["robust_l2"] = {e: float(np.mean(~broken_l2(e) & correct)) for e in L2_GRID}
    for eps in PGD_L2_EPS:
        out["robust_l2"][eps] = float(np.mean(~broken_l2(eps) & correct))
    out["robust_linf"] = linf
    out["median_l0"] = float(np.median(l0))
    out["median_l2"] = float(np.median(l2))
    out["certified_l0"] = {k: float(np.mean(r0 >= k)) for k in L0_BUDGETS}
    out["median_certified_l0"] = float(np.median(r0))
    if r2 is not None:
        out["certified_l2"] = {e: float(np.mean(r2 >= e)) for e in L2_GRID + [1.58]}
        out["median_certified_l2"] = float(np.median(r2))
    out["violations"] = violations
    out["seconds"] = time.perf_counter() - t0
    meta = getattr(net, "metadata", {}) or {}
    cfg = meta.get("config")
    cfg = cfg if isinstance(cfg, dict) else {}
    out["train_seconds"] = meta.get("train_seconds")
    out["trained_l2_epsilon"] = cfg.get("l2_epsilon", 0.0)
    out["trained_l0_radius"] = cfg.get("l0_radius", 0)
    return out


_CURVES = ("robust_l0", "robust_l2", "certified_l0", "certified_l2", "robust_linf")


def load_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The models of an earlier report's results.json, its curves keyed by numbers again (JSON
    keeps them as strings), to show beside new ones."""
    with open(path) as f:
        try:
            results = json.load(f)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path}: not a results.json of `sparsefan robustness` ({e})") \
                from None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ValueError(f"{path}: not a results.json of `sparsefan robustness` (a list of "
                         "model results)")
    for r in results:
        for key in _CURVES:
            if isinstance(r.get(key), dict):
                r[key] = {(int(k) if key.endswith("l0") else float(k)): v
                          for k, v in r[key].items()}
    return results


def _fmt(v, pct=True):
    return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:g}")


def write_report(results: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str],
                 command: str) -> str:
    """Write ``results.json``, ``report.md`` and the PNG plots (when matplotlib is installed)
    into ``out_dir`` (created if needed); returns the Markdown text."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    lines = ["# Robustness report", "", f"Command: `{command}`", "",
             f"{results[0]['n']} test images; pixels in [0, 1]. Robust accuracy counts examples "
             "that are classified correctly and that no attack broke within the budget. "
             "Minimal perturbations count misclassified examples as 0; certified radii count "
             "them as -1. Attacks: greedy saliency, linear-algebra (Shamir et al.) and "
             "Sparse-RS for L0; DDN and PGD for L2; PGD for Linf.", "",
             "| model | aggregate | trained for | train time | clean | median min L0 | "
             "robust @L0=10 | median cert. L0 | cert. @L0=4/8/12 | median min L2 | "
             "robust @L2=1.58 | cert. @L2=1.58 | median cert. L2 | Linf 0.1/0.3 | sound |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c0 = r["certified_l0"]
        cl2 = r.get("certified_l2", {})
        eps = r.get("trained_l2_epsilon") or 0.0
        r0 = r.get("trained_l0_radius") or 0
        trained = f"L2 eps {eps:g}" if eps else f"L0 {r0} px" if r0 else "accuracy"
        secs = r.get("train_seconds")
        ttime = "n/a" if secs is None else f"{secs / 60:.1f} min"
        lines.append(
            f"| {r['label']} | {r['aggregate']} | {trained} | {ttime} | "
            f"{_fmt(r['clean_accuracy'])} | "
            f"{r['median_l0']:g} | {_fmt(r['robust_l0'][10])} | {r['median_certified_l0']:g} | "
            f"{_fmt(c0[4])} / {_fmt(c0[8])} / {_fmt(c0[12])} | {r['median_l2']:.2f} | "
            f"{_fmt(r['robust_l2'][1.58])} | {_fmt(cl2.get(1.58))} | "
            f"{_fmt(r.get('median_certified_l2'), pct=False)} | "
            f"{_fmt(r['robust_linf'][0.1])} / {_fmt(r['robust_linf'][0.3])} | "
            f"{'yes' if r['violations'] == 0 else 'NO: ' + str(r['violations'])} |")
    lines += ["", "Per-attack median L0 (pixels):", ""]
    for r in results:
        lines.append(f"- {r['label']}: " + ", ".join(f"{k} {v:g}"
                                                     for k, v in r["attack_l0_min"].items()))
    plots = _plots(results, out_dir)
    if plots:
        lines += [""] + [f"![{p}]({p})" for p in plots]
    else:
        lines += ["", "(plots skipped: matplotlib is not installed; `pip install "
                  "'sparsefan[plot]'`)"]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


def _plots(results, out_dir):
    """PNG plots of the curves into ``out_dir``; returns their file names. Drawn on
    ``matplotlib.figure.Figure`` objects, never through pyplot, so the caller's backend and
    open figures are left alone."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    specs = [("robust_l0", "changed pixels (L0 budget)", "robust accuracy", "robust_l0.png", []),
             ("robust_l2", "L2 budget", "robust accuracy", "robust_l2.png", []),
             ("certified_l0", "L0 radius (pixels)", "certified accuracy", "certified_l0.png",
              ANCHORS_L0),
             ("certified_l2", "L2 radius", "certified accuracy", "certified_l2.png",
              ANCHORS_L2)]
    made = []
    for key, xlabel, ylabel, fname, anchors in specs:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        drawn = False
        for i, r in enumerate(results):
            if key not in r:
                continue
            pts = sorted((float(k), v) for k, v in r[key].items())
            # ten colours, then the next line style: every model stays distinguishable
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r["label"],
                    linestyle=("-", "--", ":", "-.")[(i // 10) % 4])
            drawn = True
        for (label, px, py), marker in zip(anchors, "*Dsv"):
            ax.plot([px], [py], marker, color="k", markersize=8, linestyle="none", label=label)
        if drawn:
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(os.path.join(out_dir, fname), dpi=100)
            made.append(fname)
    tradeoff = [r for r in results if "certified_l2" in r]
    if tradeoff:  # clean accuracy against certified L2 accuracy at 1.58
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for r in tradeoff:
            ax.plot([r["clean_accuracy"]], [r["certified_l2"][1.58]], "o")
            ax.annotate(r["label"], (r["clean_accuracy"], r["certified_l2"][1.58]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        for label, cx, cy in ANCHORS_TRADEOFF:
            ax.plot([cx], [cy], "k*", markersize=10)
            ax.annotate(label, (cx, cy), fontsize=7, xytext=(3, -10), textcoords="offset points")
        ax.axhline(ANCHORS_L2[0][2], color="k", linestyle=":", linewidth=1)
        ax.annotate(ANCHORS_L2[0][0], (0.0, ANCHORS_L2[0][2]), xycoords=("axes fraction", "data"),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel("certified accuracy at L2 1.58")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "tradeoff_l2.png"), dpi=100)
        made.append("tradeoff_l2.png")
    return made
