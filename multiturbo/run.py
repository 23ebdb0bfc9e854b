"""One experiment end to end: build, train, test, and write the run directory.

Run directory layout::

    config.yaml        the resolved config (every plugin option filled in)
    run.json           classes, modalities, versions, device, status and timings
    metrics.jsonl      one line per epoch: train losses (CE, every Turbo term), val metrics
    best.safetensors   weights at the best val epoch;  last.safetensors: after the last epoch
    checkpoint.safetensors  the resumable training state (while the run is not finished)
    metrics.json       test metrics of the best weights: wa, ua, f1 (eer for 2 classes), confusion
    analysis/          alignment / uniformity of the test embeddings (analysis.json) and figures
    tensorboard/       event files of metrics.jsonl (when tensorboard is installed)
    report.md          the run's report: metrics, figures, analysis

``run_experiment(cfg, out, resume=True)`` (``multiturbo run ... --resume``) continues a run
that was killed or failed from its last checkpoint, after checking that ``cfg`` is the saved
config (see docs/reliability.md).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from . import __version__
from .feature_cache import cache_frozen_features
from .audio_cache import cache_splits
from .balance import sample_weights, split_labels
from .build import build_experiment
from .checkpoint import load_weights, read_checkpoint_loop_state, write_json
from .config import ExperimentConfig, config_to_yaml
from .data import Collator, make_loader
from .distributed import barrier, init_from_env
from .errors import MultiturboError
from .progress import ProgressReporter
from .rundir import export_assets
from .train import CHECKPOINT_NAME, evaluate, fit

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "metrics.json", "best.safetensors", "last.safetensors", CHECKPOINT_NAME,
             "report.md", "assets.json")
RUN_DIRS = ("analysis", "tensorboard", "assets")  # written by a run; --overwrite removes them with the files
# Config keys that may differ between a run and its resumption (they do not change what is computed).
RESUME_MAY_CHANGE = ("train.device", "train.num_workers", "train.checkpoint_every", "train.nonfinite", "train.nonfinite_max_skips",
                     "train.audio_cache", "train.audio_cache_dir")


def result_relevant(config: dict) -> dict:
    """A config mapping (``model_dump(mode="json")`` or config.yaml) without the keys of
    :data:`RESUME_MAY_CHANGE`, which do not change what a run computes: what runs compare on."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in RESUME_MAY_CHANGE:
        section, name = key.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MultiturboError(f"train.device: {name!r} is not a device name. Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MultiturboError(f"train.device: {name!r} asked for, but no CUDA device is available here. Use train.device=auto or cpu.")
    return device


def default_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name or 'run'}-{stamp}"


def check_run_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into a directory that already holds files (unless ``overwrite``)."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MultiturboError(f"The run directory {out} already exists and is not empty. Pass another --out, or --overwrite to replace its contents.")


