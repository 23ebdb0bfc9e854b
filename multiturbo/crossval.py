"""Repeated runs: folds x seeds (x methods), resumable, with mean ± std.

The machinery here is shared by ``multiturbo cv`` (one method, every fold and seed) and
``multiturbo compare --folds/--seeds`` (several methods, see :mod:`multiturbo.compare`):

- a **plan** (``plan.yaml`` in the output directory: the command, the methods, folds and
  seeds, and each method's resolved config without ``seed`` and ``data.fold``) guards
  against mixing: rerunning into the same directory with another config is refused
  unless ``overwrite``;
- **resume**: a run directory whose ``run.json`` says ``finished`` and that holds a
  ``metrics.json`` is skipped ("skipped, already finished"); a failed or partial one is
  trained again (only that run directory is overwritten);
- **summaries**: mean and sample std (:mod:`multiturbo.stats`) of WA, UA, F1 (and EER)
  over the runs.

Output of ``cv``::

    OUT/plan.yaml            what the directory holds
    OUT/fold3-seed1/         one run directory per (fold, seed); ``seed1/`` for single-fold data sets
    OUT/cv.md, cv.csv        per-run rows + mean ± std;  cv.json: the same, structured

With ``train.tracking: mlflow`` (:mod:`multiturbo.tracking`) a cv or compare is a parent MLflow
run (``OUT/tracking.json`` keeps its id for a resume) and every run its child, tagged ``command``,
``method``, ``fold`` and ``seed``; the default store is ``OUT/mlflow.db``.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from . import rundir
from .analysis import analyze_run, load_analysis, plot_runs_align_uniform
from .build import make_dataset
from .checkpoint import write_json
from .config import ExperimentConfig, config_differences, describe_differences, result_relevant
from .errors import MultiturboError
from .metrics import TABLE_METRICS, label
from .plugins import Registries
from .progress import ProgressReporter
from .report import write_comparison_report
from .run import run_experiment
from .stats import Summary, fmt, fmt_mean_std, mean_std
from .tracking import MlflowRun, start_plan_tracking

PLAN_FILE = "plan.yaml"

Fold = int | None


# -- what to run ------------------------------------------------------------------------------
def parse_int_list(text: str, option: str) -> list[int]:
    """``"0,2,5"`` -> [0, 2, 5] (ranges ``"0-3"`` allowed); duplicates removed, order kept."""
    values: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            values.extend(range(int(span[1]), int(span[2]) + 1) if span else [int(part)])
        except ValueError:
            raise MultiturboError(f"{option} {text!r}: expected comma-separated integers (or ranges like 0-4), e.g. {option} 0,1,2.") from None
    if not values:
        raise MultiturboError(f"{option} {text!r}: no value given, e.g. {option} 0,1,2.")
    return list(dict.fromkeys(values))


def parse_folds(text: str | None) -> list[int] | str | None:
    """``--folds``: None (not given), ``"all"``, or a list of fold indices."""
    if text is None:
        return None
    return "all" if text.strip().lower() == "all" else parse_int_list(text, "--folds")


def parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds``: None (not given) or a list of seeds."""
    return None if text is None else parse_int_list(text, "--seeds")


def dataset_num_folds(cfg: ExperimentConfig, registries: Registries | None = None) -> int:
    """How many folds the config's data set has (builds the data set object; loads no items)."""
    return make_dataset(cfg.data.name, cfg.data.options, cfg.data.data_seed, registries).num_folds


def resolve_folds(cfg: ExperimentConfig, folds: Sequence[int] | str | None, registries: Registries | None = None) -> list[Fold]:
    """The folds to run: None -> the config's ``data.fold``; ``"all"`` -> every fold ([None] for a
    single-fold data set); a list is checked against the data set's number of folds."""
    if folds is None:
        return [cfg.data.fold]
    n = dataset_num_folds(cfg, registries)
    if folds == "all":
        return [None] if n == 1 else list(range(n))
    bad = [f for f in folds if not 0 <= f < n]
    if bad:
        raise MultiturboError(
            f"--folds: fold(s) {', '.join(map(str, bad))} out of range; the data set {cfg.data.name!r} has {n} fold(s) "
            f"(0..{n - 1}). Use --folds all, or indices in range."
        )
    return list(folds)


