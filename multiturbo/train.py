"""The training and evaluation loop: optimiser, epochs, early stopping, checkpoints."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from . import rundir
from .checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import EpochSampler, LabelledBatch
from .distributed import all_ranks, average_gradients, current_world, gather_rows
from .errors import MultiturboError
from .metrics import METRICS, TABLE_METRICS, classification_metrics
from .gradcache import cached_backward
from .model import StepOutput, TurboModel
from .progress import ProgressReporter


class TrainingError(MultiturboError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    stopped_early: bool
    nonfinite_skipped: int = 0


@dataclass
class LoopState:
    """Where the loop is and what it has accumulated: saved in every checkpoint (as JSON).

    ``epoch`` is the epoch in progress (1-based) and ``batch`` how many of its batches are done,
    so a resumed run starts at batch ``batch`` of epoch ``epoch`` in that epoch's data order.
    ``pending`` holds the record of an epoch whose outputs (best/last weights, its
    metrics.jsonl line) are written just after the checkpoint; a resume writes them again.
    """

    epoch: int = 1
    batch: int = 0
    step: int = 0
    best_value: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    done: bool = False
    sums: dict = field(default_factory=dict)
    n_items: int = 0
    epoch_seconds: float = 0.0
    epoch_skipped: int = 0
    skipped_total: int = 0
    skipped_in_a_row: int = 0
    pending: dict | None = None

    def to_json(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict) -> "LoopState":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


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
        probs.append(model(batch.inputs).float().softmax(-1))
        labels.append(batch.labels)
    if not probs:  # an empty shard of a multi-process run
        probs, labels = [torch.zeros(0, model.head.num_classes, device=device)], [torch.zeros(0, dtype=torch.long, device=device)]
    # multi-process: every rank scored its shard of the split; the metrics are computed on all of them
    return gather_rows(torch.cat(probs)).cpu(), gather_rows(torch.cat(labels)).cpu()


def evaluate(model: TurboModel, loader: DataLoader, device: torch.device) -> dict:
    """Every registered metric (:mod:`multiturbo.metrics`), the mean CE ``loss`` included."""
    probs, labels = predict_probs(model, loader, device)
    return classification_metrics(probs, labels, loss=True)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class StepRunner:
    """One training step's forward and backward under the config's precision and batching.

    - ``amp``: autocast (bf16 / fp16) around the encoders, projections and head; the Turbo loss
      computes its logits in float32 in any case. fp16 scales the loss (torch.amp.GradScaler).
    - ``grad_cache_chunk``: batches larger than the chunk go through
      :func:`multiturbo.gradcache.cached_backward` (dropout masks replayed).
    - ``runner``: the module called for the step (DDP around the model, or the model itself),
      whose forward(inputs, labels) returns the StepOutput.
    """

    def __init__(self, model: TurboModel, cfg: TrainConfig, device: torch.device, runner: torch.nn.Module | None = None):
        self.model, self.cfg, self.device = model, cfg, device
        self.runner = runner if runner is not None else model
        if cfg.amp == "fp16" and device.type != "cuda":
            raise MultiturboError("train.amp: fp16 needs a CUDA device (float16 on the CPU is slow and its gradient scaler is CUDA-only). Use train.amp=bf16 or off.")
        self.world = current_world()
        self.dtype = AMP_DTYPES.get(cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")  # disabled: scale, unscale_ and update do nothing

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def finite(self, loss: torch.Tensor) -> bool:
        """Whether the step's loss is finite on every rank (one decision for all, so that no rank
        enters a gradient all-reduce that another skips)."""
        return all_ranks(bool(torch.isfinite(loss)), loss.device)

    def forward_backward(self, batch: LabelledBatch) -> tuple[StepOutput, bool]:
        """Forward, then (when the loss is finite on every rank) backward; gradients end in the
        parameters. Returns the step's output and whether it was backpropagated."""
        chunk = self.cfg.grad_cache_chunk
        if chunk is not None and (len(batch) > chunk or self.world.distributed):
            return self._cached(batch, chunk)
        with self.autocast():
            out = self.runner(batch.inputs, batch.labels)
        ok = self.finite(out.loss)
        if ok:
            self.scaler.scale(out.loss).backward()
        return out, ok

    def _cached(self, batch: LabelledBatch, chunk: int) -> StepOutput:
        model, present = self.model, TurboModel.presence(batch.inputs)
        if present is not None:
            raise MultiturboError("train.grad_cache_chunk does not support items with missing modalities yet (a chunk of a "
                                  "modality's batch holds only its present items). Turn gradient caching off, or give every item every modality.")
        result: dict[str, StepOutput] = {}

        def encode(inputs):
            with self.autocast():
                return model.views(inputs)

        def objective(views):
            with self.autocast():
                result["out"] = model.objective(views, batch.labels, present)
            loss = result["out"].loss
            return self.scaler.scale(loss)

        loss = cached_backward(encode, objective, batch.inputs, chunk, self.device, finite=self.finite)
        ok = bool(torch.isfinite(loss)) if not self.world.distributed else self.finite(loss)
        if ok:  # the chunks' backward bypassed DDP's forward, so its hooks did not average the gradients
            average_gradients(self.model)
        return result["out"], ok

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale fp16 gradients before they are checked or clipped."""
        self.scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)  # disabled: optimizer.step()
        self.scaler.update()


def _improved(value: float, best: float, monitor: str) -> bool:
    return METRICS[monitor].better(value, best)


def nonfinite_grad_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or inf (one device sync when all are finite)."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(g).all() for _, g in named])
    if bool(flags.all()):
        return []
    return [n for (n, _), ok in zip(named, flags.tolist()) if not ok]


def fit(
    model: TurboModel,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: TrainConfig,
    run_dir: Path,
    device: torch.device,
    progress: ProgressReporter,
    label: str = "",
    *,
    resume: bool = False,
    runner: torch.nn.Module | None = None,
    rank_seed: int | None = None,
) -> FitResult:
    """Train with early stopping on ``cfg.monitor``; writes ``metrics.jsonl``, ``best`` and
    ``last`` safetensors into ``run_dir`` and leaves the model holding the best weights' state
    on disk (load ``best.safetensors`` to use them).

    A resumable checkpoint (``checkpoint.safetensors``: model, optimizer, RNG states, the
    loop's position and early-stopping state) is written every ``cfg.checkpoint_every`` steps
    and at every epoch end. ``resume=True`` continues from it: with the loader built by
    :func:`~multiturbo.data.make_loader` the continued run is the uninterrupted one, bit for
    bit on a CPU. ``cfg.nonfinite`` says what a NaN/inf loss or gradient does (stop or skip).
    ``runner``: the module whose forward runs a training step (DistributedDataParallel around
    ``model`` in a multi-process run); ``cfg.amp`` and ``cfg.grad_cache_chunk`` apply
    (:class:`StepRunner`). In a multi-process run only rank 0 writes files, and a resume, which
    restores rank 0's RNG state, reseeds each rank from ``rank_seed`` + the step so that the
    ranks keep drawing different dropout masks (such a resume is not bit-exact).
    """
    optimizer = make_optimizer(model, cfg)
    step = StepRunner(model, cfg, device, runner=runner)
    is_main = current_world().is_main
    ckpt_path = rundir.checkpoint_path(run_dir)
    sampler = getattr(train_loader, "sampler", None)
    batch_size = train_loader.batch_size or 1
    st = LoopState()

    def write_epoch_outputs(record: dict) -> None:
        if is_main:
            rundir.write_epoch(run_dir, model, record)

    if resume:
        if not ckpt_path.exists():
            raise MultiturboError(f"There is no checkpoint to resume from in {run_dir} ({ckpt_path.name} is missing).")
        st = LoopState.from_json(restore_checkpoint(load_checkpoint(ckpt_path), model, optimizer, scaler=step.scaler))
        if rank_seed is not None:
            torch.manual_seed(rank_seed + st.step)
        if st.batch and not isinstance(sampler, EpochSampler):
            raise MultiturboError("Resuming in the middle of an epoch needs a loader made by multiturbo.data.make_loader.")
        if st.pending is not None:  # the checkpoint was written at an epoch end: redo that epoch's outputs
            if is_main:
                rundir.truncate_log(run_dir, st.pending["epoch"])
            write_epoch_outputs(st.pending)
            st.pending = None
        elif is_main:
            rundir.truncate_log(run_dir, st.epoch)
        progress.log(f"{label}resumed at epoch {st.epoch}, batch {st.batch} (step {st.step})")

    def checkpoint() -> None:
        if is_main:
            save_checkpoint(ckpt_path, model, optimizer, st.to_json(), scaler=step.scaler)

    def nonfinite(kind: str, what: str) -> None:
        where = f"at epoch {st.epoch}, step {st.step + 1} (batch {st.batch + 1} of the epoch)"
        if cfg.nonfinite == "skip":
            st.epoch_skipped += 1
            st.skipped_total += 1
            st.skipped_in_a_row += 1
            if st.skipped_in_a_row <= cfg.nonfinite_max_skips:
                progress.log(f"{label}skipped step {st.step + 1}: non-finite {kind} ({what})")
                return
            first = f"{cfg.nonfinite_max_skips + 1} steps in a row had a non-finite loss or gradient; the last one: "
        else:
            first = ""
        kept = (
            f"The last good checkpoint is {ckpt_path} (continue from it with --resume --set train.nonfinite=skip); "
            f"the weights of the last finished epoch are in {rundir.layout.path(run_dir, rundir.layout.LAST)}. "
            if ckpt_path.exists() else "No checkpoint had been written yet. "
        )
        raise TrainingError(
            f"{first}Non-finite {kind} {where}: {what}. {kept}"
            f"Lower train.lr, raise turbo.temperature, set train.grad_clip, or set train.nonfinite=skip."
        )

    progress.start_epochs(f"{label}epochs", total=cfg.epochs, completed=st.epoch - 1)
    while not st.done and st.epoch <= cfg.epochs:
        epoch = st.epoch
        start = time.perf_counter() - st.epoch_seconds
        model.train()
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(epoch, st.batch * batch_size)
        n_batches = st.batch + len(train_loader)
        progress.start(f"{label}epoch {epoch}/{cfg.epochs}", total=n_batches)
        for _ in range(st.batch):
            progress.advance()
        for batch in train_loader:
            batch: LabelledBatch = batch.to(device)  # non_blocking copies from pinned memory
            b = len(batch)
            optimizer.zero_grad(set_to_none=True)
            out, ok = step.forward_backward(batch)
            if not ok:
                bad = [name for name, t in {"ce": out.ce, **out.terms}.items() if not torch.isfinite(t)]
                nonfinite("loss", f"term(s) {', '.join(bad) or 'total'} = {float(out.loss.detach())}")
                optimizer.zero_grad(set_to_none=True)
            else:
                step.unscale(optimizer)
                bad = nonfinite_grad_names(model) if not step.scaler.is_enabled() else []  # fp16: the scaler skips overflowing steps itself
                if bad:
                    ok = False
                    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                    nonfinite("gradient", f"parameter(s) {shown}")
                    optimizer.zero_grad(set_to_none=True)
            if ok:
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                step.optimizer_step(optimizer)
                st.skipped_in_a_row = 0
                st.n_items += b
                scalars = {"loss": out.loss, "ce": out.ce, "contrastive": out.contrastive, **{f"term/{k}": v for k, v in out.terms.items()}}
                for key, value in scalars.items():
                    st.sums[key] = st.sums.get(key, 0.0) + float(value.detach()) * b
            st.step += 1
            st.batch += 1
            progress.advance(f"loss {st.sums.get('loss', math.nan) / max(st.n_items, 1):.4f}")
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.batch < n_batches:  # epoch ends write one anyway
                st.epoch_seconds = time.perf_counter() - start
                checkpoint()

        train_stats = {k: v / max(st.n_items, 1) for k, v in st.sums.items()}
        if model.contrastive is not None:
            train_stats["temperature"] = float(model.contrastive.temperature)
        val = evaluate(model, val_loader, device)
        value = float(val[cfg.monitor])
        improved = _improved(value, st.best_value, cfg.monitor)
        if improved:
            st.best_value, st.best_epoch, st.bad_epochs = value, epoch, 0
        else:
            st.bad_epochs += 1
        record = {
            "epoch": epoch,
            "step": st.step,
            "train": {k: v for k, v in train_stats.items() if not k.startswith("term/")},
            "terms": {k.removeprefix("term/"): v for k, v in train_stats.items() if k.startswith("term/")},
            "val": val,
            "best": improved,
            "seconds": time.perf_counter() - start,
            "nonfinite_skipped": st.epoch_skipped,
        }
        st.stopped = cfg.patience is not None and st.bad_epochs >= cfg.patience
        st.done = st.stopped or epoch >= cfg.epochs
        st.epoch, st.batch, st.sums, st.n_items, st.epoch_seconds, st.epoch_skipped = epoch + 1, 0, {}, 0, 0.0, 0
        st.pending = record
        checkpoint()  # first the checkpoint, then the outputs it describes (a resume rewrites them)
        st.pending = None
        write_epoch_outputs(record)
        ts = record["train"]
        progress.log(
            f"{label}epoch {epoch}: loss {ts.get('loss', math.nan):.3f} ce {ts.get('ce', math.nan):.3f} "
            f"contr {ts.get('contrastive', math.nan):.3f} | val "
            + " ".join(f"{k} {val[k]:.3f}" for k in TABLE_METRICS if k in val) + f"{' *' if improved else ''}"
            + (f" | {record['nonfinite_skipped']} step(s) skipped" if record["nonfinite_skipped"] else "")
        )
        progress.epoch_done(f"val {cfg.monitor} {value:.3f} (best {st.best_value:.3f} @ {st.best_epoch})")
        if st.stopped:
            progress.log(f"{label}early stop: no better val {cfg.monitor} for {cfg.patience} epochs (best {st.best_value:.4f} at epoch {st.best_epoch})")
    progress.finish_epochs()
    epochs_run = st.epoch - 1
    if st.best_epoch == 0:  # every monitored value was NaN: keep the last weights as "best"
        if is_main:
            rundir.save_best(run_dir, model)
        st.best_epoch = epochs_run
    return FitResult(
        best_epoch=st.best_epoch, best_value=st.best_value, epochs_run=epochs_run,
        stopped_early=st.stopped, nonfinite_skipped=st.skipped_total,
    )
