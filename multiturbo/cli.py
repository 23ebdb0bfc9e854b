"""The ``multiturbo`` command line: run, compare, cv, tune, analyze, predict, evaluate, embed, export, bench, plugins, schema, config."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .errors import MultiturboError
from .progress import make_console

# The commands import what they use inside their functions: the light commands start without
# loading the plugins, torchmetrics or matplotlib (a real start-up cost). A command function
# takes one parameter per command-line option (click's convention), hence the long lists.

out_console = make_console()  # wide when the output is a file or a pipe: tables keep their columns
err_console = make_console(stderr=True)


class _Group(click.Group):
    """Shows a MultiturboError as one paragraph on stderr (exit status 2), never a traceback; a SystemExit
    raised by plugin or library code inside a command is reported (exit status 1), not a silent exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MultiturboError as exc:
            err_console.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            err_console.print("Interrupted.", markup=False)
            import gc  # noqa: PLC0415

            gc.freeze()  # the interpreter's final collection would walk every object (seconds after a run): the user asked to stop now
            ctx.exit(130)
        except SystemExit as exc:  # multiturbo never calls sys.exit inside a command (click's own exits are click.exceptions.Exit)
            err_console.print(
                f"Error: code run by this command raised SystemExit({exc.code!r}): a plugin or a library asked Python to exit "
                "(multiturbo itself never does). A run directory being written is marked failed in its run.json (resume it "
                "with --resume once the cause is fixed). Find the plugin with `multiturbo plugins`, and fix or uninstall it.",
                markup=False, highlight=False, soft_wrap=True)
            ctx.exit(1)


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config value, e.g. --set turbo.passes=3 (repeatable; values are YAML).",
)
out_option = click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default: runs/<name>-<time>).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace the contents of an existing run directory.")


@click.group(cls=_Group)
@click.version_option(package_name="multiturbo")
def cli() -> None:
    """Multi-modal classification with Turbo contrastive learning."""


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@out_option
@set_option
@overwrite_option
@quiet_option
@click.option(
    "--resume", is_flag=True,
    help="Continue the unfinished run in --out from its last checkpoint (CONFIG must match its config.yaml); "
    "or give the run directory as CONFIG: multiturbo run DIR --resume.",
)
def run(config: Path, out: Path | None, overrides: tuple[str, ...], overwrite: bool, quiet: bool, resume: bool) -> None:
    """Train and test the experiment in CONFIG; write a run directory."""
    from .config import load_config

    if resume and config.is_dir():  # multiturbo run RUN_DIR --resume: the run's own config
        from .rundir import layout

        if out is not None and out.resolve() != config.resolve():
            raise MultiturboError(f"--resume with a run directory ({config}) continues that directory; drop --out {out}.")
        out, config = config, layout.path(config, layout.CONFIG)
    if resume and out is None:
        raise MultiturboError("--resume needs the run directory: multiturbo run RUN_DIR --resume, or multiturbo run CONFIG --out RUN_DIR --resume.")
    cfg = load_config(config, overrides)  # config errors show here, before the run's imports (torch, scipy: seconds)
    from .metrics import TABLE_METRICS
    from .progress import ProgressReporter
    from .run import run_experiment
    from .rundir import default_run_dir
    from .runtime import process_seconds

    out = out or default_run_dir(cfg)
    with ProgressReporter(quiet=quiet) as progress:
        metrics = run_experiment(cfg, out, overwrite=overwrite, progress=progress, resume=resume, before_run=process_seconds())
    shown = {k: round(metrics[k], 4) for k in TABLE_METRICS if isinstance(metrics.get(k), float)}
    out_console.print(f"test {json.dumps(shown)}  (run directory: {out})", markup=False, highlight=False)


