"""Figures of runs and comparisons (matplotlib Figure objects on the Agg canvas: no display, pyplot untouched).

Every function saves one PNG, closes its figure, and returns the data it plotted so that
tests (and users) can check the picture against its input.

- :func:`plot_align_uniform`: the paper's Fig. 2, alignment against uniformity, one colour
  per label (method), one marker per group (e.g. modality pair); lower-left is better.
- :func:`plot_circle_density`: the paper's Fig. 3 (after Wang & Isola's Fig. 1), each
  modality's embeddings projected to 2-D by uncentred PCA, put on the unit circle, a
  Gaussian KDE of the points in R^2 and a Gaussian KDE of the angles.
- :func:`plot_confusion`: a confusion matrix with class names.
- :func:`plot_learning_curves`: train CE, contrastive total and every Turbo term, and the
  validation metrics per epoch, from ``metrics.jsonl`` records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _subplots(nrows: int = 1, ncols: int = 1, **kw):
    """A Figure not registered with pyplot (Agg canvas: no display, nothing to close, and
    the user's own pyplot backend is left alone) and its axes."""
    fig = Figure(figsize=kw.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


# --- Fig. 2: alignment vs uniformity -------------------------------------------------------

def plot_align_uniform(points: Sequence[Mapping[str, Any]], path: str | Path, title: str = "Alignment and uniformity (lower is better)") -> dict[str, dict[str, np.ndarray]]:
    """Scatter of uniformity (x) against alignment (y).

    points: dicts with ``label`` (colour and legend entry, e.g. the method), ``alignment``,
    ``uniformity`` and optionally ``group`` (marker, e.g. the modality pair or the run).
    Returns {label: {"uniformity": [n], "alignment": [n], "group": [n]}} as plotted.
    """
    if not points:
        raise ValueError("plot_align_uniform needs at least one point")
    labels = list(dict.fromkeys(str(p["label"]) for p in points))
    groups = list(dict.fromkeys(str(p.get("group") or "") for p in points))
    colours = colormaps["tab10"]
    fig, ax = _subplots(figsize=(5.5, 4.5))
    plotted: dict[str, dict[str, np.ndarray]] = {}
    for i, label in enumerate(labels):
        pts = [p for p in points if str(p["label"]) == label]
        xs = np.array([float(p["uniformity"]) for p in pts])
        ys = np.array([float(p["alignment"]) for p in pts])
        gs = np.array([str(p.get("group") or "") for p in pts])
        plotted[label] = {"uniformity": xs, "alignment": ys, "group": gs}
        for g in dict.fromkeys(gs):
            sel = gs == g
            marker = MARKERS[groups.index(g) % len(MARKERS)]
            name = f"{label} ({g})" if g and len(groups) > 1 else label
            ax.scatter(xs[sel], ys[sel], s=60, color=colours(i % 10), marker=marker, label=name, edgecolors="black", linewidths=0.5)
    ax.set_xlabel(r"uniformity $\mathcal{L}_{uniform}$ (t = 2)")
    ax.set_ylabel(r"alignment $\mathcal{L}_{align}$ ($\alpha$ = 2)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)
    return plotted


# --- Fig. 3: embeddings on the unit circle ---------------------------------------------------

def project_2d(x: Tensor) -> Tensor:
    """Project [N, d] onto its top-2 uncentred principal directions (right singular vectors
    of x itself, no mean removal) -> [N, 2]. Uncentred, so a cluster around a mean direction
    stays a cluster; centred PCA would spread it around the circle and hide the collapse."""
    x = x.float()
    if x.shape[1] <= 2:
        return torch.nn.functional.pad(x, (0, 2 - x.shape[1]))
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh: [min(N, d), d]
    basis = vh[:2].T  # [d, 2]
    if basis.shape[1] < 2:
        basis = torch.nn.functional.pad(basis, (0, 2 - basis.shape[1]))
    # fix the sign so the picture does not flip between runs: mean projection >= 0
    proj = x @ basis
    signs = torch.where(proj.mean(0) < 0, -1.0, 1.0)
    return proj * signs


def circle_points(x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, d] -> (points on the unit circle [N, 2], their angles [N] in (-pi, pi])."""
    p = torch.nn.functional.normalize(project_2d(x), dim=1).double().numpy()
    return p, np.arctan2(p[:, 1], p[:, 0])


def angle_bandwidth(angles: np.ndarray, minimum: float = 0.02) -> float:
    """Scott's rule on the circular standard deviation sqrt(-2 ln R) (R: mean resultant
    length), so that a cluster across the +-pi cut is not taken for a wide spread; at least
    ``minimum`` radians."""
    r = float(np.hypot(np.cos(angles).mean(), np.sin(angles).mean()))
    circ_std = math.sqrt(-2.0 * math.log(min(max(r, 1e-12), 1.0)))
    return max(circ_std * len(angles) ** (-1 / 5), minimum)


def gaussian_kde(data: np.ndarray, query: np.ndarray, factor: float | None = None) -> np.ndarray:
    """scipy.stats.gaussian_kde(data.T, bw_method=factor)(query.T) in numpy: data [n, d], query [m, d];
    the kernel covariance is the data's (ddof = 1) times factor^2 (default Scott's n^(-1/(d+4))).
    Raises LinAlgError when that covariance is singular. (scipy.stats took a second to import in
    every run, for this alone: benchmarks/bench_startup.py.)"""
    n, d = data.shape
    factor = n ** (-1.0 / (d + 4)) if factor is None else factor
    cov = np.atleast_2d(np.cov(data, rowvar=False)) * factor**2
    chol = np.linalg.cholesky(cov)  # LinAlgError if not positive definite
    whiten = np.linalg.inv(chol)  # z = whiten @ x has unit covariance
    zd, zq = data @ whiten.T, query @ whiten.T
    norm = 1.0 / (n * (2 * np.pi) ** (d / 2) * float(np.prod(np.diag(chol))))
    out = np.empty(len(query))
    for start in range(0, len(query), 2048):  # [chunk, n] distances at a time
        q = zq[start:start + 2048]
        d2 = (q**2).sum(1)[:, None] + (zd**2).sum(1)[None, :] - 2 * q @ zd.T
        out[start:start + 2048] = np.exp(-0.5 * np.maximum(d2, 0.0)).sum(1) * norm
    return out


def angle_density(angles: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Periodic Gaussian KDE of angles (a Gaussian KDE of the angles shifted by -2pi, 0, +2pi with
    the kernel width of :func:`angle_bandwidth`), evaluated on ``grid`` in [-pi, pi]; integrates
    to 1 over [-pi, pi]."""
    angles = np.asarray(angles, dtype=float)
    wrapped = np.concatenate([angles - 2 * np.pi, angles, angles + 2 * np.pi])
    factor = angle_bandwidth(angles) / float(np.sqrt(np.cov(wrapped)))  # kernel sd = bandwidth
    return 3.0 * gaussian_kde(wrapped[:, None], np.asarray(grid, dtype=float)[:, None], factor)


def plane_density(points: np.ndarray, size: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Gaussian KDE of 2-D points on a [-1.25, 1.25]^2 grid: (xx, yy, density), or None if the
    points are degenerate (fewer than 3, or all on one line: the KDE's covariance is singular)."""
    lin = np.linspace(-1.25, 1.25, size)
    xx, yy = np.meshgrid(lin, lin)
    points = np.asarray(points, dtype=float)
    if len(points) < 3:
        return None
    try:
        density = gaussian_kde(points, np.column_stack([xx.ravel(), yy.ravel()]))
    except np.linalg.LinAlgError:
        return None
    return xx, yy, density.reshape(xx.shape)


def plot_circle_density(
    embeddings: Mapping[str, Tensor],
    path: str | Path,
    *,
    labels: Tensor | Mapping[str, Tensor] | None = None,
    classes: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """One column per modality: top, the Gaussian KDE of the points on the unit circle in
    R^2 with the points (coloured by class when ``labels`` is given); bottom, the KDE of the
    angles. embeddings: {m: [N, d]}; labels: [N], or {m: [N_m]} when the modalities hold
    different items (missing modalities); a modality without items gets an empty panel. Returns {m: {"points": [N, 2], "angles": [N],
    "grid": [G], "density": [G]}}."""
    names = list(embeddings)
    fig, axes = _subplots(2, len(names), figsize=(3.4 * len(names), 6.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.4]})
    grid = np.linspace(-np.pi, np.pi, 361)
    cmap = colormaps["tab10"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for j, m in enumerate(names):
        if embeddings[m].shape[0] == 0:
            axes[0, j].set_title(f"{m} (no items)")
            continue
        points, angles = circle_points(embeddings[m])
        density = angle_density(angles, grid)
        out[m] = {"points": points, "angles": angles, "grid": grid, "density": density}
        ax = axes[0, j]
        plane = plane_density(points)
        if plane is not None:
            ax.imshow(plane[2], extent=(-1.25, 1.25, -1.25, 1.25), origin="lower", cmap="Blues")
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(t), np.sin(t), color="grey", lw=0.6)
        lab = labels.get(m) if isinstance(labels, Mapping) else labels
        if lab is not None:
            lab = lab.numpy() if isinstance(lab, Tensor) else np.asarray(lab)
            for c in np.unique(lab):
                sel = lab == c
                name = classes[int(c)] if classes is not None else str(int(c))
                ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(int(c) % 10), label=name, alpha=0.7)
            if j == 0:
                ax.legend(fontsize=7, loc="upper right", markerscale=2)
        else:
            ax.scatter(points[:, 0], points[:, 1], s=6, color="black", alpha=0.5)
        ax.set_xlim(-1.25, 1.25)
        ax.set_ylim(-1.25, 1.25)
        ax.set_aspect("equal")
        ax.set_title(m)
        ax.set_xticks([])
        ax.set_yticks([])
        ax2 = axes[1, j]
        ax2.hist(angles, bins=36, range=(-np.pi, np.pi), density=True, color="lightgrey")
        ax2.plot(grid, density, color="C0")
        ax2.set_xlim(-np.pi, np.pi)
        ax2.set_xlabel("angle (rad)")
        if j == 0:
            ax2.set_ylabel("density")
    fig.suptitle(title or "Test embeddings on the unit circle (uncentred PCA to 2-D)", fontsize=10)
    _save(fig, path)
    return out


# --- confusion matrix ---------------------------------------------------------------------------

def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = "Test confusion matrix") -> np.ndarray:
    """Confusion matrix [C, C] (rows = true class, columns = predicted), cells coloured by
    the row-normalised rate and labelled with the counts. Returns the counts as plotted."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"confusion must be {len(classes)} x {len(classes)} for classes {list(classes)}, got shape {cm.shape}")
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    fig, ax = _subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.7 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for k in range(n):
            ax.text(k, i, str(cm[i, k]), ha="center", va="center", color="white" if rates[i, k] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save(fig, path)
    return cm


# --- learning curves ----------------------------------------------------------------------------

def learning_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train/ce": (epochs, values), "term/audio1~text1": ..., "val/ua": ..., "lr/audio": ...} from
    ``metrics.jsonl`` records; non-numeric values (confusion) are left out, None -> NaN."""
    series: dict[str, tuple[list[int], list[float]]] = {}

    def add(key: str, epoch: int, value: Any) -> None:
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            xs, ys = series.setdefault(key, ([], []))
            xs.append(epoch)
            ys.append(math.nan if value is None else float(value))

    for r in records:
        e = int(r["epoch"])
        for k, v in (r.get("train") or {}).items():
            add(f"train/{k}", e, v)
        for k, v in (r.get("terms") or {}).items():
            add(f"term/{k}", e, v)
        for k, v in (r.get("val") or {}).items():
            add(f"val/{k}", e, v)
        for k, v in (r.get("lr") or {}).items():  # each param group's learning rate at the epoch's end
            add(f"lr/{k}", e, v)
    return {k: (np.array(xs), np.array(ys, dtype=float)) for k, (xs, ys) in series.items()}


def plot_learning_curves(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "Learning curves") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Panels: train losses (total, CE, contrastive), every Turbo term, validation metrics (WA,
    UA, F1, EER), validation loss, and (when logged) each param group's learning rate at the
    end of the epoch (log scale); x = epoch. Returns :func:`learning_series`."""
    if not records:
        raise ValueError("plot_learning_curves needs at least one metrics.jsonl record")
    series = learning_series(records)
    panels = [
        ("train losses", [k for k in ("train/loss", "train/ce", "train/contrastive") if k in series]),
        ("Turbo terms (train)", sorted(k for k in series if k.startswith("term/"))),
        ("validation metrics", [k for k in ("val/wa", "val/ua", "val/f1", "val/eer") if k in series]),
        ("validation loss", [k for k in ("val/loss",) if k in series]),
    ]
    lrs = sorted(k for k in series if k.startswith("lr/"))
    if lrs:
        panels.append(("learning rate (end of epoch)", lrs))
    fig, axes = _subplots(2, 3 if lrs else 2, figsize=(15 if lrs else 10, 7), squeeze=False)
    if lrs:
        axes[1, 2].axis("off")
    for ax, (name, keys) in zip(axes.ravel(), panels):
        for k in keys:
            xs, ys = series[k]
            ax.plot(xs, ys, marker="o", ms=3, label=k.split("/", 1)[1])
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if keys and name.startswith("learning rate") and all((series[k][1] > 0).all() for k in keys):
            ax.set_yscale("log")
        if keys:
            ax.legend(fontsize=7, ncol=2 if len(keys) > 6 else 1)
        else:
            ax.text(0.5, 0.5, "none (vanilla: no contrastive term)" if "Turbo" in name else "none", ha="center", va="center", transform=ax.transAxes)
    best = [int(r["epoch"]) for r in records if r.get("best")]
    if best:
        for ax in axes.ravel()[: len(panels)]:
            ax.axvline(best[-1], color="grey", ls=":", lw=1)
    fig.suptitle(title + (f" (dotted: best epoch {best[-1]})" if best else ""), fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return series