def prepare_run_dir(out: Path, overwrite: bool) -> Path:
    """Create ``out``; refuse to mix a new run into a directory that already holds files."""
    check_run_dir(out, overwrite)
    if out.exists() and any(out.iterdir()):
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _config_differences(saved: object, given: object, path: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(given, dict):
        lines = []
        for key in [*saved, *(k for k in given if k not in saved)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in saved or key not in given:
                lines.append(f"{sub}: saved {saved.get(key, '(absent)')!r}, given {given.get(key, '(absent)')!r}")
            else:
                lines.extend(_config_differences(saved[key], given[key], sub))
        return lines
    if saved != given and path not in RESUME_MAY_CHANGE:
        return [f"{path}: saved {saved!r}, given {given!r}"]
    return []


def check_resumable(cfg: ExperimentConfig, out: Path) -> dict:
    """The run.json of the run in ``out`` if ``cfg`` may continue it; a clear error otherwise."""
    if not (out / "config.yaml").is_file() or not (out / "run.json").is_file():
        raise MultiturboError(f"There is no run to resume in {out} (no config.yaml / run.json). Start it without --resume.")
    try:
        info = json.loads((out / "run.json").read_text(encoding="utf-8"))
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    except (ValueError, yaml.YAMLError) as exc:
        raise MultiturboError(f"The run directory {out} is damaged ({exc}); start the run again with --overwrite.") from None
    if info.get("status") == "finished":
        raise MultiturboError(
            f"The run in {out} has finished (test metrics in {out / 'metrics.json'}); there is nothing to resume. "
            f"Use another --out, or --overwrite to run it again."
        )
    diff = _config_differences(saved, yaml.safe_load(config_to_yaml(cfg)))
    if diff:
        raise MultiturboError(
            f"The config does not match the one the run in {out} was started with, so it cannot be resumed: "
            + "; ".join(diff[:10]) + (f"; ... ({len(diff)} differences)" if len(diff) > 10 else "")
            + f". Resume with the saved config (multiturbo run {out} --resume), or start a new run."
        )
    ckpt = out / CHECKPOINT_NAME
    if not ckpt.is_file():
        raise MultiturboError(
            f"The run in {out} has no checkpoint ({CHECKPOINT_NAME}): it stopped before the first one was written. "
            f"Start it again with --overwrite."
        )
    read_checkpoint_loop_state(ckpt)  # a readable checkpoint of ours
    return info


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
        previous = check_resumable(cfg, out)
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
        out = Path(out) if out else default_run_dir(cfg)
        check_run_dir(out, overwrite)  # every rank checks before rank 0 writes anything
        barrier()
        if main:
            prepare_run_dir(out, overwrite)
            (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
            export_assets(exp.model.encoders, out)  # what the encoders need to be rebuilt offline (assets/)
    info = {
        "multiturbo_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "processes": world.size,
        "classes": exp.dataset.classes,
        "modalities": list(cfg.modalities),
        "method": cfg.method,
        "experiment": cfg.name,
        "dataset": cfg.data.name,
        "fold": cfg.data.fold,
        "seed": cfg.seed,
        "split_sizes": {s: len(getattr(exp.splits, s)) for s in ("train", "val", "test")},
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "status": "running",
    }
    if resume:
        info["started"] = previous.get("started", info["started"])
        info["resumed"] = [*previous.get("resumed", []), dt.datetime.now().isoformat(timespec="seconds")]

    def save_info() -> None:
        if main:
            write_json(out / "run.json", info)

    save_info()
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
    splits = cache_frozen_features(splits, model.encoders, t.frozen_features, device, t.eval_batch_size or t.batch_size, progress, label)
    train_loader = make_loader(
        splits.train, collator, batch_size=t.batch_size, shuffle=True, seed=cfg.seed,
        drop_singleton=model.contrastive is not None, **loader_options,
        weights=sample_weights(split_labels(exp.splits.train), len(exp.dataset.classes)) if t.sampler == "balanced" else None,
    )
    eval_bs = t.eval_batch_size or t.batch_size
    val_loader = make_loader(splits.val, collator, batch_size=eval_bs, shuffle=False, **loader_options)
    test_loader = make_loader(splits.test, collator, batch_size=eval_bs, shuffle=False, **loader_options)

    start = time.perf_counter()
    try:
        result = fit(model, train_loader, val_loader, t, out, device, progress, label, resume=resume, runner=runner, rank_seed=rank_seed)
        barrier()  # rank 0 has written best.safetensors
        load_weights(model, out / "best.safetensors")
        metrics = evaluate(model, test_loader, device)
    except BaseException as exc:
        info.update(status="failed", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        save_info()
        raise
    metrics.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run, stopped_early=result.stopped_early)
    info.update(
        status="finished", finished=dt.datetime.now().isoformat(timespec="seconds"), seconds=time.perf_counter() - start,
        nonfinite_skipped=result.nonfinite_skipped, cut_items=_cut_items(model, t.num_workers),
    )
    if main:
        write_json(out / "metrics.json", metrics)
        save_info()
        (out / CHECKPOINT_NAME).unlink(missing_ok=True)  # the run is finished: nothing left to resume
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
    from .analysis import embed, write_analysis
    from .report import write_run_report
    from .tensorboard import export_tensorboard

    for name, job in (
        ("analysis", lambda: write_analysis(out, embed(model, test_loader, device), classes=classes, method=method)),
        ("tensorboard export", lambda: export_tensorboard(out)),
        ("report", lambda: write_run_report(out)),
    ):
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - the run itself is finished and saved
            progress.log(f"warning: {out}: the {name} failed ({type(exc).__name__}: {exc}); run `multiturbo analyze {out}` to retry.")
