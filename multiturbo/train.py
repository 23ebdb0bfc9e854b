"""The training and evaluation loop: optimiser, epochs, early stopping, checkpoints."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .checkpoint import save_weights
from .config import TrainConfig
from .data import LabelledBatch
from .errors import MultiturboError
from .metrics import HIGHER_IS_BETTER, classification_metrics
from .model import TurboModel
from .progress import ProgressReporter


class TrainingError(MultiturboError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    stopped_early: bool


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict_probs(model: TurboModel, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, C] (one pass, dropout off) and labels [N] over a loader."""
    model.eval()
    probs, labels = [], []
    for batch in loader:
        batch: LabelledBatch = batch.to(device)
        probs.append(model(batch.inputs).float().softmax(-1).cpu())
        labels.append(batch.labels.cpu())
    return torch.cat(probs), torch.cat(labels)


def evaluate(model: TurboModel, loader: DataLoader, device: torch.device) -> dict:
    """Metrics of :func:`~multiturbo.metrics.classification_metrics` plus ``loss`` (mean CE)."""
    probs, labels = predict_probs(model, loader, device)
    metrics = classification_metrics(probs, labels)
    metrics["loss"] = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))
    return metrics


def _improved(value: float, best: float, monitor: str) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best if HIGHER_IS_BETTER[monitor] else value < best


def fit(
    model: TurboModel,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: TrainConfig,
    run_dir: Path,
    device: torch.device,
    progress: ProgressReporter,
    label: str = "",
) -> FitResult:
    """Train with early stopping on ``cfg.monitor``; writes ``metrics.jsonl``, ``best`` and
    ``last`` safetensors into ``run_dir`` and leaves the model holding the best weights' state
    on disk (load ``best.safetensors`` to use them)."""
    optimizer = make_optimizer(model, cfg)
    best_value, best_epoch, bad_epochs, stopped = math.nan, 0, 0, False
    log_path = run_dir / "metrics.jsonl"
    global_step = 0
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n_items = 0
        progress.start(f"{label}epoch {epoch}/{cfg.epochs}", total=len(train_loader))
        for batch in train_loader:
            batch: LabelledBatch = batch.to(device)
            out = model.step(batch.inputs, batch.labels)
            if not torch.isfinite(out.loss):
                bad = [name for name, t in {"ce": out.ce, **out.terms}.items() if not torch.isfinite(t)]
                raise TrainingError(
                    f"Non-finite loss at epoch {epoch}, step {global_step + 1} (terms: {', '.join(bad) or 'total'}). "
                    f"The last good weights are in {run_dir / 'last.safetensors'} if an epoch finished. "
                    f"Lower train.lr, raise turbo.temperature, or set train.grad_clip."
                )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            global_step += 1
            b = len(batch)
            n_items += b
            scalars = {"loss": out.loss, "ce": out.ce, "contrastive": out.contrastive, **{f"term/{k}": v for k, v in out.terms.items()}}
            for key, value in scalars.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * b
            progress.advance(f"loss {sums['loss'] / n_items:.4f}")

        train_stats = {k: v / max(n_items, 1) for k, v in sums.items()}
        if model.contrastive is not None:
            train_stats["temperature"] = float(model.contrastive.temperature)
        val = evaluate(model, val_loader, device)
        value = float(val[cfg.monitor])
        improved = _improved(value, best_value, cfg.monitor)
        if improved:
            best_value, best_epoch, bad_epochs = value, epoch, 0
            save_weights(model, run_dir / "best.safetensors")
        else:
            bad_epochs += 1
        save_weights(model, run_dir / "last.safetensors")
        record = {
            "epoch": epoch,
            "step": global_step,
            "train": {k: v for k, v in train_stats.items() if not k.startswith("term/")},
            "terms": {k.removeprefix("term/"): v for k, v in train_stats.items() if k.startswith("term/")},
            "val": val,
            "best": improved,
            "seconds": time.perf_counter() - start,
        }
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        progress.log(
            f"{label}epoch {epoch}: loss {train_stats['loss']:.3f} ce {train_stats['ce']:.3f} "
            f"contr {train_stats['contrastive']:.3f} | val wa {val['wa']:.3f} ua {val['ua']:.3f} "
            f"f1 {val['f1']:.3f}{' *' if improved else ''}"
        )
        if cfg.patience is not None and bad_epochs >= cfg.patience:
            stopped = True
            progress.log(f"{label}early stop: no better val {cfg.monitor} for {cfg.patience} epochs (best {best_value:.4f} at epoch {best_epoch})")
            break
    if best_epoch == 0:  # every monitored value was NaN: keep the last weights as "best"
        save_weights(model, run_dir / "best.safetensors")
        best_epoch = epoch
    return FitResult(best_epoch=best_epoch, best_value=best_value, epochs_run=epoch, stopped_early=stopped)