folds_option = click.option("--folds", default=None, metavar="LIST", help="Folds to run: all, or e.g. 0,2,5 or 0-4.")
seeds_option = click.option("--seeds", default=None, metavar="LIST", help="Seeds to run, e.g. 0,1,2 (default: the config's seed).")
grid_overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Rerun every run, even finished ones, even if OUT holds runs of another config.",
)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@out_option
@set_option
@click.option("--methods", default="vanilla,cross,turbo", show_default=True, help="Comma-separated methods to compare.")
@folds_option
@seeds_option
@grid_overwrite_option
@quiet_option
def compare(
    config: Path, out: Path | None, overrides: tuple[str, ...], methods: str, folds: str | None, seeds: str | None,
    overwrite: bool, quiet: bool,
) -> None:
    """Train and test each method (vanilla, cross, turbo) on CONFIG; print the table.

    With --folds and/or --seeds, every method runs on every fold x seed: mean ± std per
    method and paired differences between methods. Rerunning resumes: finished runs are skipped."""
    from .compare import compare_methods, method_configs, paired_rich_table, to_rich_table
    from .crossval import parse_folds, parse_seeds
    from .progress import ProgressReporter

    fold_list, seed_list = parse_folds(folds), parse_seeds(seeds)
    configs = method_configs(config, overrides, [m.strip() for m in methods.split(",") if m.strip()])
    with ProgressReporter(quiet=quiet) as progress:
        result = compare_methods(configs, out, folds=fold_list, seeds=seed_list, overwrite=overwrite, progress=progress)
    out_console.print(to_rich_table(result, title=f"{next(iter(configs.values())).name}: test metrics"))
    if any(p.stats.n >= 2 for p in result.paired):
        out_console.print(paired_rich_table(result))
    out_console.print(f"(output directory: {result.out})", markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@out_option
@set_option
@folds_option
@seeds_option
@grid_overwrite_option
@quiet_option
def cv(config: Path, out: Path | None, overrides: tuple[str, ...], folds: str | None, seeds: str | None, overwrite: bool, quiet: bool) -> None:
    """Cross-validate CONFIG: every fold (default all) x seed; mean ± std of the test metrics.

    One run directory per fold and seed under OUT; cv.md, cv.csv and cv.json summarise them.
    Rerunning the same command resumes: finished runs are skipped, failed ones rerun."""
    import datetime as dt

    from .config import load_config

    cfg = load_config(config, overrides)  # config errors before the runs' imports (torch, scipy: seconds)
    from .crossval import cross_validate, cv_rich_table, parse_folds, parse_seeds
    from .progress import ProgressReporter

    fold_list, seed_list = parse_folds(folds), parse_seeds(seeds)
    out = out or Path("runs") / f"{cfg.name or 'run'}-cv-{dt.datetime.now():%Y%m%d-%H%M%S}"
    with ProgressReporter(quiet=quiet) as progress:
        result = cross_validate(cfg, out, folds="all" if fold_list is None else fold_list, seeds=seed_list, overwrite=overwrite, progress=progress)
    out_console.print(cv_rich_table(result))
    out_console.print(f"(output directory: {result.out})", markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output directory: trial-NNNN/ run directories, study.db, tune.md (default: runs/<name>-tune).")
@set_option
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Trials this process runs (default: the config's tune.trials).")
@click.option("--storage", default=None, metavar="URL", help="Optuna storage URL shared by every process of the study, e.g. postgresql://user:pw@host/db (default: sqlite:///OUT/study.db).")
@click.option("--study-name", default=None, help="The study's name in the storage (default: tune.study_name, else the experiment's name).")
@click.option("--may-differ", "may_differ", multiple=True, metavar="KEY",
              help="A config key that may differ from the config the study was started with, e.g. data.options.root on another machine (repeatable).")
@quiet_option
def tune(config: Path, out: Path | None, overrides: tuple[str, ...], trials: int | None, storage: str | None, study_name: str | None,
         may_differ: tuple[str, ...], quiet: bool) -> None:
    """Search the config's tune.space with Optuna: each trial is a run directory OUT/trial-NNNN.

    The objective is the validation metric (tune.metric) at each trial's best epoch; trials are
    pruned on their per-epoch validation values. Rerunning continues the study; several processes
    (on several machines with --storage) may work on one study at once. Writes tune.md (table,
    best trial, history and importance figures) and tune.csv."""
    from .config import load_raw, validate_config

    validate_config(load_raw(config, overrides), str(config))  # schema errors before the imports of the runs (torch: seconds)
    from .tune import optuna_module, plan_tuning

    optuna_module()  # installed? (the tune extra)
    plan = plan_tuning(config, overrides, out, storage, study_name, may_differ=may_differ)  # every check before the first trial
    from .progress import ProgressReporter
    from .tune import run_study, shown_url
    from .tune_report import TUNE_MD, best_row, param_text, tune_rich_table, write_tune_report

    with ProgressReporter(quiet=quiet) as progress:
        study = run_study(plan, trials or plan.tune.trials, progress)
    rows = write_tune_report(plan.out, study, storage=shown_url(plan.storage), metric=plan.metric, direction=plan.direction)
    out_console.print(tune_rich_table(rows, plan.metric, plan.direction, f"{plan.study_name}: val {plan.metric} ({plan.direction})"))
    best = best_row(rows, plan.direction)
    if best is not None:
        params = " ".join(f"{k}={param_text(v)}" for k, v in best["params"].items())
        out_console.print(f"best: trial {best['trial']}, val {plan.metric} {best['value']:.4f}: {params}  ({best['run_dir']})",
                          markup=False, highlight=False, soft_wrap=True)
    out_console.print(f"(summary: {plan.out / TUNE_MD}; study: {shown_url(plan.storage)})", markup=False, highlight=False, soft_wrap=True)


@cli.command()
def plugins() -> None:
    """List every registered encoder, data set, head and transcriber, with the plugin that provides it."""
    from .plugins import blocked_plugins, broken_plugins, get_registries, plugin_source

    regs = get_registries()
    table = Table(title="multiturbo plugins")
    for col in ("kind", "name", "plugin", "source"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold")
    for kind, registry in (("encoder", regs.encoders), ("dataset", regs.datasets), ("head", regs.heads), ("transcriber", regs.transcribers)):
        for entry in registry:
            doc = (entry.cls.__doc__ or "").strip().splitlines()
            table.add_row(kind, entry.name, entry.plugin, plugin_source(entry.plugin), doc[0] if doc else "")
    out_console.print(table)
    for name, problem in broken_plugins().items():
        out_console.print(f"skipped (broken): {name}: {problem}", markup=False, highlight=False, soft_wrap=True)
    for name in blocked_plugins():
        out_console.print(f"skipped (MULTITURBO_BLOCK_PLUGINS): {name}", markup=False, highlight=False)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of experiment configs (for editor validation), with the options of every
    installed data set, encoder and head plugin attached where the config names the plugin."""
    from .config.plugin_schema import config_schema
    from .plugins import get_registries

    click.echo(json.dumps(config_schema(get_registries()), indent=2))


@cli.command("config")
@click.argument("config", type=click.Path(path_type=Path))
@set_option
@click.option("--no-groups", is_flag=True, help="Do not build the model to show its parameter groups.")
def show_config(config: Path, overrides: tuple[str, ...], no_groups: bool) -> None:
    """Validate CONFIG and print it resolved (presets applied, plugin defaults filled), then the
    optimiser's parameter groups as YAML comments (name, lr, weight decay, parameters). This builds
    the device, the data set and the model, so it runs every check `multiturbo run` makes before
    training (the data's files included) and fails as run would; --no-groups checks the config only."""
    from .config import config_to_yaml, load_config

    cfg = load_config(config, overrides)
    click.echo(config_to_yaml(cfg), nl=False)
    if no_groups:
        return
    from .build import build_experiment
    from .composition import composition_warnings, split_composition
    from .optim import describe_groups, param_groups
    from .runtime import resolve_device

    resolve_device(cfg.train.device)  # what run checks first
    exp = build_experiment(cfg)  # the data set (every file), the model, the schedule: run's checks before training
    groups = param_groups(exp.model, cfg.train)
    composition = split_composition(exp.splits, exp.dataset.classes, list(cfg.modalities), exp.dataset.group_key)
    for warning in composition_warnings(composition):
        click.echo(f"# warning: {warning}")
    click.echo(f"# parameter groups (initial lr; train.schedule: {cfg.train.schedule.decay + ' after warm-up' if cfg.train.schedule else 'none, constant'}):")
    for line in describe_groups(groups):
        click.echo(f"#   {line}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True, help="Device for the embedding pass: auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=None, help="Batch size of the embedding pass (default: the run's eval batch size).")
@quiet_option
def analyze(run_dir: Path, device: str, batch_size: int | None, quiet: bool) -> None:
    """Measure alignment / uniformity of RUN_DIR; write figures and report.md."""
    from .analysis import analyze_run
    from .progress import ProgressReporter
    from .report import write_run_report
    from .runtime import resolve_device
    from .tensorboard import export_tensorboard

    if batch_size is not None and batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    with ProgressReporter(quiet=quiet) as progress:
        result = analyze_run(run_dir, progress, device=resolve_device(device), batch_size=batch_size)
    tb = export_tensorboard(run_dir)
    report = write_run_report(run_dir)
    table = Table(title=f"{run_dir.name}: alignment / uniformity", caption=f"test split, {result['n_items']} items; lower is better")
    for col in ("measure", "of", "value"):
        table.add_column(col)
    for pair, value in result["alignment"].items():
        table.add_row("alignment", pair, f"{value:.4f}")
    for m, value in result["uniformity"].items():
        table.add_row("uniformity", m, f"{value:.4f}")
    out_console.print(table)
    if not quiet:
        out_console.print(f"report: {report}" + (f"  tensorboard: {tb}" if tb else "  (tensorboard not installed: no event files)"), markup=False, highlight=False)


# -- using a trained run: predict, evaluate, embed (multiturbo.inference) -------------------------
def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{v!r} is not MODALITY=VALUE", param_hint=option)
        out[key.strip()] = value
    return out


def _load_for_inference(run_dir: Path, device: str, batch_size: int | None, kinds: tuple[str, ...] = (), transcript_cache: Path | None = None):
    from .api import load

    if batch_size is not None and batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    return load(run_dir, device=device, batch_size=batch_size, kinds=_pairs(kinds, "--kind") or None, transcript_cache=transcript_cache)


def _inference_inputs(run, data: Path | None, items: tuple[str, ...], columns: tuple[str, ...], labels: str, split: str = "test", transcribe: str | None = None):
    from .inference import Inputs, read_inputs

    if data is not None and items:
        raise MultiturboError("Give either INPUT (a manifest) or --input MODALITY=VALUE options, not both.")
    if items:
        return Inputs([_pairs(items, "--input")], ["0"], source="the --input item")
    if data is None:
        raise MultiturboError("Nothing to run on: give INPUT (a CSV / JSONL manifest) or --input MODALITY=VALUE per modality.")
    kwargs = {"columns": _pairs(columns, "--column"), "kinds": run.kinds or None, "optional": run.fillable(transcribe)} if data.suffix.lower() not in (".yaml", ".yml") else {}
    return read_inputs(run.loaded, data, labels=labels, split=split, **kwargs)


inference_options = [
    click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto."),
    click.option("--batch-size", type=int, default=None, help="Items per forward (default: the run's eval batch size)."),
    click.option("--column", "columns", multiple=True, metavar="MODALITY=COLUMN", help="The manifest column of a modality (default: the training manifest's, else the modality's name)."),
    click.option("--kind", "kinds", multiple=True, metavar="MODALITY=KIND", help="How to read a modality's values: audio / image (file paths) or text."),
    click.option("--quiet", "-q", is_flag=True, help="No progress bar or progress lines."),
    click.option("--workers", type=click.IntRange(min=0), default=None,
                 help="DataLoader worker processes (0: this process): on the CPU each reads, collates and runs the model on its "
                      "batches; with a GPU they read and collate. Default: one per CPU core on the CPU (none on one core), all but "
                      "one with a GPU, at most 8; none for a single batch."),
]
transcribe_options = [
    click.option("--transcribe", default=None, metavar="MODEL", help="Fill a missing text modality by transcribing the audio with this Whisper model (a local directory or a cached hub id; offline)."),
    click.option("--transcript-cache", type=click.Path(path_type=Path), default=None, help="The JSON file caching transcripts (default: transcripts.json in RUN_DIR)."),
]


def _with_inference_options(fn):
    for option in reversed(inference_options + transcribe_options):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--input", "items", multiple=True, metavar="MODALITY=VALUE", help="One item instead of a manifest: --input audio=a.wav --input text='hello'.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Write the predictions to a .csv or .jsonl file.")
@_with_inference_options
def predict(run_dir: Path, data: Path | None, items: tuple[str, ...], output: Path | None, device: str, batch_size: int | None, columns: tuple[str, ...], kinds: tuple[str, ...],
            transcribe: str | None, transcript_cache: Path | None, quiet: bool = False, workers: int | None = None) -> None:
    """Predict the class of every item of DATA (a CSV / JSONL manifest; labels optional) with RUN_DIR.

    Writes one row per item: id, predicted class, one probability per class (prob_<class>).
    With --transcribe MODEL, items without text get their audio's transcript as the text."""
    from .inference import predictions, run_inputs, write_predictions
    from .progress import ProgressReporter

    run = _load_for_inference(run_dir, device, batch_size, kinds, transcript_cache)
    inputs = run.transcribed(_inference_inputs(run, data, items, columns, "optional", transcribe=transcribe), transcribe)
    with ProgressReporter(quiet=quiet) as progress:
        outputs = run_inputs(run.loaded, inputs, batch_size=batch_size, kinds=run.kinds, progress=progress, description="prediction", workers=workers)
    rows = predictions(run.loaded, outputs)
    if output is not None:
        write_predictions(output, rows, run.classes)
        out_console.print(f"{len(rows)} prediction(s) written to {output}", markup=False, highlight=False)
        return
    table = Table(title=f"{run_dir.name}: predictions")
    for col in ("id", "class", *run.classes):
        table.add_column(col)
    for r in rows[:50]:
        table.add_row(r["id"], r["class"], *(f"{r['probabilities'][c]:.3f}" for c in run.classes))
    out_console.print(table)
    if len(rows) > 50:
        out_console.print(f"({len(rows) - 50} more; write them all with --output FILE.csv)", markup=False, highlight=False)


def _metrics_table(metrics: dict, title: str) -> Table:
    """The metrics and recall@k as rows; with an ``asr`` part, a gold and an asr column side by side."""
    from .metrics import METRICS

    sides = {"value": metrics} if "asr" not in metrics else {"gold text": metrics, "asr text": metrics["asr"]}
    table = Table(title=title, caption=f"{metrics['n_items']} items")
    table.add_column("metric")
    for name in sides:
        table.add_column(name, justify="right")
    for key in METRICS:
        if key in metrics:
            table.add_row(key, *(f"{m[key]:.4f}" for m in sides.values()))
    for pair, res in metrics["retrieval"].items():
        for k in res:
            if k != "n":
                table.add_row(f"{pair} {k}", *(f"{m['retrieval'].get(pair, {}).get(k, float('nan')):.4f}" for m in sides.values()))
    return table


@cli.command("evaluate")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Write the metrics to this JSON file.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test", "all"]), help="With a data set config as DATA: the split to evaluate.")
@_with_inference_options
def evaluate_command(run_dir: Path, data: Path, output: Path | None, split: str, device: str, batch_size: int | None, columns: tuple[str, ...], kinds: tuple[str, ...],
                     transcribe: str | None, transcript_cache: Path | None, quiet: bool = False, workers: int | None = None) -> None:
    """Test RUN_DIR on DATA: a labelled manifest (labels are class names) or a data set config (.yaml).

    The metrics of training's evaluation (wa, ua, f1, eer for two classes, confusion) and
    cross-modal retrieval (recall@1, recall@5 per modality pair). With --transcribe MODEL, the
    metrics with the gold text and with the audio's transcripts side by side, and the WER."""
    from .checkpoint import write_json
    from .inference import evaluate_outputs, run_inputs
    from .progress import ProgressReporter
    from .transcribe import TranscriptCache, evaluate_transcribed

    run = _load_for_inference(run_dir, device, batch_size, kinds, transcript_cache)
    inputs = _inference_inputs(run, data, (), columns, "required", split, transcribe)
    if transcribe is None:
        with ProgressReporter(quiet=quiet) as progress:
            outputs = run_inputs(run.loaded, inputs, batch_size=batch_size, kinds=run.kinds, progress=progress, description="evaluation", workers=workers)
        metrics = evaluate_outputs(run.loaded, outputs)
    else:
        metrics = evaluate_transcribed(run.loaded, inputs, run.transcriber(transcribe), batch_size=batch_size, kinds=run.kinds,
                                       cache=TranscriptCache(run.transcript_cache), workers=workers)
    if output is not None:
        write_json(output, metrics)
    out_console.print(_metrics_table(metrics, f"{run_dir.name} on {data.name}"))
    if "transcription" in metrics:
        t = metrics["transcription"]
        wer = "n/a (no gold text)" if t["wer"] is None else f"{t['wer']:.4f}"
        out_console.print(f"word error rate of the transcripts: {wer} ({t['n_transcribed']} transcribed, {t['n_empty_transcripts']} empty; model {t['model']})",
                          markup=False, highlight=False, soft_wrap=True)
    if output is not None:
        out_console.print(f"metrics: {output}", markup=False, highlight=False)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--input", "items", multiple=True, metavar="MODALITY=VALUE", help="One item instead of a manifest.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="A .safetensors, .npz or .npy file (.npy: one file per array).")
@_with_inference_options
def embed(run_dir: Path, data: Path | None, items: tuple[str, ...], output: Path, device: str, batch_size: int | None, columns: tuple[str, ...], kinds: tuple[str, ...],
          transcribe: str | None, transcript_cache: Path | None, quiet: bool = False, workers: int | None = None) -> None:
    """Export the projected views of every item of DATA (one eval pass) per modality.

    Each modality m is written L2-normalised as m and before normalisation as m.raw,
    with labels (-1 when unknown) and the item ids (docs/using-a-trained-model.md)."""
    from .inference import run_inputs, write_embeddings
    from .progress import ProgressReporter

    run = _load_for_inference(run_dir, device, batch_size, kinds, transcript_cache)
    inputs = run.transcribed(_inference_inputs(run, data, items, columns, "optional", transcribe=transcribe), transcribe)
    with ProgressReporter(quiet=quiet) as progress:
        out = run_inputs(run.loaded, inputs, batch_size=batch_size, kinds=run.kinds, progress=progress, description="embedding", workers=workers)
    files = write_embeddings(output, run.loaded, out)
    dims = ", ".join(f"{m} [{v.shape[0]}, {v.shape[1]}]" for m, v in out.views.items())
    out_console.print(f"embeddings {dims} written to {', '.join(map(str, files))}", markup=False, highlight=False, soft_wrap=True)


@cli.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="The file format.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="The .onnx file; its .json, .preprocess/ and _runner.py go beside it.")
@click.option("--example", type=click.Path(path_type=Path), default=None, help="A manifest of items to trace the graph on (default: made-up audio / text / image items).")
@click.option("--kind", "kinds", multiple=True, metavar="MODALITY=KIND", help="How to read a modality's values: audio / image (file paths) or text.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="The ONNX opset.")
def export_command(run_dir: Path, fmt: str, output: Path, example: Path | None, kinds: tuple[str, ...], opset: int) -> None:
    """Export RUN_DIR's inference graph (encoders, projections, head; eval mode) to ONNX.

    Dynamic batch and length axes; the preprocessing (the encoders' collate) and a runner
    script (onnxruntime) are written beside it (docs/using-a-trained-model.md)."""
    from .export import export_onnx

    run = _load_for_inference(run_dir, "cpu", None, kinds)
    done = export_onnx(run.loaded, output, example=example, kinds=run.kinds or None, opset=opset)
    check = "not checked (onnxruntime not installed)" if done.max_abs_diff is None else f"onnxruntime vs PyTorch: max |diff| {done.max_abs_diff:.1e}"
    out_console.print(f"{fmt}: {done.model}  ({check}); preprocessing: {done.preprocess}; runner: {done.runner}", markup=False, highlight=False, soft_wrap=True)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@set_option
@click.option("--methods", default="vanilla,cross,turbo", show_default=True, help="Comma-separated methods to time side by side.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1), help="Timed steps per method (the median is reported).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed steps first.")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default=None, help="Mixed precision (default: the config's train.amp).")
@click.option("--device", default=None, help="Device (default: the config's train.device).")
@click.option("--no-memory", is_flag=True, help="On the CPU, skip the peak-memory subprocesses.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Also write the figures as JSON.")
@quiet_option
def bench(config: Path, overrides: tuple[str, ...], methods: str, steps: int, warmup: int, amp: str | None, device: str | None,
          no_memory: bool, json_path: Path | None, quiet: bool) -> None:
    """Time a training step of each method of CONFIG: items/s, peak memory, the loss's share of
    the step, and a hand-written PyTorch loop doing the same computation (docs/scaling.md)."""
    from .bench import COLUMNS, bench_methods, format_rows
    from .checkpoint import write_json
    from .compare import method_configs
    from .runtime import resolve_device

    configs = method_configs(config, overrides, [m.strip() for m in methods.split(",") if m.strip()])
    first = next(iter(configs.values()))
    dev = resolve_device(device or first.train.device)
    say = None if quiet else (lambda line: err_console.print(line, markup=False, highlight=False))
    report = bench_methods(configs, steps=steps, warmup=warmup, device=dev, amp=amp, memory=not no_memory, progress=say)
    table = Table(title=f"{first.name}: training step on {report.device} (amp {report.amp}, median of {steps})",
                  caption=report.memory_note or None)
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "method" else "right")
    for row in format_rows(report):
        table.add_row(*row)
    out_console.print(table)
    ratios = report.ratios()
    targets = {"turbo_over_vanilla": ("turbo step / vanilla step", 2.1), "turbo_loss_share": ("loss share of a turbo step", 0.03),
               "turbo_over_handwritten": ("turbo step / hand-written loop", 1.05)}
    for key, (text, target) in targets.items():
        if key in ratios:
            value = ratios[key]
            verdict = "ok" if value <= target else "ABOVE target"
            out_console.print(f"{text}: {value:.3f} (target <= {target}: {verdict})", markup=False, highlight=False)
    out_console.print(f"data loader alone: {report.loader_items_per_s:.1f} items/s with {report.num_workers} worker(s) "
                      f"= {ratios['loader_over_fastest_step']:.2f}x the fastest step's items/s (>= 1: it keeps up)", markup=False, highlight=False)
    if json_path is not None:
        write_json(json_path, report.to_dict())


def main() -> None:
    from .warning_lines import show_own_warnings_as_lines

    show_own_warnings_as_lines()  # "warning: ..." lines, not Python's file:line + source display
    try:
        cli(prog_name="multiturbo")
    except SystemExit as exc:
        if exc.code in (None, 0):  # a finished command under torchrun: end the process group cleanly (not after a
            from .distributed import shutdown  # failure: a barrier would wait for ranks that may be gone)

            shutdown()
        raise


if __name__ == "__main__":
    main()
