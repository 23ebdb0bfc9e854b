"""One experiment end to end: build, train, test, and write the run directory
(its files: :mod:`multiturbo.rundir`).

``run_experiment(cfg, out, resume=True)`` (``multiturbo run ... --resume``) continues a run
that was killed or failed from its last checkpoint, after checking that ``cfg`` is the saved
config (see docs/reliability.md).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from . import rundir
from .analysis import embed, write_analysis
from .audio_cache import cache_splits
from .balance import sample_weights, split_labels
from .build import Experiment, build_experiment
from .composition import best_epoch_warning, composition_warnings, split_composition, split_membership
from .config import ExperimentConfig
from .data import BudgetBatchSampler, Collator, gathered_positions, item_lengths, make_loader
from .distributed import World, barrier, init_from_env
from .errors import ConfigError, MultiturboError
from .feature_cache import cache_frozen_features
from .progress import ProgressReporter
from .report import write_run_report
from .runtime import resolve_device, seed_everything
from .tensorboard import export_tensorboard
from .tracking import MlflowRun, start_run_tracking
from .train import Evaluation, TrainState, evaluate_items, fit
from .version import __version__


def run_experiment(
    cfg: ExperimentConfig,
    out: Path | str | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
    label: str = "",
    resume: bool = False,
    before_run: float | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    tags: Mapping[str, str] | None = None,
    tracking_root: Path | None = None,
) -> dict:
    """Train and test ``cfg``; returns the test metrics (also written to ``out/metrics.json``).

    ``resume=True`` continues the unfinished run in ``out`` from its checkpoint (``cfg`` must
    be the config it was started with; ``overwrite`` must be false). ``before_run``: seconds the
    process spent before this call (the CLI's start-up), recorded in run.json's ``timings``.
    ``on_epoch(record)``: called on rank 0 after each epoch with its metrics.jsonl record
    (:func:`multiturbo.train.fit`).

    With ``train.tracking: mlflow`` the run is logged live to MLflow (:mod:`multiturbo.tracking`):
    ``tags`` are added to its tags (cv / compare: ``command`` and the parent run; a tuner: ``trial``;
    ``mlflow.runName`` names it), ``tracking_root`` is where the default store goes (default: the
    run directory's parent).

    Under torchrun (WORLD_SIZE > 1) every process runs this: the model is wrapped in
    DistributedDataParallel, each rank trains on its shard of every epoch with the contrastive
    negatives gathered from all ranks, validation and test metrics are computed over all shards,
    and only rank 0 writes the run directory (docs/scaling.md), holding its lock (``run.lock``:
    a second process that would write there is refused)."""
    with rundir.RunLock() as lock:
        return _run_experiment(cfg, out, lock, overwrite=overwrite, progress=progress, label=label, resume=resume, before_run=before_run,
                               on_epoch=on_epoch, tags=tags, tracking_root=tracking_root)


def _run_experiment(cfg: ExperimentConfig, out: Path | str | None, lock: rundir.RunLock, *, overwrite: bool,
                    progress: ProgressReporter | None, label: str, resume: bool, before_run: float | None,
                    on_epoch: Callable[[dict], None] | None, tags: Mapping[str, str] | None, tracking_root: Path | None) -> dict:
    clock = _Clock(before_run)
    progress = progress or ProgressReporter(quiet=True)
    previous = _check_resume(cfg, out, overwrite) if resume else None
    device, world = _device_and_world(cfg, out)
    if resume and world.is_main:
        lock.take(Path(out))
    seed_everything(cfg.seed)
    exp = build_experiment(cfg)  # every config and data check happens here, before training
    clock.lap("build")
    out = Path(out) if resume else _prepare_run_dir(cfg, out, overwrite, exp, world.is_main, lock)
    info = rundir.RunInfo(out, _facts(cfg, exp, device, world.size), previous, write=world.is_main)
    if world.is_main and not resume:
        rundir.write_splits(out, split_membership(exp.splits))
    for warning in info.data["split_warnings"] if world.is_main else ():
        progress.log(f"{label}warning: {warning}")
    dropped = exp.dataset.dropped_items
    if dropped and world.is_main:
        progress.log(f"{label}warning: the data set left out {len(dropped)} unusable item(s) (listed in run.json, dropped_items), "
                     f"e.g. {dropped[0]}")
    tracker = _start_tracking(cfg, out, info, previous, tags, tracking_root, progress, label) if world.is_main else None
    clock.lap("run_dir")
    try:
        model = exp.model.to(device)
        runner, rank_seed = None, None
        if world.distributed:
            rank_seed = cfg.seed + 1_000_003 * world.rank
            torch.manual_seed(rank_seed)  # each rank its own dropout masks (the weights are rank 0's)
            runner = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        loaders = _Loaders(cfg, exp, model, world, device, progress, label)
    except BaseException as exc:
        if tracker is not None:
            tracker.fail(exc, rundir.tracked_outputs(out))
        raise
    clock.lap("loaders")
    start = time.perf_counter()
    try:
        state = TrainState.create(model, cfg.train, device, runner, steps_per_epoch=len(loaders.train), total_steps=loaders.total_steps)
        result = fit(state, loaders.train, loaders.val, out, progress, label=label, resume=resume, rank_seed=rank_seed,
                     on_epoch=_epoch_hook(tracker, on_epoch))
        clock.lap("train")
        barrier()  # rank 0 has written best.safetensors
        rundir.load_best(model, out)
        tested = evaluate_items(model, loaders.test, device, progress, f"{label}test")
        metrics = tested.metrics
        clock.lap("test")
    except BaseException as exc:
        info.failed(exc, time.perf_counter() - start)
        if tracker is not None:
            tracker.fail(exc, rundir.tracked_outputs(out))
        raise
    metrics.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run, stopped_early=result.stopped_early)
    warning = best_epoch_warning(len(exp.splits.val), result.best_epoch, result.epochs_run)
    if warning:
        info.data["split_warnings"].append(warning)  # saved by info.finished below
        if world.is_main:
            progress.log(f"{label}warning: {warning}")
    if world.is_main:
        rundir.write_test_metrics(out, metrics)
        unwritten = write_test_predictions(out, exp, tested, world.size)
        if unwritten:
            progress.log(f"{label}warning: {unwritten}")
    info.finished(time.perf_counter() - start, nonfinite_skipped=result.nonfinite_skipped, cut_items=_cut_items(model, cfg.train.num_workers),
                  **(_throughput(out) if world.is_main else {}))
    if world.is_main:
        rundir.remove_checkpoint(out)
        write_outputs(out, model, loaders.analysis(), device, exp.dataset.classes, cfg.method, progress, clock)
        info.update(timings=clock.record())
        if tracker is not None:
            tracker.finish(rundir.tracked_outputs(out), {f"test/{k}": v for k, v in metrics.items()}, step=result.best_epoch)
    barrier()
    return metrics


def write_test_predictions(out: Path, exp: Experiment, tested: Evaluation, world_size: int) -> str | None:
    """``test_predictions.csv`` from the labels and predictions metrics.json was computed from, put
    back in split order (a multi-process pass gathers the ranks' shards one after another) and named
    by the ids of splits.json. Returns a warning (and writes nothing) when the pass did not score
    each test item once."""
    ids = split_membership(exp.splits)["test"]
    positions = gathered_positions(len(ids), world_size)
    if len(positions) != len(tested.labels):
        return (f"the test pass scored {len(tested.labels)} items but the test split holds {len(ids)}: "
                f"{rundir.layout.TEST_PREDICTIONS} is not written (the metrics stand)")
    labels, preds = [0] * len(ids), [0] * len(ids)
    for row, position in enumerate(positions):
        labels[position], preds[position] = int(tested.labels[row]), int(tested.preds[row])
    rundir.write_test_predictions(out, ids, labels, preds)
    return None


def _start_tracking(cfg: ExperimentConfig, out: Path, info: rundir.RunInfo, previous: dict | None, tags: Mapping[str, str] | None,
                    root: Path | None, progress: ProgressReporter, label: str) -> MlflowRun | None:
    """Rank 0's MLflow run (None without ``train.tracking``), its id kept in run.json's ``tracking`` (a
    resume continues it). A store that cannot be reached fails the run here, before training."""
    try:
        tracker = start_run_tracking(cfg, out, tags=tags, root=root, previous=(previous or {}).get("tracking"), log=progress.log)
    except BaseException as exc:
        info.failed(exc, 0.0)
        raise
    if tracker is not None:
        info.update(tracking=tracker.record())
        progress.log(f"{label}MLflow run {tracker.run_id} in {tracker.uri}")
    return tracker


def _epoch_hook(tracker: MlflowRun | None, on_epoch: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    """fit's ``on_epoch``: the tracker logs the record, then the caller's hook sees it."""
    if tracker is None:
        return on_epoch

    def hook(record: dict) -> None:
        tracker.epoch(record)
        if on_epoch is not None:
            on_epoch(record)

    return hook


class _Clock:
    """Seconds per phase of a run, for run.json's ``timings``: ``before_run`` (given by
    ``multiturbo run``: the process until run_experiment, i.e. interpreter, imports, config), build, run_dir, loaders, train (fit, with validation), test, then the outputs
    (analysis, tensorboard, report); ``outside_training``: all but train."""

    def __init__(self, before_run: float | None = None):
        self.laps: dict[str, float] = {} if before_run is None else {"before_run": before_run}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now

    def record(self) -> dict[str, float]:
        laps = {k: round(v, 3) for k, v in self.laps.items()}
        return {**laps, "outside_training": round(sum(v for k, v in self.laps.items() if k != "train"), 3)}



def _check_resume(cfg: ExperimentConfig, out: Path | str | None, overwrite: bool) -> dict:
    """run.json of the run to resume in ``out`` (see :func:`multiturbo.rundir.check_resumable`)."""
    if out is None:
        raise MultiturboError("Resuming needs the run directory: pass --out DIR (or give DIR as the config).")
    if overwrite:
        raise MultiturboError("--resume and --overwrite contradict each other: resume continues the run in the directory, overwrite replaces it.")
    return rundir.check_resumable(cfg, Path(out))


def _device_and_world(cfg: ExperimentConfig, out: Path | str | None) -> tuple[torch.device, World]:
    """The device (under torchrun, CUDA ranks take their local GPU) and the process group."""
    device = resolve_device(cfg.train.device)
    world = init_from_env(device.type)
    if world.distributed:
        if out is None:
            raise MultiturboError("A multi-process run needs its run directory named: pass --out DIR (every process must write to the same place).")
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
    return device, world


def _prepare_run_dir(cfg: ExperimentConfig, out: Path | str | None, overwrite: bool, exp: Experiment, main: bool,
                     lock: rundir.RunLock) -> Path:
    """A new run's directory: checked by every rank, then locked and prepared by rank 0 (config.yaml, assets/)."""
    out = Path(out) if out else rundir.default_run_dir(cfg)
    rundir.check_run_dir(out, overwrite)  # every rank checks before rank 0 writes anything
    barrier()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        lock.take(out)  # before --overwrite removes anything
        rundir.prepare_run_dir(out, overwrite)
        rundir.write_config(out, cfg)
        rundir.export_assets(exp.model.encoders, out)  # what the encoders need to be rebuilt offline (assets/)
    return out


DROPPED_LISTED = 100  # run.json lists this many of the dropped items (and counts them all)


def _facts(cfg: ExperimentConfig, exp: Experiment, device: torch.device, processes: int) -> dict:
    """What run.json records about the run besides its status and times (with the splits'
    composition and its warnings: :mod:`multiturbo.composition`)."""
    composition = split_composition(exp.splits, exp.dataset.classes, list(cfg.modalities), exp.dataset.group_key)
    return {
        "multiturbo_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "processes": processes,
        "classes": exp.dataset.classes,
        "modalities": list(cfg.modalities),
        "method": cfg.method,
        "experiment": cfg.name,
        "dataset": cfg.data.name,
        "fold": cfg.data.fold,
        "seed": cfg.seed,
        "split_seed": cfg.data.data_seed,
        "split_sizes": {s: len(getattr(exp.splits, s)) for s in ("train", "val", "test")},
        "split_composition": composition,
        "split_warnings": composition_warnings(composition),
        "dropped_items": {"count": len(exp.dataset.dropped_items), "items": exp.dataset.dropped_items[:DROPPED_LISTED]},
    }


class _Loaders:
    """The run's loaders: train (shuffled by the seed; balanced by class with train.sampler=balanced),
    val and test, each rank on its shard; with train.audio_cache / train.frozen_features, over the
    cached splits."""

    def __init__(self, cfg: ExperimentConfig, exp: Experiment, model: torch.nn.Module, world: World, device: torch.device,
                 progress: ProgressReporter, label: str):
        t = cfg.train
        self.collator = Collator(model.encoders, num_classes=len(exp.dataset.classes))
        self.world, self.num_workers = world, t.num_workers
        options = dict(num_workers=t.num_workers, pin_memory=t.pin_memory, prefetch_factor=t.prefetch_factor, shard=(world.rank, world.size))
        self.eval_bs = t.eval_batch_size or t.batch_size
        splits = cache_splits(exp.splits, model.encoders, t.audio_cache, t.audio_cache_dir)  # train.audio_cache (off: unchanged)
        self.splits = cache_frozen_features(splits, model.encoders, t.frozen_features, device, self.eval_bs, progress, label,
                                            store=t.frozen_features_store, directory=t.frozen_features_dir, part_dropout=t.frozen_part_dropout)
        weights = sample_weights(split_labels(exp.splits.train), len(exp.dataset.classes)) if t.sampler == "balanced" else None
        lengths = None
        if t.batching == "bucket" or t.max_batch_seconds is not None:
            lengths = item_lengths(self.splits.train, {m: enc.max_input_seconds() for m, enc in model.encoders.items()})
            if lengths is None or not any(lengths):
                lengths = None
                if t.max_batch_seconds is not None:
                    raise ConfigError([
                        f"train.max_batch_seconds: {t.max_batch_seconds} needs each item's length, but the data set {cfg.data.name!r} gives "
                        "none (its splits are not held in memory and define no `length`). Remove train.max_batch_seconds and set "
                        "train.batch_size, or give the data set's LazySplit a `length` function."
                    ])
                progress.log(f"{label}warning: train.batching: bucket needs item lengths, but the data set {cfg.data.name!r} gives none "
                             "(its splits are not held in memory and define no `length`); batches are random.")
        self.train = make_loader(self.splits.train, self.collator, batch_size=t.batch_size, shuffle=True, seed=cfg.seed,
                                 drop_singleton=model.contrastive is not None, weights=weights, lengths=lengths,
                                 max_batch_seconds=t.max_batch_seconds, min_batch_size=t.min_batch_size,
                                 bucket_jitter=t.bucket_jitter, **options)
        self.total_steps = budget_warning(self.train, t, progress, label)
        self.val = make_loader(self.splits.val, self.collator, batch_size=self.eval_bs, shuffle=False, **options)
        self.test = make_loader(self.splits.test, self.collator, batch_size=self.eval_bs, shuffle=False, **options)

    def analysis(self):
        """The whole test split for rank 0's analysis (a multi-process run's test loader is a shard)."""
        if not self.world.distributed:
            return self.test
        return make_loader(self.splits.test, self.collator, batch_size=self.eval_bs, shuffle=False, num_workers=self.num_workers)


def budget_warning(loader, t, progress: ProgressReporter, label: str) -> int | None:
    """With train.max_batch_seconds: warnings when some of epoch 1's batches exceed the budget (an item
    longer than the budget goes alone in its batch; items longer than max_batch_seconds / min_batch_size
    go min_batch_size together); returns the whole training's steps (the schedule's length, epochs
    differing in length). None for fixed batches."""
    sampler = loader.batch_sampler
    if not isinstance(sampler, BudgetBatchSampler):
        return None
    report, budget = sampler.over_budget(1), sampler.max_cost
    if not sampler.steps(1):
        raise ConfigError([
            f"train.max_batch_seconds: {budget:g} cuts the {sampler.n} training items into fewer batches than the "
            f"{sampler.world} processes, so there is no training step (every process needs a batch per step). Lower "
            "max_batch_seconds or min_batch_size, or use fewer processes."
        ])
    wide = f"Raise max_batch_seconds to at least {sampler.min_size * report.longest:g} to keep every batch within it"
    if report.alone:
        progress.log(f"{label}warning: train.max_batch_seconds: {report.alone} of epoch 1's {report.total} batches hold one item "
                     f"alone, an item longer than the budget of {budget:g} by itself (the longest is {report.longest:g}). "
                     "In one process its contrastive terms have no negatives, so only its classification loss trains it (under torchrun the "
                     "other processes' items are its negatives). "
                     f"{wide} with train.min_batch_size = {sampler.min_size} items, or leave such items out of the data.")
    if report.over:
        progress.log(f"{label}warning: train.max_batch_seconds: {report.over} of epoch 1's {report.total} batches exceed the budget of "
                     f"{budget:g} (padded length: items x longest item), because each batch holds at least "
                     f"train.min_batch_size = {sampler.min_size} items. {wide}, or lower min_batch_size.")
    return sampler.total_batches(t.epochs)


def _throughput(out: Path) -> dict:
    """For run.json, from the epochs in metrics.jsonl: ``items_per_s`` (the mean of the epochs' training
    items/s) and ``peak_memory`` (each figure's largest over the epochs)."""
    log = rundir.read_log(out)
    rates = [r["items_per_s"] for r in log if r.get("items_per_s")]
    peak: dict[str, float] = {}
    for r in log:
        for key, value in (r.get("peak_memory") or {}).items():
            peak[key] = max(peak.get(key, 0.0), value)
    return {"items_per_s": sum(rates) / len(rates) if rates else None, "peak_memory": peak}


def _cut_items(model, num_workers: int) -> dict[str, int] | None:
    """Items cut to an encoder's length limit (max_seconds / max_tokens), per modality, over the
    whole run; None when DataLoader workers collated (their counts stay in the workers: see the
    warnings they printed)."""
    if num_workers > 0:
        return None
    return {m: int(enc.cut_items) for m, enc in model.encoders.items() if hasattr(enc, "cut_items")}


def write_outputs(out: Path, model, test_loader, device: torch.device, classes: list[str], method: str, progress: ProgressReporter,
                  clock: _Clock | None = None) -> None:
    """After a finished run: the representation analysis of the test split (analysis/), the
    figures, TensorBoard event files (when tensorboard is installed) and report.md.

    These read what the run wrote; a failure here is reported as a warning line and leaves the
    finished run intact (``multiturbo analyze RUN_DIR`` redoes them)."""
    for name, job in (
        ("analysis", lambda: write_analysis(out, embed(model, test_loader, device), classes=classes, method=method)),
        ("tensorboard export", lambda: export_tensorboard(out)),
        ("report", lambda: write_run_report(out)),
    ):
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - the run itself is finished and saved
            progress.log(f"warning: {out}: the {name} failed ({type(exc).__name__}: {exc}); run `multiturbo analyze {out}` to retry.")
        if clock is not None:
            clock.lap(name.split()[0])
