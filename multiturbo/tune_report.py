"""The summary of a ``multiturbo tune`` study: one row per trial, the best trial, and Optuna's
optimisation-history and parameter-importance figures (``optuna.visualization.matplotlib``).

Written into the tuning output directory (rewritten by every process at its end, atomically, under
a lock file ``OUT/.tune.lock`` so that the summary written last is the one that read the study last)::

    OUT/tune.md          the table, the best trial, the figures (or why one is missing)
    OUT/tune.csv         the same rows as numbers
    OUT/history.png      the objective of every completed trial and the best so far
    OUT/importance.png   fANOVA importance of each tuned key (needs two completed trials)
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock
from rich.table import Table

from .checkpoint import _atomic
from .stats import fmt

HISTORY_PNG = "history.png"
IMPORTANCE_PNG = "importance.png"
TUNE_MD = "tune.md"
TUNE_CSV = "tune.csv"
TUNE_LOCK = ".tune.lock"


def trial_rows(study) -> list[dict[str, Any]]:
    """One mapping per trial of ``study``, in trial order: ``trial``, ``state`` (complete, pruned,
    fail, running, waiting), ``value`` (None unless complete), ``epochs`` (the last step reported: the
    epoch; with tune.folds, fold i's epoch e is step i x train.epochs + e),
    ``best_epoch``, ``seconds``, ``params`` ({key: value}), ``run_dir``, ``note`` (why it was pruned
    or failed)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append({
            "trial": t.number,
            "state": t.state.name.lower(),
            "value": t.value if t.state.name == "COMPLETE" else None,
            "epochs": steps[-1] if steps else None,
            "best_epoch": t.user_attrs.get("best_epoch"),
            "seconds": t.duration.total_seconds() if t.duration is not None else None,
            "params": dict(t.params),
            "run_dir": t.user_attrs.get("run_dir", ""),
            "note": t.user_attrs.get("reason") or t.user_attrs.get("error") or "",
            "test": t.user_attrs.get("test") or {},
        })
    return rows


def best_row(rows: Sequence[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    """The completed trial with the best value (ties: the earliest), None when none completed."""
    done = [r for r in rows if r["value"] is not None]
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda r: (sign * r["value"], r["trial"]))


def _keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r["params"]))


def _value(v: Any) -> str:
    return fmt(v, 4) if isinstance(v, float) else ("" if v is None else str(v))


