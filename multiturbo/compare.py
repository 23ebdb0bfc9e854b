"""Train and test several methods (vanilla, cross, turbo) on one config, side by side.

The table has the shape of the paper's Table 1: one row per method, WA / UA / F1 (and
EER for two classes) on the test split.

Without folds or seeds, each method runs once (the config's fold and seed) into
``OUT/<method>/``. With ``folds`` and/or ``seeds`` every method runs on every (fold, seed)
into ``OUT/<method>/fold<f>-seed<s>/``; the table shows mean ± sample std, and methods are
compared pairwise on the same (fold, seed) pairs (:func:`multiturbo.stats.paired_difference`).
Both modes resume: finished runs are skipped (:mod:`multiturbo.crossval`).

Every pair of methods is also compared item by item on each (fold, seed) both ran, from the
runs' ``test_predictions.csv`` (:func:`multiturbo.stats.item_paired_difference`: a bootstrap over
the test items and McNemar's test): the sampling noise of the test items alone, which is all a
single split with a single seed can show.

Files: ``comparison.md`` / ``.csv`` (methods x metrics), ``comparison_runs.csv`` (every
run), ``paired.md`` / ``.csv`` (paired differences; paired.md also the item-level table),
``paired_items.csv`` (the item-level differences), ``plan.yaml`` (what ``OUT`` holds).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from . import rundir
from .analysis import plot_runs_align_uniform
from .config import PRESETS, ExperimentConfig, check_config, load_raw, validate_config
from .errors import MultiturboError, RunDirError
from .loss import pair_names
from .metrics import TABLE_METRICS
from .plugins import get_registries
from .crossval import (
    Fold, RunRecord, RunSpec, check_plan, finish_plan_tracking, header, make_plan, metric_names, resolve_folds, run_name, run_tracked_grid,
    runs_csv, summarize, with_fold_seed, write_plan,
)
from .progress import ProgressReporter
from .report import write_comparison_report
from .stats import (
    MIN_T_TEST, ItemPairedStats, PairedStats, Summary, fmt, fmt_mean_std, fmt_p, fmt_test_p, item_paired_difference, paired_difference,
)

METHODS = ("vanilla", "cross", "turbo")
METHOD_LABELS = {"vanilla": "Vanilla", "cross": "+ CL_cross", "turbo": "+ Turbo"}


def method_configs(path: str | Path, overrides: Sequence[str], methods: Sequence[str]) -> dict[str, ExperimentConfig]:
    """One resolved config per method: the file, then ``overrides``, then ``method: <m>``.

    The config's ``turbo.passes`` / ``in_modal`` / ``cross_modal`` describe its own method (``method``,
    default turbo): the other methods are baselines and keep their presets' K and pair families (the
    paper's Table 1: vanilla and CL_cross with K = 1), so a config written for Turbo K = 2 does not turn
    the cross baseline into a K = 2 cross-only Turbo nor run vanilla's forward twice. Every other
    setting (temperature, weights, CE weight...) comes from the config for every method. Every config
    is validated before anything trains, so a bad config fails at once."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise MultiturboError(f"Unknown method(s) {', '.join(unknown)} in --methods. Known methods: {', '.join(METHODS)}.")
    raw = load_raw(path, overrides)
    registries = get_registries()
    return {m: check_config(validate_config(method_raw(raw, m), str(path)), registries, str(path)) for m in methods}


def method_raw(raw: dict[str, Any], method: str) -> dict[str, Any]:
    """``raw`` (a config mapping) for ``method``: its own method's turbo section as written; for another
    method, the section with that method's preset K and pair families over what the config set."""
    own = raw.get("method", "turbo")
    turbo = raw.get("turbo")
    if method == own or not isinstance(turbo, dict):
        return {**raw, "method": method}
    defining = {k: v for k, v in PRESETS[method].items() if k != "ce_weight"}  # vanilla's CE weight: unused without terms
    return {**raw, "method": method, "turbo": {**turbo, **defining}}


def _term_counts(cfg: ExperimentConfig) -> tuple[int, int]:
    t = cfg.turbo
    names = list(cfg.modalities)
    n_in = len(pair_names(names, t.passes, in_modal=t.in_modal, cross_modal=False)) if t.in_modal else 0
    n_cross = len(pair_names(names, t.passes, in_modal=False, cross_modal=t.cross_modal)) if t.cross_modal else 0
    return n_in, n_cross