def with_fold_seed(cfg: ExperimentConfig, fold: Fold, seed: int) -> ExperimentConfig:
    """``cfg`` with ``data.fold`` and ``seed`` replaced."""
    return cfg.model_copy(update={"seed": seed, "data": cfg.data.model_copy(update={"fold": fold})})


def run_name(fold: Fold, seed: int) -> str:
    """The run directory name of one (fold, seed): ``fold3-seed1``, or ``seed1`` without folds."""
    return f"seed{seed}" if fold is None else f"fold{fold}-seed{seed}"


@dataclass(frozen=True)
class RunSpec:
    """One run to do: its config (fold and seed set), where it goes, and its progress title."""

    method: str
    fold: Fold
    seed: int
    config: ExperimentConfig
    run_dir: Path
    title: str


@dataclass
class RunRecord:
    """One run's outcome: ``status`` is ``trained`` or ``skipped`` (finished by an earlier invocation).

    ``extra`` holds values added by per-run post-processing (:func:`post_process`); they are
    summarised and compared like the test metrics."""

    method: str
    fold: Fold
    seed: int
    run_dir: Path
    metrics: dict[str, Any]
    status: str
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, float]:
        """The numbers to summarise: wa, ua, f1 (eer) and the post-processing values."""
        out = {k: float(self.metrics[k]) for k in TABLE_METRICS if isinstance(self.metrics.get(k), (int, float))}
        out.update({k: float(v) for k, v in self.extra.items() if isinstance(v, (int, float))})
        return out

    def to_row(self) -> dict[str, Any]:
        return {
            "method": self.method, "fold": "" if self.fold is None else self.fold, "seed": self.seed, **self.values,
            "best_epoch": self.metrics.get("best_epoch", ""), "seconds": self.seconds, "status": self.status,
            "run_dir": str(self.run_dir),
        }


def post_process(record: RunRecord) -> None:
    """Per-run post-processing, called once for every run (trained or skipped), in order.

    Adds the representation analysis of the run's test split to ``record.extra``
    (``align:a~b`` for every modality pair, ``uniform:m`` for every modality; lower is better),
    so every table, summary and paired comparison includes them. A run analysed at the end of
    training is read back from ``analysis/analysis.json``; an older run is analysed now."""
    analysis = load_analysis(record.run_dir) or analyze_run(record.run_dir)
    record.extra.update({f"align:{pair}": v for pair, v in analysis["alignment"].items() if v is not None})
    record.extra.update({f"uniform:{m}": v for m, v in analysis["uniformity"].items() if v is not None})


# -- the plan guard -----------------------------------------------------------------------------
def _config_key(cfg: ExperimentConfig) -> dict[str, Any]:
    """The part of a config a plan pins down: everything but ``seed`` and ``data.fold``."""
    d = result_relevant(cfg.model_dump(mode="json"))  # the device, workers, caching... may change between invocations
    d.pop("seed", None)
    d["data"].pop("fold", None)
    return d


def make_plan(command: str, configs: dict[str, ExperimentConfig], folds: Sequence[Fold], seeds: Sequence[int]) -> dict[str, Any]:
    return {
        "command": command, "methods": list(configs), "folds": list(folds), "seeds": list(seeds),
        "configs": {m: _config_key(c) for m, c in configs.items()},
    }


