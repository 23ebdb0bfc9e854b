"""Markdown reports: one run (``run_dir/report.md``) and a comparison (``out_dir/report.md``).

Figures are linked with paths relative to the report, so the directory can be moved,
zipped or viewed on a forge as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from . import rundir
from .analysis import draw_run_figures
from .checkpoint import _atomic
from .composition import MIN_CLASS_ITEMS, MIN_EVAL_ITEMS, composition_markdown
from .errors import MultiturboError
from .metrics import METRICS
from .stats import fmt


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (cells converted with str)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _image(report_dir: Path, path: Path, alt: str) -> str:
    return f"![{alt}]({Path(os.path.relpath(path, report_dir)).as_posix()})"


def _write(path: Path, text: str) -> Path:
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def run_title(info: dict, fallback: str) -> str:
    """What a run is, for titles: "demo: turbo on synthetic, fold 0, seed 1" (run.json's fields;
    run directories written before they existed give the directory name)."""
    name, method, dataset = info.get("experiment"), info.get("method"), info.get("dataset")
    if not (method and dataset):
        return f"{method or 'run'}: {fallback}"
    where = [f"fold {info['fold']}"] if info.get("fold") is not None else []
    where += [f"seed {info['seed']}"] if info.get("seed") is not None else []
    return f"{name or fallback}: {method} on {dataset}" + (f", {', '.join(where)}" if where else "")


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md``: run facts, test metrics, confusion matrix, learning curves
    and, when ``analysis/analysis.json`` exists, alignment / uniformity and their figures.

    The confusion and learning-curve figures are drawn from the metrics files if absent."""
    run_dir = Path(run_dir)
    info = rundir.read_info(run_dir)
    if info is None:
        raise MultiturboError(f"{run_dir}: no run.json; give a run directory written by multiturbo run.")
    metrics = rundir.read_test_metrics(run_dir)
    if not rundir.has_figure(run_dir, "confusion") or not rundir.has_figure(run_dir, "learning_curves"):
        draw_run_figures(run_dir)
    analysis = rundir.read_analysis(run_dir)
    figure = lambda name, alt: _image(run_dir, rundir.figure_path(run_dir, name), alt)  # noqa: E731

    parts = [f"# Run report: {run_title(info, run_dir.name)}", ""]
    facts = [
        ("method", info.get("method")), ("status", info.get("status")), ("modalities", ", ".join(info.get("modalities", []))),
        ("classes", ", ".join(info.get("classes", []))),
        ("split sizes", ", ".join(f"{k} {v}" for k, v in (info.get("split_sizes") or {}).items())),
        ("device", info.get("device")), ("seconds", fmt(float(info["seconds"]), 1) if info.get("seconds") is not None else None),
        ("multiturbo / torch", f"{info.get('multiturbo_version')} / {info.get('torch_version')}"),
    ]
    parts += [markdown_table(["", ""], [(k, v) for k, v in facts if v not in (None, "")]), ""]
    parts += composition_section(info)

    parts += ["## Test metrics (best weights)", ""]
    if metrics:
        keys = [k for k in METRICS if k in metrics]
        parts += [markdown_table([METRICS[k].label for k in keys], [[fmt(metrics[k]) for k in keys]]), ""]
        extra = [f"{k} {metrics[k]}" for k in ("best_epoch", "epochs_run", "stopped_early") if k in metrics]
        if extra:
            parts += [", ".join(extra).replace("_", " "), ""]
        if rundir.has_figure(run_dir, "confusion"):
            parts += [figure("confusion", "confusion matrix"), ""]
    else:
        parts += ["No metrics.json: the run has not been tested (it did not finish).", ""]

    log = rundir.read_log(run_dir)
    if log and rundir.has_figure(run_dir, "learning_curves"):
        parts += ["## Learning curves", "", figure("learning_curves", "learning curves"), ""]
    parts += diagnostics_section(log)

    parts += ["## Alignment and uniformity (test split, lower is better)", ""]
    if analysis:
        parts += [
            f"{analysis['n_items']} test items, one pass with dropout off, L2-normalised projected views; "
            f"alignment with alpha = {analysis.get('alpha', 2)}, uniformity with t = {analysis.get('t', 2)} (docs/analysis.md).",
            "",
        ]
        if analysis["alignment"]:
            parts += [markdown_table(["modality pair", "alignment"], [(k, fmt(v)) for k, v in analysis["alignment"].items()]), ""]
        parts += [markdown_table(["modality", "uniformity"], [(k, fmt(v)) for k, v in analysis["uniformity"].items()]), ""]
        for name, alt in (("align_uniform", "alignment vs uniformity"), ("embeddings", "embeddings on the unit circle")):
            if rundir.has_figure(run_dir, name):
                parts += [figure(name, alt), ""]
    else:
        parts += [f"Not analysed yet: run `multiturbo analyze {run_dir}`.", ""]
    return rundir.write_report(run_dir, "\n".join(parts))


