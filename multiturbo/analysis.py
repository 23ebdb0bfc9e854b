"""Representation quality of a trained run: alignment and uniformity (Wang & Isola 2020).

The paper's Listing 2, on L2-normalised embeddings (lower is better for both)::

    align(x, y, alpha=2) = mean_i ||x_i - y_i||^alpha          x, y: [N, d], row i = item i
    uniform(x, t=2)      = log mean_{i<j} exp(-t ||x_i - x_j||^2)

For a run, the embeddings are the projected views h_m of the test split (one pass, dropout
off, L2-normalised): alignment for every modality pair (the positives are the two
modalities of the same item), uniformity for every modality.

``analyze_run(run_dir)`` writes ``run_dir/analysis/analysis.json`` and the figures
(docs/analysis.md).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import rundir
from .errors import MultiturboError
from .model import TurboModel, eval_pass
from .progress import ProgressReporter
from .rundir import read_analysis as load_analysis  # the public name of docs/analysis.md
from .retrieval import cross_modal_retrieval


def align_loss(x: Tensor, y: Tensor, alpha: float = 2) -> Tensor:
    """Alignment of positive pairs: mean_i ||x_i - y_i||_2^alpha. x, y: [N, d] -> 0-d tensor."""
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniform_loss(x: Tensor, t: float = 2) -> Tensor:
    """Uniformity: log of the mean Gaussian potential exp(-t ||x_i - x_j||^2) over the pairs
    i < j. x: [N, d] with N >= 2 -> 0-d tensor. Memory O(N^2) (torch.pdist)."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def pair_key(a: str, b: str) -> str:
    """The name of a modality pair in ``analysis.json``: ``"audio~text"``."""
    return f"{a}~{b}"


def alignment_uniformity(
    embeddings: dict[str, Tensor], present: dict[str, Tensor] | None = None, alpha: float = 2, t: float = 2
) -> dict[str, dict[str, float]]:
    """Alignment of every modality pair (config order, a before b) and uniformity of every
    modality from normalised embeddings {m: [N, d]} (row i = item i in every modality).

    ``present`` ({m: bool [N]}, missing modalities): a pair's alignment uses the items that
    have both modalities, a modality's uniformity the items that have it; a value with too few
    items (alignment: 0, uniformity: < 2) is NaN."""
    n = {m: e.shape[0] for m, e in embeddings.items()}
    if len(set(n.values())) > 1:
        raise ValueError(f"every modality needs the same items, got sizes {n}")
    present = present or {}
    names = list(embeddings)
    everyone = torch.ones(next(iter(n.values()), 0), dtype=torch.bool)

    def align(a: str, b: str) -> float:
        keep = present.get(a, everyone) & present.get(b, everyone)
        return float(align_loss(embeddings[a][keep], embeddings[b][keep], alpha)) if keep.any() else math.nan

    def uniform(m: str) -> float:
        keep = present.get(m, everyone)
        return float(uniform_loss(embeddings[m][keep], t)) if int(keep.sum()) >= 2 else math.nan

    return {
        "alignment": {pair_key(a, b): align(a, b) for a, b in itertools.combinations(names, 2)},
        "uniformity": {m: uniform(m) for m in names},
    }


@dataclass
class Embeddings:
    """Normalised projected views of a split: ``views`` {m: [N, d]} (zero rows where an item
    lacks m), ``labels`` [N], ``present`` {m: bool [N]} (all True without missing data)."""

    views: dict[str, Tensor]
    labels: Tensor
    present: dict[str, Tensor]

    def of(self, m: str) -> tuple[Tensor, Tensor]:
        """The rows of the items that have modality m: ([n, d], labels [n])."""
        keep = self.present[m]
        return self.views[m][keep], self.labels[keep]


def embed(model: TurboModel, loader, device: torch.device | str = "cpu", progress: ProgressReporter | None = None) -> Embeddings:
    """Normalised projected views of one pass over a loader, dropout off, on the CPU (float32)."""
    if progress is not None:
        progress.start("embedding", total=len(loader))
    advance = (lambda n: progress.advance(items=n)) if progress is not None else None
    out = eval_pass(model, loader, device, advance, contrastive=True)
    if out is None:
        raise MultiturboError("The split to embed is empty; there is nothing to analyse.")
    return Embeddings({m: F.normalize(v, dim=-1) for m, v in out.views.items()}, out.labels, out.present)


def align_uniform_points(analysis: dict[str, Any], label: str, group: str | None = None) -> list[dict[str, Any]]:
    """Points for :func:`multiturbo.plots.plot_align_uniform` from one ``analysis.json``:
    one per modality pair a~b, with that pair's alignment and the mean uniformity of a and b
    (as Wang & Isola's loss averages the two sides). ``group`` defaults to the pair name.
    Pairs with an undefined value (null / NaN) are left out."""
    points = []
    for pair, align in analysis["alignment"].items():
        a, b = pair.split("~")
        values = (align, analysis["uniformity"][a], analysis["uniformity"][b])
        if any(v is None or math.isnan(v) for v in values):
            continue  # too few items (missing modalities)
        u = (values[1] + values[2]) / 2
        points.append({"label": label, "alignment": align, "uniformity": u, "group": group or pair})
    return points