def check_plan(out: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix runs of another config (or another command) into ``out``.

    Same command and the same config for every method both plans share: fine (other folds,
    seeds or methods may be added). ``overwrite`` skips the check."""
    if overwrite or not out.exists() or not any(out.iterdir()):
        return
    path = out / PLAN_FILE
    if not path.is_file():
        raise MultiturboError(
            f"The output directory {out} is not empty and holds no {PLAN_FILE} of a cv or compare. "
            f"Pass another --out, or --overwrite to run into it anyway."
        )
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise MultiturboError(f"{path} is not valid YAML ({exc}). Pass another --out, or --overwrite.") from None
    if old.get("command") != plan["command"]:
        raise MultiturboError(
            f"The output directory {out} holds runs of `multiturbo {old.get('command')}`, not `multiturbo {plan['command']}`. "
            f"Pass another --out, or --overwrite to rerun everything into it."
        )
    for method, cfg in plan["configs"].items():
        before = (old.get("configs") or {}).get(method)
        if before is not None and before != cfg:
            diff = "; ".join(describe_differences(config_differences(before, cfg), 5))
            raise MultiturboError(
                f"The output directory {out} holds {method} runs of another config ({diff}). Resuming would mix "
                f"results of two configs. Pass another --out, or --overwrite to rerun every run with this config."
            )


def write_plan(out: Path, plan: dict[str, Any], overwrite: bool = False) -> None:
    """Write ``out/plan.yaml``. Unless ``overwrite``, merged with the plan already there (its
    methods, folds, seeds and configs are kept), so runs of a method left out this time stay
    guarded against another config."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / PLAN_FILE
    if not overwrite and path.is_file():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        union = lambda a, b: list(dict.fromkeys([*(a or []), *b]))  # noqa: E731
        plan = {**plan, "methods": union(old.get("methods"), plan["methods"]), "folds": union(old.get("folds"), plan["folds"]),
                "seeds": union(old.get("seeds"), plan["seeds"]), "configs": {**(old.get("configs") or {}), **plan["configs"]}}
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")


# -- running ------------------------------------------------------------------------------------
def run_grid(
    specs: Sequence[RunSpec],
    *,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
    after_run: Callable[[RunRecord], None] | None = None,
    tags: Mapping[str, str] | None = None,
    tracking_root: Path | None = None,
) -> list[RunRecord]:
    """Run (or resume) every spec in order; returns one record per spec.

    A finished run directory with the same config is skipped; one with another config is
    an error (unless ``overwrite``); a failed or partial one is trained again. ``after_run``
    (default :func:`post_process`) is called with every record. With ``train.tracking``, each
    trained run is tracked with ``tags`` (and its title as its name) in the default store under
    ``tracking_root`` (see :func:`multiturbo.run.run_experiment`)."""
    progress = progress or ProgressReporter(quiet=True)
    after_run = after_run or post_process  # looked up at call time, so a replaced post_process is used
    records = []
    for i, spec in enumerate(specs, 1):
        head = f"[{i}/{len(specs)}] {spec.title}"
        metrics = None if overwrite else rundir.finished_metrics(spec.run_dir)
        if metrics is not None:
            if not rundir.same_config(spec.run_dir, spec.config):
                raise MultiturboError(
                    f"The finished run directory {spec.run_dir} was made with another config than the one asked for now. "
                    f"Pass another --out, or --overwrite to rerun it."
                )
            progress.log(f"{head}: skipped, already finished")
            record = RunRecord(spec.method, spec.fold, spec.seed, spec.run_dir, metrics, "skipped", rundir.run_seconds(spec.run_dir))
        else:
            rerun = spec.run_dir.exists() and any(spec.run_dir.iterdir())
            progress.log(head + (" (rerun: the previous attempt did not finish)" if rerun and not overwrite else ""))
            start = time.perf_counter()
            metrics = run_experiment(spec.config, spec.run_dir, overwrite=overwrite or rerun, progress=progress, label=f"{spec.title} ",
                                     tags={**(tags or {}), "mlflow.runName": spec.title}, tracking_root=tracking_root)
            record = RunRecord(spec.method, spec.fold, spec.seed, spec.run_dir, metrics, "trained", time.perf_counter() - start)
        after_run(record)
        records.append(record)
    return records


def run_tracked_grid(command: str, cfg: ExperimentConfig, out: Path, plan: Mapping[str, Any], specs: Sequence[RunSpec], *,
                     overwrite: bool = False, progress: ProgressReporter | None = None) -> tuple[list[RunRecord], MlflowRun | None]:
    """:func:`run_grid` under the plan's parent MLflow run when ``cfg.train.tracking`` is mlflow: each
    run its child, tagged ``command`` (the parent's status FAILED / KILLED if a run fails). Returns
    the records and the parent run (None without tracking), which the caller finishes with the
    summary (:func:`finish_plan_tracking`)."""
    progress = progress or ProgressReporter(quiet=True)
    parent = start_plan_tracking(cfg, out, command, {k: plan[k] for k in ("command", "methods", "folds", "seeds")}, log=progress.log,
                                 overwrite=overwrite)
    tags = {"command": command, **({"mlflow.parentRunId": parent.run_id} if parent is not None else {})}
    if parent is not None:
        progress.log(f"MLflow parent run {parent.run_id} in {parent.uri}")
    try:
        runs = run_grid(specs, overwrite=overwrite, progress=progress, tags=tags, tracking_root=out)
    except BaseException as exc:
        if parent is not None:
            parent.fail(exc)
        raise
    return runs, parent


def finish_plan_tracking(parent: MlflowRun | None, out: Path, files: Sequence[str], summaries: Mapping[str, Mapping[str, Summary]]) -> None:
    """End the parent run: ``<prefix><metric>_mean`` / ``_std`` for every summary (prefix: ``<method>/``,
    none for a cv's single entry ``""``) and the plan's summary ``files`` in ``out`` as artifacts."""
    if parent is None:
        return
    metrics = {f"{prefix}{k}_{part}": getattr(s, part) for prefix, summary in summaries.items() for k, s in summary.items()
               for part in ("mean", "std")}
    parent.finish([out / name for name in (PLAN_FILE, *files)], metrics)


# -- summaries ----------------------------------------------------------------------------------
def metric_names(records: Sequence[RunRecord]) -> list[str]:
    """The metrics present in any record: the registry's table metrics in its order, then extras sorted."""
    present = {k for r in records for k in r.values}
    return [k for k in TABLE_METRICS if k in present] + sorted(present - set(TABLE_METRICS))


def summarize(records: Sequence[RunRecord], names: Sequence[str] | None = None) -> dict[str, Summary]:
    """Mean and sample std over the records of every metric (NaN values, e.g. an undefined EER, left out)."""
    names = metric_names(records) if names is None else names
    return {k: mean_std([r.values[k] for r in records if k in r.values]) for k in names}


header = label  # a column's header: the registry's label of a metric, other names as they are


@dataclass
class CVResult:
    """The outcome of :func:`cross_validate`: every run, and the summary over them."""

    out: Path
    method: str
    folds: list[Fold]
    seeds: list[int]
    runs: list[RunRecord]
    summary: dict[str, Summary]

    def per_fold(self) -> dict[Fold, dict[str, Summary]]:
        """Mean ± std over the seeds of each fold."""
        return {f: summarize([r for r in self.runs if r.fold == f], list(self.summary)) for f in self.folds}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "folds": self.folds, "seeds": self.seeds,
            "runs": [r.to_row() for r in self.runs],
            "summary": {k: s.to_dict() for k, s in self.summary.items()},
            "per_fold": {("all" if f is None else str(f)): {k: s.to_dict() for k, s in v.items()} for f, v in self.per_fold().items()},
        }