@dataclass(frozen=True)
class PairedRow:
    """Method ``b`` against method ``a`` on one metric, over their shared (fold, seed) pairs."""

    a: str
    b: str
    metric: str
    stats: PairedStats

    def to_row(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "metric": self.metric, **self.stats.to_dict()}


@dataclass(frozen=True)
class ItemPairedRow:
    """Method ``b`` against method ``a`` on one metric, item by item over the test items of one (fold, seed)."""

    a: str
    b: str
    fold: Fold
    seed: int
    stats: ItemPairedStats

    def to_row(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "fold": "" if self.fold is None else self.fold, "seed": self.seed, **self.stats.to_dict()}


@dataclass
class CompareResult:
    """The outcome of :func:`compare_methods`.

    ``rows``: one per method (what ``comparison.csv`` holds: means, ``<metric>_std``, ``n``);
    ``summaries``: method -> metric -> Summary; ``runs``: every run (``comparison_runs.csv``);
    ``paired``: every method pair and metric (``paired.csv``); ``items``: every method pair, (fold, seed)
    and metric compared item by item (``paired_items.csv``), and ``item_notes`` why a pair was not."""

    out: Path
    methods: list[str]
    folds: list[Fold]
    seeds: list[int]
    grid: bool
    runs: list[RunRecord]
    rows: list[dict[str, Any]]
    summaries: dict[str, dict[str, Summary]]
    paired: list[PairedRow]
    items: list[ItemPairedRow] = field(default_factory=list)
    item_notes: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        return metric_names(self.runs)


def compare_methods(
    configs: dict[str, ExperimentConfig],
    out: Path | None,
    *,
    folds: Sequence[int] | str | None = None,
    seeds: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
) -> CompareResult:
    """Run every method (on every fold x seed when ``folds`` / ``seeds`` are given) into ``out``;
    resume finished runs; write the tables (see the module docstring); return the result."""
    progress = progress or ProgressReporter(quiet=True)
    first = next(iter(configs.values()))
    out = Path(out or Path("runs") / f"{first.name or 'run'}-compare-{dt.datetime.now():%Y%m%d-%H%M%S}")
    grid = folds is not None or seeds is not None
    fold_list = resolve_folds(first, folds)
    seed_list = list(seeds) if seeds else [first.seed]
    plan = make_plan("compare", configs, fold_list, seed_list)
    check_plan(out, plan, overwrite)
    write_plan(out, plan, overwrite)
    for method, cfg in configs.items():
        n_in, n_cross = _term_counts(cfg)
        progress.log(f"{method}: K={cfg.turbo.passes}, in-modal terms {n_in}, cross-modal terms {n_cross}")
    specs = []
    for f in fold_list:  # all methods of one (fold, seed) before the next, so pairs complete early
        for s in seed_list:
            for method, cfg in configs.items():
                title = method + ("" if not grid or f is None else f" fold {f}") + (f" seed {s}" if grid else "")
                run_dir = out / method / run_name(f, s) if grid else out / method
                specs.append(RunSpec(method, f, s, with_fold_seed(cfg, f, s), run_dir, title))
    runs, parent = run_tracked_grid("compare", first, out, plan, specs, overwrite=overwrite, progress=progress)
    result = _result(configs, out, fold_list, seed_list, grid, runs)
    (out / "comparison.md").write_text(to_markdown(result), encoding="utf-8")
    (out / "comparison.csv").write_text(to_csv(result), encoding="utf-8")
    (out / "comparison_runs.csv").write_text(runs_csv(runs, result.metrics, [(m, result.summaries[m]) for m in result.methods]), encoding="utf-8")
    (out / "paired.md").write_text(paired_markdown(result), encoding="utf-8")
    (out / "paired.csv").write_text(paired_csv(result), encoding="utf-8")
    (out / "paired_items.csv").write_text(paired_items_csv(result), encoding="utf-8")
    write_compare_report(result)
    finish_plan_tracking(parent, out, ("comparison.md", "comparison.csv", "comparison_runs.csv", "paired.md", "paired.csv", "paired_items.csv", "report.md",
                                       "align_uniform.png"), {f"{m}/": result.summaries[m] for m in result.methods})
    return result


