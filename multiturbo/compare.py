"""Train and test several methods (vanilla, cross, turbo) on one config, side by side.

The table has the shape of the paper's Table 1: one row per method, WA / UA / F1 (and
EER for two classes) on the test split.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import time
from pathlib import Path
from typing import Sequence

from rich.table import Table

from .config import ExperimentConfig, check_config, load_raw, validate_config
from .errors import MultiturboError
from .loss import pair_names
from .plugins import get_registries
from .progress import ProgressReporter
from .run import prepare_run_dir, run_experiment

METHODS = ("vanilla", "cross", "turbo")
METHOD_LABELS = {"vanilla": "Vanilla", "cross": "+ CL_cross", "turbo": "+ Turbo"}
METRIC_COLUMNS = ("wa", "ua", "f1", "eer")


def method_configs(path: str | Path, overrides: Sequence[str], methods: Sequence[str]) -> dict[str, ExperimentConfig]:
    """One resolved config per method: the file, then ``overrides``, then ``method: <m>``.

    Every config is validated before anything trains, so a bad config fails at once."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MultiturboError(f"Unknown method(s) {', '.join(unknown)} in --methods. Known methods: {', '.join(METHODS)}.")
    raw = load_raw(path, overrides)
    registries = get_registries()
    return {m: check_config(validate_config({**raw, "method": m}, str(path)), registries, str(path)) for m in methods}


def _term_counts(cfg: ExperimentConfig) -> tuple[int, int]:
    t = cfg.turbo
    names = list(cfg.modalities)
    n_in = len(pair_names(names, t.passes, in_modal=t.in_modal, cross_modal=False)) if t.in_modal else 0
    n_cross = len(pair_names(names, t.passes, in_modal=False, cross_modal=t.cross_modal)) if t.cross_modal else 0
    return n_in, n_cross


def compare_methods(
    configs: dict[str, ExperimentConfig],
    out: Path | None,
    *,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
) -> list[dict]:
    """Run every method into ``out/<method>``; write ``comparison.md`` and ``.csv``; return the rows."""
    progress = progress or ProgressReporter(quiet=True)
    first = next(iter(configs.values()))
    out = prepare_run_dir(out or Path("runs") / f"{first.name or 'run'}-compare-{dt.datetime.now():%Y%m%d-%H%M%S}", overwrite)
    rows = []
    for i, (method, cfg) in enumerate(configs.items(), 1):
        progress.log(f"[{i}/{len(configs)}] {method}: K={cfg.turbo.passes}, in-modal={cfg.turbo.in_modal}, cross-modal={cfg.turbo.cross_modal}")
        start = time.perf_counter()
        metrics = run_experiment(cfg, out / method, overwrite=overwrite, progress=progress, label=f"{method} ")
        n_in, n_cross = _term_counts(cfg)
        rows.append({
            "method": method, "label": METHOD_LABELS[method], "K": cfg.turbo.passes,
            "in_terms": n_in, "cross_terms": n_cross,
            **{k: metrics[k] for k in METRIC_COLUMNS if k in metrics},
            "best_epoch": metrics["best_epoch"], "seconds": time.perf_counter() - start,
        })
    (out / "comparison.md").write_text(to_markdown(rows), encoding="utf-8")
    (out / "comparison.csv").write_text(to_csv(rows), encoding="utf-8")
    return rows


def _columns(rows: list[dict]) -> list[str]:
    metric_cols = [k for k in METRIC_COLUMNS if any(k in r for r in rows)]
    return ["label", "K", "in_terms", "cross_terms", *metric_cols, "best_epoch", "seconds"]


HEADERS = {"label": "Method", "K": "K", "in_terms": "in", "cross_terms": "cross",
           "wa": "WA", "ua": "UA", "f1": "F1", "eer": "EER", "best_epoch": "best ep.", "seconds": "time (s)"}


def _fmt(value, column: str = "") -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(HEADERS[c] for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, ""), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    cols = ["method", *(_columns(rows))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_rich_table(rows: list[dict], title: str = "Test metrics") -> Table:
    cols = _columns(rows)
    table = Table(title=title, caption="in / cross: number of in-modal / cross-modal InfoNCE terms")
    for c in cols:
        table.add_column(HEADERS[c], justify="left" if c == "label" else "right", no_wrap=c == "label", overflow="fold")
    for r in rows:
        table.add_row(*(_fmt(r.get(c, ""), c) for c in cols))
    return table
