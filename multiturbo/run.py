"""One experiment end to end: build, train, test, and write the run directory
(its files: :mod:`multiturbo.rundir`).

``run_experiment(cfg, out, resume=True)`` (``multiturbo run ... --resume``) continues a run
that was killed or failed from its last checkpoint, after checking that ``cfg`` is the saved
config (see docs/reliability.md).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from . import rundir
from .version import __version__
from .analysis import embed, write_analysis
from .audio_cache import cache_splits
from .build import build_experiment
from .config import ExperimentConfig
from .data import Collator, make_loader
from .distributed import barrier, init_from_env
from .errors import MultiturboError
from .progress import ProgressReporter
from .report import write_run_report
from .runtime import resolve_device, seed_everything
from .tensorboard import export_tensorboard
from .train import evaluate, fit


def run_experiment(
    cfg: ExperimentConfig,
    out: Path | str | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
    label: str = "",
    resume: bool = False,
) -> dict:
    """Train and test ``cfg``; returns the test metrics (also written to ``out/metrics.json``).

    ``resume=True`` continues the unfinished run in ``out`` from its checkpoint (``cfg`` must
    be the config it was started with; ``overwrite`` must be false).

    Under torchrun (WORLD_SIZE > 1) every process runs this: the model is wrapped in
    DistributedDataParallel, each rank trains on its shard of every epoch with the contrastive
    negatives gathered from all ranks, validation and test metrics are computed over all shards,
    and only rank 0 writes the run directory (docs/scaling.md)."""
    progress = progress or ProgressReporter(quiet=True)
    if resume:
        if out is None:
            raise MultiturboError("Resuming needs the run directory: pass --out DIR (or give DIR as the config).")
        if overwrite:
            raise MultiturboError("--resume and --overwrite contradict each other: resume continues the run in the directory, overwrite replaces it.")
        out = Path(out)
        previous = rundir.check_resumable(cfg, out)
    device = resolve_device(cfg.train.device)
    world = init_from_env(device.type)
    if world.distributed:
        if out is None:
            raise MultiturboError("A multi-process run needs its run directory named: pass --out DIR (every process must write to the same place).")
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
    seed_everything(cfg.seed)
    exp = build_experiment(cfg)  # every config and data check happens here, before training
    main = world.is_main
    if not resume:
        out = Path(out) if out else rundir.default_run_dir(cfg)
        rundir.check_run_dir(out, overwrite)  # every rank checks before rank 0 writes anything
        barrier()
        if main:
            rundir.prepare_run_dir(out, overwrite)
            rundir.write_config(out, cfg)
            rundir.export_assets(exp.model.encoders, out)  # what the encoders need to be rebuilt offline (assets/)
    facts = {
        "multiturbo_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "processes": world.size,
        "classes": exp.dataset.classes,
        "modalities": list(cfg.modalities),
        "method": cfg.method,
        "split_sizes": {s: len(getattr(exp.splits, s)) for s in ("train", "val", "test")},
    }
    info = rundir.RunInfo(out, facts, previous if resume else None, write=main)
    model = exp.model.to(device)
    runner, rank_seed = None, None
    if world.distributed:
        rank_seed = cfg.seed + 1_000_003 * world.rank
        torch.manual_seed(rank_seed)  # each rank its own dropout masks (the weights are rank 0's)
        runner = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    collator = Collator(model.encoders, num_classes=len(exp.dataset.classes))
    t = cfg.train
    shard = (world.rank, world.size)
    loader_options = dict(num_workers=t.num_workers, pin_memory=t.pin_memory, prefetch_factor=t.prefetch_factor, shard=shard)
    splits = cache_splits(exp.splits, model.encoders, t.audio_cache, t.audio_cache_dir)  # train.audio_cache (off: unchanged)
    train_loader = make_loader(
        splits.train, collator, batch_size=t.batch_size, shuffle=True, seed=cfg.seed,
        drop_singleton=model.contrastive is not None, **loader_options,
    )
    eval_bs = t.eval_batch_size or t.batch_size
    val_loader = make_loader(splits.val, collator, batch_size=eval_bs, shuffle=False, **loader_options)
    test_loader = make_loader(splits.test, collator, batch_size=eval_bs, shuffle=False, **loader_options)

    start = time.perf_counter()
    try:
        result = fit(model, train_loader, val_loader, t, out, device, progress, label, resume=resume, runner=runner, rank_seed=rank_seed)
        barrier()  # rank 0 has written best.safetensors
        rundir.load_best(model, out)
        metrics = evaluate(model, test_loader, device)
    except BaseException as exc:
        info.failed(exc, time.perf_counter() - start)
        raise
    metrics.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run, stopped_early=result.stopped_early)
    if main:
        rundir.write_test_metrics(out, metrics)
    info.finished(time.perf_counter() - start, nonfinite_skipped=result.nonfinite_skipped, cut_items=_cut_items(model, t.num_workers))
    if main:
        rundir.remove_checkpoint(out)
        analysis_loader = test_loader if not world.distributed else make_loader(
            splits.test, collator, batch_size=eval_bs, shuffle=False, num_workers=t.num_workers)
        write_outputs(out, model, analysis_loader, device, exp.dataset.classes, cfg.method, progress)
    barrier()
    return metrics


def _cut_items(model, num_workers: int) -> dict[str, int] | None:
    """Items cut to an encoder's length limit (max_seconds / max_tokens), per modality, over the
    whole run; None when DataLoader workers collated (their counts stay in the workers: see the
    warnings they printed)."""
    if num_workers > 0:
        return None
    return {m: int(enc.cut_items) for m, enc in model.encoders.items() if hasattr(enc, "cut_items")}


def write_outputs(out: Path, model, test_loader, device: torch.device, classes: list[str], method: str, progress: ProgressReporter) -> None:
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