def write_compare_report(result: CompareResult) -> None:
    """``report.md`` of a comparison: the methods table, the paired differences, and the
    alignment-uniformity scatter of every run (paper Fig. 2) as ``align_uniform.png``."""
    scatter = result.out / "align_uniform.png"
    points = plot_runs_align_uniform([(METHOD_LABELS.get(r.method, r.method), r.run_dir) for r in result.runs], scatter,
                                     title="Alignment vs uniformity of the test embeddings (lower is better)")
    write_comparison_report(
        result.out, to_markdown(result), [("Paired differences (B - A, same folds and seeds)", paired_markdown(result, heading=False))],
        [scatter] if points else [], title=comparison_title(result),
        run_dirs=[r.run_dir for r in result.runs],
    )


def comparison_title(result: CompareResult) -> str:
    """ "Comparison of vanilla, cross, turbo on synthetic: demo (3 folds x 2 seeds)" """
    first = result.runs[0] if result.runs else None
    info = (rundir.read_info(first.run_dir) or {}) if first is not None else {}
    folds = [f for f in result.folds if f is not None]
    grid = f" ({len(folds)} folds x {len(result.seeds)} seeds)" if folds else (f" ({len(result.seeds)} seeds)" if result.grid else "")
    what = f" on {info['dataset']}" if info.get("dataset") else ""
    return f"Comparison of {', '.join(result.methods)}{what}: {info.get('experiment') or result.out.name}{grid}"


def _result(configs: dict[str, ExperimentConfig], out: Path, folds: list[Fold], seeds: list[int], grid: bool, runs: list[RunRecord]) -> CompareResult:
    names = metric_names(runs)
    methods = list(configs)
    by_method = {m: [r for r in runs if r.method == m] for m in methods}
    summaries = {m: summarize(by_method[m], names) for m in methods}
    rows = []
    for m, cfg in configs.items():
        n_in, n_cross = _term_counts(cfg)
        epochs = [r.metrics["best_epoch"] for r in by_method[m] if "best_epoch" in r.metrics]
        rows.append({
            "method": m, "label": METHOD_LABELS[m], "K": cfg.turbo.passes, "in_terms": n_in, "cross_terms": n_cross,
            "n": len(by_method[m]),
            **{k: v for name, s in summaries[m].items() for k, v in ((name, s.mean), (f"{name}_std", s.std))},
            "best_epoch": epochs[0] if len(epochs) == 1 else (sum(epochs) / len(epochs) if epochs else math.nan),
            "seconds": sum(r.seconds for r in by_method[m]),
        })
    ratio = _test_train_ratio(runs) if sum(f is not None for f in folds) > 1 else None
    paired = []
    for a, b in itertools.combinations(methods, 2):
        va = {(r.fold, r.seed): r.values for r in by_method[a]}
        vb = {(r.fold, r.seed): r.values for r in by_method[b]}
        keys = [k for k in va if k in vb]
        for name in names:
            xa = [va[k].get(name, math.nan) for k in keys]
            xb = [vb[k].get(name, math.nan) for k in keys]
            paired.append(PairedRow(a, b, name, paired_difference(xa, xb, test_train_ratio=ratio)))
    items, item_notes = _item_paired(methods, by_method)
    return CompareResult(out, methods, folds, seeds, grid, runs, rows, summaries, paired, items, item_notes)


def _item_paired(methods: list[str], by_method: dict[str, list[RunRecord]]) -> tuple[list[ItemPairedRow], list[str]]:
    """Every method pair on every (fold, seed) both ran, item by item, from the runs' test_predictions.csv;
    and a note for each pair that could not be compared (a damaged file, different test items). Runs
    without the file (run directories older than it) are left out without a note."""
    predictions = _PredictionCache()
    rows, notes = [], []
    for a, b in itertools.combinations(methods, 2):
        runs_b = {(r.fold, r.seed): r for r in by_method[b]}
        for run_a in by_method[a]:
            run_b = runs_b.get((run_a.fold, run_a.seed))
            if run_b is None:
                continue
            where = f"{b} vs {a}" + ("" if run_a.fold is None else f" fold {run_a.fold}") + f" seed {run_a.seed}"
            try:
                shared = _shared_items(predictions.get(run_a.run_dir), predictions.get(run_b.run_dir))
                compared = {} if shared is None else item_paired_difference(*shared, predictions.num_classes(run_a.run_dir))
            except RunDirError as exc:
                notes.append(f"{where}: {exc}")
                continue
            except ValueError as exc:
                notes.append(f"{where}: not compared item by item ({exc})")
                continue
            rows += [ItemPairedRow(a, b, run_a.fold, run_a.seed, stats) for stats in compared.values()]
    return rows, notes