def plot_runs_align_uniform(runs: Sequence[tuple[str, str | Path]], path: str | Path, title: str | None = None) -> list[dict[str, Any]]:
    """Fig. 2 across runs: ``runs`` is [(label, run_dir)] (e.g. the method of each run, a
    label repeated for seeds or folds); every analysed run contributes one point per modality
    pair (:func:`align_uniform_points`), unanalysed runs are skipped. Returns the points."""
    from .plots import plot_align_uniform  # matplotlib: a real start-up cost, paid only when drawing

    points = []
    for label, run_dir in runs:
        analysis = load_analysis(run_dir)
        if analysis:
            points += align_uniform_points(analysis, label)
    if points:
        plot_align_uniform(points, path, **({"title": title} if title else {}))
    return points


def analyze_run(
    run_dir: str | Path,
    progress: ProgressReporter | None = None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Embed the run's test split with its best weights and measure alignment / uniformity.

    Writes ``run_dir/analysis/analysis.json`` ({"alignment": {"a~b": float}, "uniformity":
    {m: float}, "n_items": N, ...}) and, with ``figures``, ``analysis/embeddings.png``
    (Fig. 3), ``analysis/align_uniform.png`` (Fig. 2 for this run), ``analysis/confusion.png``
    and ``analysis/learning_curves.png``. Returns the dict of analysis.json.
    """
    run = rundir.load_run(run_dir, device=device)
    split = rundir.test_split(run)
    if len(split) < 2:
        raise MultiturboError(f"The test split of {run.run_dir} has {len(split)} item(s); uniformity needs at least 2.")
    emb = embed(run.model, rundir.make_eval_loader(run, split, batch_size), run.device, progress)
    return write_analysis(run.run_dir, emb, classes=run.classes, method=run.config.method, figures=figures)


def write_analysis(
    run_dir: str | Path, emb: Embeddings, *, classes: list[str] | None = None, method: str | None = None, figures: bool = True
) -> dict[str, Any]:
    """Measure ``emb`` (the test split's :class:`Embeddings`) and write ``run_dir/analysis/``
    (analysis.json and, with ``figures``, every figure); returns the dict of analysis.json.
    For callers that already hold the trained model in memory; :func:`analyze_run` loads it."""
    run_dir = Path(run_dir)
    result: dict[str, Any] = {
        **alignment_uniformity(emb.views, emb.present),
        "retrieval": cross_modal_retrieval(emb.views, emb.present) if len(emb.views) > 1 else {},
        "n_items": int(emb.labels.numel()),
        "n_present": {m: int(p.sum()) for m, p in emb.present.items()},
        "split": "test",
        "weights": rundir.layout.BEST,
        "method": method,
        "modalities": list(emb.views),
        "alpha": 2,
        "t": 2,
    }
    rundir.write_analysis_file(run_dir, result)
    if figures:
        draw_run_figures(run_dir, embeddings=emb, classes=classes, analysis=result)
    return result


def draw_run_figures(
    run_dir: str | Path,
    *,
    embeddings: Embeddings | None = None,
    classes: list[str] | None = None,
    analysis: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Draw every figure of a run that its files (and the given embeddings) allow, into
    ``run_dir/analysis/``; returns {name: path} of the figures written."""
    from . import plots  # matplotlib: a real start-up cost, paid only when drawing

    run_dir = Path(run_dir)
    written: dict[str, Path] = {}
    info = rundir.read_info(run_dir) or {}
    classes = classes or info.get("classes")
    metrics = rundir.read_test_metrics(run_dir)
    figure = lambda name: written.setdefault(name, rundir.figure_path(run_dir, name))  # noqa: E731
    if metrics and "confusion" in metrics and classes:
        plots.plot_confusion(metrics["confusion"], classes, figure("confusion"))
    records = rundir.read_log(run_dir)
    if records:
        plots.plot_learning_curves(records, figure("learning_curves"))
    if embeddings is not None:
        parts = {m: embeddings.of(m) for m in embeddings.views}  # present items only
        plots.plot_circle_density({m: v for m, (v, _) in parts.items()}, figure("embeddings"),
                                  labels={m: lab for m, (_, lab) in parts.items()}, classes=classes)
    analysis = analysis or rundir.read_analysis(run_dir)
    if analysis and analysis.get("alignment"):
        label = str(analysis.get("method") or info.get("method") or run_dir.name)
        plots.plot_align_uniform(align_uniform_points(analysis, label), figure("align_uniform"))
    return written