def param_text(v: Any) -> str:
    """A sampled value: floats to 4 significant digits (a learning rate of 3.1e-4 stays readable)."""
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def tune_markdown(rows: Sequence[dict[str, Any]], *, study_name: str, storage: str, metric: str, direction: str,
                  figures: dict[str, str | None]) -> str:
    """tune.md: the study, the counts per state, the best trial, the table, the figures (or why not)."""
    keys = _keys(rows)
    counts = {s: sum(r["state"] == s for r in rows) for s in dict.fromkeys(r["state"] for r in rows)}
    lines = [f"# Tuning: {study_name}", "",
             f"Storage `{storage}`; objective: val {metric} at each trial's best epoch ({direction}). "
             f"{len(rows)} trial(s): " + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none") + ".", ""]
    best = best_row(rows, direction)
    if best is None:
        lines += ["No trial has completed yet.", ""]
    else:
        params = ", ".join(f"`{k}` = {param_text(v)}" for k, v in best["params"].items())
        test = ", ".join(f"{k} {fmt(v)}" for k, v in best["test"].items())
        lines += ["## Best trial", "",
                  f"Trial {best['trial']}: val {metric} **{fmt(best['value'])}** (best epoch {best['best_epoch']}); {params}. "
                  f"Run directory: `{best['run_dir']}`." + (f" Its test metrics (not used to choose it): {test}." if test else ""), ""]
    lines += ["## Trials", "", "| trial | state | val " + metric + " | epochs | " + " | ".join(f"`{k}`" for k in keys) + " | seconds | run directory | note |",
              "|" + "---|" * (7 + len(keys))]
    for r in rows:
        cells = [str(r["trial"]), r["state"], _value(r["value"]), _value(r["epochs"]), *(param_text(r["params"].get(k)) for k in keys),
                 fmt(r["seconds"], 1) if r["seconds"] is not None else "", f"`{r['run_dir']}`" if r["run_dir"] else "", r["note"].replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Figures", ""]
    for name, title in ((HISTORY_PNG, "Optimisation history"), (IMPORTANCE_PNG, "Parameter importance (fANOVA)")):
        reason = figures.get(name)
        lines.append(f"![{title}]({name})" if reason is None else f"{title}: not drawn ({reason}).")
        lines.append("")
    return "\n".join(lines)


def tune_csv(rows: Sequence[dict[str, Any]], metric: str) -> str:
    keys = _keys(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "state", f"val_{metric}", "epochs", "best_epoch", *keys, "seconds", "run_dir", "note"])
    for r in rows:
        writer.writerow([r["trial"], r["state"], "" if r["value"] is None else r["value"], r["epochs"] or "", r["best_epoch"] or "",
                         *(r["params"].get(k, "") for k in keys), "" if r["seconds"] is None else round(r["seconds"], 2), r["run_dir"], r["note"]])
    return buf.getvalue()


def tune_rich_table(rows: Sequence[dict[str, Any]], metric: str, direction: str, title: str) -> Table:
    """The console table: one row per trial, the best marked with *."""
    keys = _keys(rows)
    best = best_row(rows, direction)
    table = Table(title=title)
    for c in ("trial", "state", f"val {metric}", "epochs", *keys):
        table.add_column(c, justify="left" if c == "state" else "right", no_wrap=True)
    for r in rows:
        mark = " *" if best is not None and r["trial"] == best["trial"] else ""
        table.add_row(f"{r['trial']}{mark}", r["state"], _value(r["value"]), _value(r["epochs"]), *(param_text(r["params"].get(k)) for k in keys))
    return table


def _save_plot(path: Path, draw: Callable[[], Any]) -> None:
    """Draw an Optuna matplotlib figure (it returns Axes; pyplot-backed) and write it atomically as PNG."""
    import matplotlib  # noqa: PLC0415  (start-up cost)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    with matplotlib.rc_context(), warnings.catch_warnings():  # Optuna sets the ggplot style: keep it to this figure
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for its matplotlib module
        ax = draw()
        fig = (np.ravel(ax)[0] if isinstance(ax, np.ndarray) else ax).figure
        try:
            fig.set_size_inches(7.5, 4.5)
            fig.tight_layout()
            _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        finally:
            plt.close(fig)


def write_figures(out: Path, study, metric: str) -> dict[str, str | None]:
    """history.png and importance.png; ``{file: None}`` when written, else the reason it is not."""
    from optuna.visualization import matplotlib as ovm  # noqa: PLC0415  (optional dependency, checked by multiturbo.tune)

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    reasons: dict[str, str | None] = {}
    if not complete:
        reasons[HISTORY_PNG] = "no trial has completed yet"
    else:
        _save_plot(out / HISTORY_PNG, lambda: ovm.plot_optimization_history(study, target_name=f"val {metric}"))
        reasons[HISTORY_PNG] = None
    varied = [k for k in {k for t in complete for k in t.params} if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) < 2:
        reasons[IMPORTANCE_PNG] = f"it needs at least 2 completed trials, the study has {len(complete)}"
    elif not varied:
        reasons[IMPORTANCE_PNG] = "no tuned value differs between the completed trials"
    else:
        try:
            _save_plot(out / IMPORTANCE_PNG, lambda: ovm.plot_param_importances(study, target_name=f"val {metric}"))
            reasons[IMPORTANCE_PNG] = None
        except (ValueError, RuntimeError) as exc:  # Optuna's refusals (e.g. too few distinct trials)
            reasons[IMPORTANCE_PNG] = f"Optuna: {exc}"
    for name, reason in reasons.items():
        if reason is not None:
            (out / name).unlink(missing_ok=True)  # a figure of an earlier state would mislead
    return reasons


def write_tune_report(out: Path, study, *, storage: str, metric: str, direction: str) -> list[dict[str, Any]]:
    """tune.md, tune.csv and the figures in ``out``; returns the rows (:func:`trial_rows`).

    Several processes on one study each write the summary at their end. The study is read and the
    files written under one lock (``out/.tune.lock``), so the reads and the writes happen in the same
    order: the summary left on disk is the one that read the study last, which sees every trial that
    any of the processes finished (without the lock, a process that read the study earlier but drew
    its figures slower could overwrite a complete summary with one that still lists a trial running).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / TUNE_LOCK):
        rows = trial_rows(study)
        figures = write_figures(out, study, metric)
        text = tune_markdown(rows, study_name=study.study_name, storage=storage, metric=metric, direction=direction, figures=figures)
        _atomic(out / TUNE_MD, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        table = tune_csv(rows, metric)
        _atomic(out / TUNE_CSV, lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))
    return rows