class _PredictionCache:
    """Each run's test_predictions.csv and number of classes, read once."""

    def __init__(self) -> None:
        self.predictions: dict[Path, rundir.ItemPredictions | None] = {}

    def get(self, run_dir: Path) -> rundir.ItemPredictions | None:
        if run_dir not in self.predictions:
            self.predictions[run_dir] = rundir.read_test_predictions(run_dir)
        return self.predictions[run_dir]

    @staticmethod
    def num_classes(run_dir: Path) -> int:
        classes = (rundir.read_info(run_dir) or {}).get("classes")
        if not classes:
            raise RunDirError(f"{rundir.layout.path(run_dir, rundir.layout.INFO)} names no classes: cannot score its test predictions.")
        return len(classes)


def _shared_items(a: rundir.ItemPredictions | None, b: rundir.ItemPredictions | None) -> tuple[list[int], list[int], list[int]] | None:
    """(labels, predictions of a, predictions of b) [N] over the same test items, b's rows put in a's
    order by item id; None when either run has no predictions. ValueError when the two runs were
    tested on different items (or give one item two labels)."""
    if a is None or b is None:
        return None
    row_b = {item: i for i, item in enumerate(b.ids)}
    if len(row_b) != len(b.ids) or len(set(a.ids)) != len(a.ids):
        raise ValueError("an item id appears twice in test_predictions.csv")
    if set(row_b) != set(a.ids):
        raise ValueError(f"the two runs were tested on different items ({len(a)} and {len(b)} items, {len(set(a.ids) & set(row_b))} shared)")
    order = [row_b[item] for item in a.ids]
    if any(b.labels[j] != y for j, y in zip(order, a.labels)):
        raise ValueError("the two runs give some item different labels")
    return a.labels, a.preds, [b.preds[j] for j in order]


def _test_train_ratio(runs: list[RunRecord]) -> float | None:
    """Mean share of test to training items over the runs of a fold grid (run.json's split sizes), for the
    Nadeau-Bengio correction; None when no run recorded its sizes."""
    ratios = []
    for r in runs:
        sizes = (rundir.read_info(r.run_dir) or {}).get("split_sizes") or {}
        if sizes.get("train") and sizes.get("test"):
            ratios.append(sizes["test"] / sizes["train"])
    return sum(ratios) / len(ratios) if ratios else None


HEADERS = {"label": "Method", "K": "K", "in_terms": "in", "cross_terms": "cross", "n": "n", "best_epoch": "best ep.", "seconds": "time (s)"}


def _columns(result: CompareResult) -> list[str]:
    return ["label", "K", "in_terms", "cross_terms", *(["n"] if result.grid else []), *result.metrics, "best_epoch", "seconds"]


def _cell(result: CompareResult, row: dict, column: str) -> str:
    if column in result.metrics:
        return fmt_mean_std(result.summaries[row["method"]][column])
    value = row.get(column, "")
    return fmt(value, 1) if isinstance(value, float) else str(value)


def to_markdown(result: CompareResult) -> str:
    cols = _columns(result)
    lines = ["| " + " | ".join(HEADERS.get(c, header(c)) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(result, r, c) for c in cols) + " |" for r in result.rows]
    if result.grid:
        lines += ["", f"Mean ± sample std over {_grid_text(result)}; best ep.: mean best epoch; time: total seconds."]
    return "\n".join(lines) + "\n"


def _grid_text(result: CompareResult) -> str:
    folds = "the config's split" if result.folds == [None] else "folds " + ", ".join(map(str, result.folds))
    return f"{folds} x seeds {', '.join(map(str, result.seeds))}"