def composition_section(info: dict) -> list[str]:
    """Markdown lines: items per class (missing modalities, groups) per split and the split warnings
    of run.json, or nothing for a run written before they were recorded."""
    composition = info.get("split_composition")
    if not composition:
        return []
    seeds = f"split seed {info['split_seed']}, " if info.get("split_seed") is not None else ""
    lines = ["## Splits", "", f"Items per split ({seeds}which a random split follows, not the training seed; docs/experiments.md).", "",
             *composition_markdown(composition), ""]
    warnings = info.get("split_warnings") or []
    lines += [f"**Warning**: {w}" for w in warnings]
    lines += ["" if warnings else f"No split warning (validation and test splits of {MIN_EVAL_ITEMS}+ items, "
              f"{MIN_CLASS_ITEMS}+ items of every class in every split).", ""]
    return lines


def diagnostics_section(log: Sequence[dict]) -> list[str]:
    """Markdown lines: the contrastive space on the validation split, per epoch (uniformity, recall@1
    against chance, terms against log(B)), and every collapse warning of the run, or nothing when the
    run logged no diagnostics (docs/training-dynamics.md)."""
    records = [r for r in log if r.get("diagnostics")]
    if not records:
        return []
    lines = ["## Contrastive space during training (validation split)", "",
             "Uniformity: mean over modalities (0 = collapsed to a point); recall@1: mean over ordered modality pairs; "
             "terms / log(B): mean over the contrastive terms (1.0 = what a collapsed space gives).", ""]
    rows = []
    for r in records:
        d = r["diagnostics"]
        mean = lambda xs: fmt(sum(xs) / len(xs), 3) if xs else "n/a"  # noqa: E731
        rows.append((r["epoch"], mean(list(d.get("uniformity", {}).values())), mean(list(d.get("recall@1", {}).values())),
                     fmt(d.get("chance_recall@1"), 3), mean(list(d.get("term_ratio", {}).values()))))
    lines += [markdown_table(["epoch", "uniformity", "recall@1", "chance", "terms / log(B)"], rows), ""]
    warned = [(r["epoch"], w) for r in records for w in r.get("warnings", [])]
    if warned:
        lines += [f"**Warning** (epoch {e}): {w}" for e, w in warned[-2:]]
        lines += ["", f"{len(warned)} warning(s) in all; the last ones are shown.", ""]
    else:
        lines += ["No collapse warning.", ""]
    return lines


def write_comparison_report(
    out_dir: str | Path,
    table_markdown: str,
    extra_sections: Sequence[tuple[str, str]] = (),
    figures: Sequence[str | Path] = (),
    *,
    title: str | None = None,
    run_dirs: Sequence[str | Path] = (),
) -> Path:
    """Write ``out_dir/report.md``: a title, the main table (markdown), each
    (heading, markdown body) of ``extra_sections``, the figures (linked relative to
    ``out_dir``; a figure's file stem becomes its caption) and links to each run's report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title or f'Comparison: {out_dir.name}'}", "", table_markdown.strip(), ""]
    for heading, body in extra_sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    if figures:
        parts += ["## Figures", ""]
        for fig in figures:
            fig = Path(fig)
            if not fig.is_absolute() and not fig.exists():
                fig = out_dir / fig
            parts += [_image(out_dir, fig, fig.stem.replace("_", " ")), ""]
    if run_dirs:
        parts += ["## Runs", ""]
        for rd in run_dirs:
            rd = Path(rd)
            target = rundir.report_target(rd)
            parts.append(f"- [{rd.name}]({Path(os.path.relpath(target, out_dir)).as_posix()})")
        parts.append("")
    return _write(out_dir / "report.md", "\n".join(parts))