def cross_validate(
    cfg: ExperimentConfig,
    out: Path,
    *,
    folds: Sequence[int] | str | None = "all",
    seeds: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
) -> CVResult:
    """Train and test ``cfg`` on every fold in ``folds`` (default: all) for every seed in
    ``seeds`` (default: the config's seed) into ``out/<fold-seed>/``; resumable; writes
    ``cv.md``, ``cv.csv``, ``cv.json``."""
    out = Path(out)
    fold_list = resolve_folds(cfg, folds)
    seed_list = list(seeds) if seeds else [cfg.seed]
    plan = make_plan("cv", {cfg.method: cfg}, fold_list, seed_list)
    check_plan(out, plan, overwrite)
    write_plan(out, plan, overwrite)
    specs = [
        RunSpec(cfg.method, f, s, with_fold_seed(cfg, f, s), out / run_name(f, s), _title(cfg.method, f, s))
        for f in fold_list for s in seed_list
    ]
    runs, parent = run_tracked_grid("cv", cfg, out, plan, specs, overwrite=overwrite, progress=progress)
    result = CVResult(out, cfg.method, fold_list, seed_list, runs, summarize(runs))
    (out / "cv.md").write_text(cv_markdown(result), encoding="utf-8")
    (out / "cv.csv").write_text(cv_csv(result), encoding="utf-8")
    write_json(out / "cv.json", result.to_dict())
    _write_cv_report(result)
    finish_plan_tracking(parent, out, ("cv.md", "cv.csv", "cv.json", "report.md", "align_uniform.png"), {"": result.summary})
    return result