def to_csv(result: CompareResult) -> str:
    cols = ["method", "label", "K", "in_terms", "cross_terms", "n",
            *[c for m in result.metrics for c in (m, f"{m}_std")], "best_epoch", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in result.rows)
    return buf.getvalue()


def to_rich_table(result: CompareResult, title: str = "Test metrics") -> Table:
    """The terminal table: the test metrics (comparison.md adds alignment and uniformity)."""
    cols = [c for c in _columns(result) if c not in result.metrics or c in TABLE_METRICS]
    caption = "in / cross: number of in-modal / cross-modal InfoNCE terms; alignment and uniformity in comparison.md"
    if result.grid:
        caption += f"; mean ± std over {_grid_text(result)}"
    caption = "\n".join([caption, *item_caption_lines(result)])
    table = Table(title=title, caption=caption)
    for c in cols:
        table.add_column(HEADERS.get(c, header(c)), justify="left" if c == "label" else "right", no_wrap=c == "label" or c in result.metrics, overflow="fold")
    for r in result.rows:
        table.add_row(*(_cell(result, r, c) for c in cols))
    return table


PAIRED_COLUMNS = ("B vs A", "metric", "n", "mean A", "mean B", "diff (B - A)", "95% CI", "t-test p", "Wilcoxon p",
                  "corrected 95% CI", "corrected t p", "note")


def _paired_cells(p: PairedRow) -> list[str]:
    s = p.stats
    ci = "n/a" if math.isnan(s.ci_low) else f"[{s.ci_low:+.4f}, {s.ci_high:+.4f}]"
    diff = "n/a" if math.isnan(s.mean_diff) else f"{s.mean_diff:+.4f}"
    nb_ci = "n/a" if math.isnan(s.nb_ci_low) else f"[{s.nb_ci_low:+.4f}, {s.nb_ci_high:+.4f}]"
    return [f"{p.b} vs {p.a}", header(p.metric), str(s.n), fmt(s.mean_a), fmt(s.mean_b), diff, ci, fmt_test_p(s.t_p, s), fmt_p(s.wilcoxon_p),
            nb_ci, fmt_test_p(s.nb_p, s), s.note]


def paired_markdown(result: CompareResult, heading: bool = True) -> str:
    """paired.md: the paired differences over (fold, seed) pairs, then the item-level section; without
    ``heading`` (report.md, which gives the section its own title), no "# Paired comparison" line."""
    lines = [*(["# Paired comparison", ""] if heading else []),
             "Differences B - A over the (fold, seed) pairs both methods ran; 95% paired t interval; "
             "p-values of the paired t-test and the Wilcoxon signed-rank test. On fold grids, the Nadeau-Bengio "
             "corrected resampled t interval and p-value too (the folds' training sets overlap, so the plain paired t "
             "is optimistic there; n/a on a single split). For EER lower is better. "
             f"Below {MIN_T_TEST} pairs no p-value is shown (`n < {MIN_T_TEST}`): only the interval, which is wide, as it should be.", "",
             "| " + " | ".join(PAIRED_COLUMNS) + " |", "|" + "|".join("---" for _ in PAIRED_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_paired_cells(p)) + " |" for p in result.paired]
    return "\n".join(lines) + "\n\n" + item_paired_markdown(result)


ITEM_PAIRED_TITLE = "Item-level paired differences on each split (test-set sampling noise only)"
ITEM_PAIRED_COLUMNS = ("B vs A", "fold", "seed", "n items", "metric", "diff (B - A)", "95% bootstrap CI", "McNemar p")
CAPTION_METRIC = "ua"  # the metric of the console caption's item-level lines


def _item_cells(row: ItemPairedRow) -> list[str]:
    s = row.stats
    mcnemar = "" if math.isnan(s.mcnemar_p) else f"{fmt_p(s.mcnemar_p)} ({s.b_only} vs {s.a_only})"
    return [f"{row.b} vs {row.a}", "-" if row.fold is None else str(row.fold), str(row.seed), str(s.n), header(s.metric),
            f"{s.diff:+.4f}", f"[{s.ci_low:+.4f}, {s.ci_high:+.4f}]", mcnemar]


