"""One experiment end to end: build, train, test, and write the run directory.

Run directory layout::

    config.yaml        the resolved config (every plugin option filled in)
    run.json           classes, modalities, versions, device, status and timings
    metrics.jsonl      one line per epoch: train losses (CE, every Turbo term), val metrics
    best.safetensors   weights at the best val epoch;  last.safetensors: after the last epoch
    metrics.json       test metrics of the best weights: wa, ua, f1 (eer for 2 classes), confusion
"""

from __future__ import annotations

import datetime as dt
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .build import build_experiment
from .checkpoint import load_weights, write_json
from .config import ExperimentConfig, config_to_yaml
from .data import Collator, make_loader
from .errors import MultiturboError
from .progress import ProgressReporter
from .train import evaluate, fit


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


def prepare_run_dir(out: Path, overwrite: bool) -> Path:
    """Create ``out``; refuse to mix a new run into a directory that already holds files."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MultiturboError(f"The run directory {out} already exists and is not empty. Pass another --out, or --overwrite to replace its contents.")
        for name in ("config.yaml", "run.json", "metrics.jsonl", "metrics.json", "best.safetensors", "last.safetensors"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_experiment(
    cfg: ExperimentConfig,
    out: Path | str | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressReporter | None = None,
    label: str = "",
) -> dict:
    """Train and test ``cfg``; returns the test metrics (also written to ``out/metrics.json``)."""
    progress = progress or ProgressReporter(quiet=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    exp = build_experiment(cfg)  # every config and data check happens here, before training
    out = prepare_run_dir(Path(out) if out else default_run_dir(cfg), overwrite)
    (out / "config.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    info = {
        "multiturbo_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "classes": exp.dataset.classes,
        "modalities": list(cfg.modalities),
        "method": cfg.method,
        "split_sizes": {s: len(getattr(exp.splits, s)) for s in ("train", "val", "test")},
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "status": "running",
    }
    write_json(out / "run.json", info)

    model = exp.model.to(device)
    collator = Collator(model.encoders, num_classes=len(exp.dataset.classes))
    t = cfg.train
    train_loader = make_loader(
        exp.splits.train, collator, batch_size=t.batch_size, shuffle=True, seed=cfg.seed,
        num_workers=t.num_workers, drop_singleton=model.contrastive is not None,
    )
    eval_bs = t.eval_batch_size or t.batch_size
    val_loader = make_loader(exp.splits.val, collator, batch_size=eval_bs, shuffle=False, num_workers=t.num_workers)
    test_loader = make_loader(exp.splits.test, collator, batch_size=eval_bs, shuffle=False, num_workers=t.num_workers)

    start = time.perf_counter()
    try:
        result = fit(model, train_loader, val_loader, t, out, device, progress, label)
        load_weights(model, out / "best.safetensors")
        metrics = evaluate(model, test_loader, device)
    except BaseException as exc:
        info.update(status="failed", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)
        write_json(out / "run.json", info)
        raise
    metrics.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run, stopped_early=result.stopped_early)
    write_json(out / "metrics.json", metrics)
    info.update(status="finished", finished=dt.datetime.now().isoformat(timespec="seconds"), seconds=time.perf_counter() - start)
    write_json(out / "run.json", info)
    return metrics