def _title(method: str, fold: Fold, seed: int) -> str:
    return f"{method}" + ("" if fold is None else f" fold {fold}") + f" seed {seed}"


# -- writing --------------------------------------------------------------------------------------
def runs_csv(records: Sequence[RunRecord], names: Sequence[str], summary_rows: Sequence[tuple[str, dict[str, Summary]]] = ()) -> str:
    """Per-run rows (``row`` = run), then for each (label, summary) a ``mean`` and a ``std`` row."""
    cols = ["row", "method", "fold", "seed", *names, "best_epoch", "seconds", "status", "run_dir"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({"row": "run", **r.to_row()})
    for method, summary in summary_rows:
        for stat in ("mean", "std"):
            writer.writerow({"row": stat, "method": method, **{k: getattr(s, stat) for k, s in summary.items()}})
    return buf.getvalue()


def cv_csv(result: CVResult) -> str:
    return runs_csv(result.runs, list(result.summary), [(result.method, result.summary)])


def cv_markdown(result: CVResult) -> str:
    names = list(result.summary)
    cols = ["fold", "seed", *[header(k) for k in names], "best ep.", "time (s)", "status"]
    lines = [f"# Cross-validation: {result.method}", "",
             f"{len(result.runs)} run(s): folds {_folds_text(result.folds)} x seeds {', '.join(map(str, result.seeds))}. "
             "Mean ± sample std (ddof = 1) over all runs.", "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in result.runs:
        v = r.values
        lines.append("| " + " | ".join([
            "-" if r.fold is None else str(r.fold), str(r.seed), *[fmt(v.get(k, float("nan"))) for k in names],
            str(r.metrics.get("best_epoch", "")), f"{r.seconds:.1f}", r.status]) + " |")
    lines.append("| " + " | ".join(["**mean ± std**", f"n={len(result.runs)}", *[fmt_mean_std(result.summary[k]) for k in names], "", "", ""]) + " |")
    if len(result.seeds) > 1 and len(result.folds) > 1:
        lines += ["", "## Per fold (mean ± std over seeds)", "", "| fold | " + " | ".join(header(k) for k in names) + " |",
                  "|" + "|".join("---" for _ in range(len(names) + 1)) + "|"]
        for f, s in result.per_fold().items():
            lines.append(f"| {f} | " + " | ".join(fmt_mean_std(s[k]) for k in names) + " |")
    return "\n".join(lines) + "\n"


def _folds_text(folds: Sequence[Fold]) -> str:
    return "(single split)" if folds == [None] else ", ".join(map(str, folds))


def cv_rich_table(result: CVResult) -> Table:
    """The terminal table: the test metrics per run, mean and std (cv.md adds alignment and uniformity)."""
    names = [k for k in result.summary if k in TABLE_METRICS]
    table = Table(title=f"{result.method}: cross-validation ({len(result.runs)} runs)",
                  caption="mean and sample std (ddof = 1) over all runs; alignment and uniformity in cv.md")
    for c in ["fold", "seed", *[header(k) for k in names], "status"]:
        table.add_column(c, justify="right" if c != "status" else "left", no_wrap=True)
    for r in result.runs:
        v = r.values
        table.add_row("-" if r.fold is None else str(r.fold), str(r.seed), *[fmt(v.get(k, float("nan"))) for k in names], r.status)
    table.add_section()
    table.add_row("mean", "", *[fmt(result.summary[k].mean) for k in names], f"n={len(result.runs)}")
    table.add_row("std", "", *[fmt(result.summary[k].std) for k in names], "")
    return table


def _write_cv_report(result: CVResult) -> None:
    """``report.md`` of a cross-validation: the per-run table and the alignment-uniformity scatter."""
    scatter = result.out / "align_uniform.png"
    points = plot_runs_align_uniform([(f"fold {r.fold}" if r.fold is not None else f"seed {r.seed}", r.run_dir) for r in result.runs], scatter,
                                     title="Alignment vs uniformity per run (lower is better)")
    write_comparison_report(result.out, cv_markdown(result), (), [scatter] if points else [],
                            title=f"Cross-validation of {result.method}: {result.out.name} ({len(result.runs)} runs)", run_dirs=[r.run_dir for r in result.runs])