def item_paired_markdown(result: CompareResult) -> str:
    """paired.md's item-level section: each method pair on each (fold, seed), WA / UA / F1, from the runs' test_predictions.csv."""
    lines = [f"## {ITEM_PAIRED_TITLE}", "",
             "This interval measures only the noise of which test items were drawn, not the noise of training (seeds) nor of other "
             "splits, so it is a lower bound on the uncertainty of B - A; `--seeds` and `--folds all` measure those (the table above). "
             "Differences B - A on the items both runs were tested on; 95% percentile paired bootstrap interval over the items; "
             "McNemar p: the exact McNemar test of WA, with the items only B got right vs only A got right.", ""]
    if not result.items:
        lines.append("No pair of runs has test_predictions.csv (run directories from before it was written): no item-level comparison.")
    else:
        lines += ["| " + " | ".join(ITEM_PAIRED_COLUMNS) + " |", "|" + "|".join("---" for _ in ITEM_PAIRED_COLUMNS) + "|"]
        lines += ["| " + " | ".join(_item_cells(r)) + " |" for r in result.items]
    if result.item_notes:
        lines += ["", *(f"- {note}" for note in result.item_notes)]
    return "\n".join(lines) + "\n"


def paired_items_csv(result: CompareResult) -> str:
    """paired_items.csv: one row per method pair, (fold, seed) and metric (:class:`ItemPairedRow`)."""
    cols = ["a", "b", "fold", "seed", *ItemPairedStats.__dataclass_fields__]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.to_row().items()} for r in result.items)
    return buf.getvalue()


ITEM_CAPTION_NOTE = "(CI: bootstrap over the test items; training noise not included)"


def item_caption_lines(result: CompareResult, metric: str = CAPTION_METRIC) -> list[str]:
    """For a single split with a single seed: one line per method against the first, from the item-level
    comparison ("turbo vs vanilla on these 240 test items: UA -0.021, 95% CI [-0.060, +0.020]"), then
    :data:`ITEM_CAPTION_NOTE`, each line short enough for an 80-column table; none for a grid."""
    if result.grid or not result.methods:
        return []
    first = result.methods[0]
    lines = []
    for row in result.items:
        if row.a == first and row.stats.metric == metric:
            s = row.stats
            lines.append(f"{row.b} vs {first} on these {s.n} test items: {header(metric)} {s.diff:+.3f}, 95% CI [{s.ci_low:+.3f}, {s.ci_high:+.3f}]")
    return [*lines, ITEM_CAPTION_NOTE] if lines else []


def paired_csv(result: CompareResult) -> str:
    cols = ["a", "b", "metric", *PairedStats.__dataclass_fields__]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in p.to_row().items()} for p in result.paired)
    return buf.getvalue()


def paired_rich_table(result: CompareResult, title: str = "Paired differences B - A") -> Table:
    """The paired table for a terminal: paired.md's columns, compact (the note column only when needed)."""
    table = Table(title=title, caption="same (fold, seed) pairs; 95% paired t interval (on fold grids Nadeau-Bengio corrected, NB); for EER lower is better; alignment and uniformity in paired.md")
    notes = any(p.stats.note for p in result.paired)
    corrected = any(not math.isnan(p.stats.nb_ci_low) for p in result.paired)  # a fold grid: show the corrected t-test
    for c in ("B - A", "metric", "n", "diff", "95% CI", "NB t p" if corrected else "t p", "W p", *(["note"] if notes else [])):
        table.add_column(c, justify="left" if c in ("B - A", "metric", "note") else "right", no_wrap=c != "note", overflow="fold")
    for p in result.paired:
        if p.metric not in TABLE_METRICS:
            continue  # alignment / uniformity rows: in paired.md
        s = p.stats
        low, high, t_p = (s.nb_ci_low, s.nb_ci_high, s.nb_p) if corrected else (s.ci_low, s.ci_high, s.t_p)
        ci = "n/a" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"
        diff = "n/a" if math.isnan(s.mean_diff) else f"{s.mean_diff:+.4f}"
        table.add_row(f"{p.b} - {p.a}", header(p.metric), str(s.n), diff, ci, fmt_test_p(t_p, s), fmt_p(s.wilcoxon_p), *([s.note] if notes else []))
    return table
