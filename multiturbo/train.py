"""The training and evaluation loop: optimiser, epochs, early stopping, checkpoints."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from . import rundir
from .checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import LabelledBatch, loader_batch_size, loader_padding, set_loader_epoch
from .diagnostics import collapse_warnings, representation_diagnostics
from .distributed import all_ranks, average_gradients, current_world, gather_rows, rank_weight
from .errors import MultiturboError
from .metrics import METRICS, TABLE_METRICS, classification_metrics
from .gradcache import cached_backward
from .model import EvalPass, StepOutput, TurboModel, eval_pass
from .optim import group_lrs, make_optimizer, make_scheduler
from .progress import ProgressReporter
from .runtime import peak_memory


# the fields of an epoch's record that are measured, not computed: they differ between identical runs
MEASURED_FIELDS = ("seconds", "items_per_s", "peak_memory")


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
    train_seconds: float = 0.0
    term_ratios: dict | None = None  # the last epoch's contrastive terms / log(B) (collapse warnings compare with it)
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


def gathered_pass(model: TurboModel, loader: DataLoader, device: torch.device,
                  progress: ProgressReporter | None = None) -> EvalPass:
    """One eval-mode pass over a loader (:func:`~multiturbo.model.eval_pass`; the views are the ones
    the contrastive terms compare), gathered over every rank of a multi-process run (each rank scored
    its shard of the split), on the CPU. ``progress`` is advanced once per batch (a bar started by the caller)."""
    out = eval_pass(model, loader, device, (lambda n: progress.advance(items=n)) if progress is not None else None,
                    contrastive=True)
    if out is None:  # an empty shard of a multi-process run
        dims = {m: model.projections[m][-1].out_features for m in model.modalities}
        out = EvalPass(torch.zeros(0, model.head.num_classes), {m: torch.zeros(0, d) for m, d in dims.items()},
                       {m: torch.zeros(0, dtype=torch.bool) for m in dims}, torch.zeros(0, dtype=torch.long))
    gather = lambda x: gather_rows(x.to(device)).cpu()  # noqa: E731
    return EvalPass(gather(out.probs), {m: gather(v) for m, v in out.views.items()},
                    {m: gather(p.to(torch.uint8)).bool() for m, p in out.present.items()}, gather(out.labels))


def predict_probs(model: TurboModel, loader: DataLoader, device: torch.device,
                  progress: ProgressReporter | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, C] (one pass, dropout off) and labels [N] over a loader, all ranks'."""
    out = gathered_pass(model, loader, device, progress)
    return out.probs, out.labels


@dataclass(frozen=True)
class Evaluation:
    """The metrics of one evaluation and the arrays they were computed from: ``labels`` [N] and
    ``preds`` [N] (the argmax of the class probabilities), in the order of the gathered pass
    (all ranks' shards concatenated in rank order: :func:`multiturbo.data.gathered_positions`)."""

    metrics: dict
    labels: torch.Tensor
    preds: torch.Tensor


def evaluate_items(model: TurboModel, loader: DataLoader, device: torch.device, progress: ProgressReporter | None = None,
                   description: str = "evaluation") -> Evaluation:
    """:func:`evaluate`, with the per-item labels and predictions the metrics were computed from."""
    if progress is not None:
        progress.start(description, total=len(loader))
    probs, labels = predict_probs(model, loader, device, progress)
    return Evaluation(classification_metrics(probs, labels, loss=True), labels, probs.argmax(-1))


def evaluate(model: TurboModel, loader: DataLoader, device: torch.device, progress: ProgressReporter | None = None,
             description: str = "evaluation") -> dict:
    """Every registered metric (:mod:`multiturbo.metrics`), the mean CE ``loss`` included; with
    ``progress``, a bar (or plain lines) named ``description`` over the loader's batches."""
    return evaluate_items(model, loader, device, progress, description).metrics


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class StepRunner:
    """One training step's forward and backward under the config's precision and batching.

    - ``amp``: autocast (bf16 / fp16) around the encoders, projections and head; the Turbo loss
      computes its logits in float32 in any case. fp16 scales the loss (torch.amp.GradScaler).
    - ``grad_cache_chunk``: batches larger than the chunk go through
      :func:`multiturbo.gradcache.cached_backward` (dropout masks replayed).
    - ``runner``: the module called for the step (DDP around the model, or the model itself),
      whose forward(inputs, labels) returns the StepOutput.
    - Under torchrun with unequal batch sizes b_r (``train.max_batch_seconds``), the loss backpropagated
      is the rank's loss x b_r W / sum b (:func:`multiturbo.distributed.rank_weight`), so that the
      gradients averaged over ranks are those of one process on the concatenated batch; the returned
      ``StepOutput`` (logged) holds the rank's unweighted loss.
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
        weight = rank_weight(len(batch), self.device)  # ranks' batch sizes may differ (train.max_batch_seconds); 1.0 if equal
        if chunk is not None and (len(batch) > chunk or self.world.distributed):
            return self._cached(batch, chunk, weight)
        with self.autocast():
            out = self.runner(batch.inputs, batch.labels)
        ok = self.finite(out.loss)
        if ok:
            self.scaler.scale(out.loss if weight == 1.0 else out.loss * weight).backward()
        return out, ok

    def _cached(self, batch: LabelledBatch, chunk: int, weight: float = 1.0) -> StepOutput:
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
            return self.scaler.scale(loss if weight == 1.0 else loss * weight)

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


# -- one step over the training state ------------------------------------------------------------
@dataclass
class TrainState:
    """What the training step and the epoch loop work on (open_clip's ``train_one_epoch`` shape):
    the model, its optimizer (param groups) and learning-rate schedule (:mod:`multiturbo.optim`;
    None without train.schedule), the step runner (amp, gradient caching, DDP) and the loop's state."""

    model: TurboModel
    optimizer: torch.optim.Optimizer
    runner: StepRunner
    cfg: TrainConfig
    scheduler: LRScheduler | None = None
    loop: LoopState = field(default_factory=LoopState)

    @classmethod
    def create(cls, model: TurboModel, cfg: TrainConfig, device: torch.device, runner: torch.nn.Module | None = None,
               steps_per_epoch: int | None = None, total_steps: int | None = None) -> "TrainState":
        """``runner``: the module whose forward runs a step (DDP around ``model``, or None);
        ``steps_per_epoch``: the schedule's unit (None: no schedule, as for ``multiturbo bench``);
        ``total_steps``: the whole training's steps when epochs differ in length (dynamic batches)."""
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch, total_steps) if steps_per_epoch is not None else None
        return cls(model, optimizer, StepRunner(model, cfg, device, runner=runner), cfg, scheduler)


@dataclass
class StepResult:
    """A training step: its output, whether the update was made, and otherwise what was
    non-finite: ``("loss" | "gradient", description)``."""

    out: StepOutput
    ok: bool
    problem: tuple[str, str] | None = None


def train_step(state: TrainState, batch: LabelledBatch) -> StepResult:
    """One optimisation step on a batch (already on the device): forward and backward (amp, gradient
    caching), the non-finite loss and gradient checks, gradient clipping, the optimizer step. A
    non-finite step makes no update and leaves no gradient. Shared by :func:`fit` and ``multiturbo bench``."""
    model, optimizer, runner = state.model, state.optimizer, state.runner
    optimizer.zero_grad(set_to_none=True)
    out, ok = runner.forward_backward(batch)
    if not ok:
        bad = [name for name, t in {"ce": out.ce, **out.terms}.items() if not torch.isfinite(t)]
        optimizer.zero_grad(set_to_none=True)
        return StepResult(out, False, ("loss", f"term(s) {', '.join(bad) or 'total'} = {float(out.loss.detach())}"))
    runner.unscale(optimizer)
    bad = nonfinite_grad_names(model) if not runner.scaler.is_enabled() else []  # fp16: the scaler skips overflowing steps itself
    if bad:
        optimizer.zero_grad(set_to_none=True)
        return StepResult(out, False, ("gradient", "parameter(s) " + ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")))
    if state.cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), state.cfg.grad_clip)
    runner.optimizer_step(optimizer)
    return StepResult(out, True)


# -- the epoch loop -----------------------------------------------------------------------------------
class _EpochLoop:
    """:func:`fit`'s epochs over a :class:`TrainState`: the batches of an epoch, its end (validation,
    early stopping, checkpoint, outputs), the resume and the non-finite policy. Only rank 0 writes."""

    def __init__(self, state: TrainState, run_dir: Path, progress: ProgressReporter, label: str,
                 on_epoch: Callable[[dict], None] | None = None):
        self.state, self.run_dir, self.progress, self.label, self.on_epoch = state, run_dir, progress, label, on_epoch
        self.is_main = current_world().is_main
        self.ckpt_path = rundir.checkpoint_path(run_dir)

    def checkpoint(self) -> None:
        s = self.state
        if self.is_main:
            save_checkpoint(self.ckpt_path, s.model, s.optimizer, s.loop.to_json(), scheduler=s.scheduler, scaler=s.runner.scaler,
                            metadata=rundir.weights_metadata(self.run_dir))

    def write_epoch_outputs(self, record: dict) -> None:
        if self.is_main:
            rundir.write_epoch(self.run_dir, self.state.model, record)

    def resume(self, train_loader: DataLoader, rank_seed: int | None) -> None:
        """Continue from the checkpoint: states restored, the outputs of a pending epoch rewritten."""
        s = self.state
        if not self.ckpt_path.exists():
            raise MultiturboError(f"There is no checkpoint to resume from in {self.run_dir} ({self.ckpt_path.name} is missing).")
        s.loop = st = LoopState.from_json(restore_checkpoint(load_checkpoint(self.ckpt_path), s.model, s.optimizer, scheduler=s.scheduler, scaler=s.runner.scaler))
        if rank_seed is not None:
            torch.manual_seed(rank_seed + st.step)
        if st.batch and not set_loader_epoch(train_loader, st.epoch, st.batch):
            raise MultiturboError("Resuming in the middle of an epoch needs a loader made by multiturbo.data.make_loader.")
        if st.pending is not None:  # the checkpoint was written at an epoch end: redo that epoch's outputs
            if self.is_main:
                rundir.truncate_log(self.run_dir, st.pending["epoch"])
            self.write_epoch_outputs(st.pending)
            st.pending = None
        elif self.is_main:
            rundir.truncate_log(self.run_dir, st.epoch)
        self.progress.log(f"{self.label}resumed at epoch {st.epoch}, batch {st.batch} (step {st.step})")

    def nonfinite(self, kind: str, what: str) -> None:
        """A step's non-finite loss or gradient: skipped (train.nonfinite=skip, within the limit) or a TrainingError."""
        cfg, st = self.state.cfg, self.state.loop
        where = f"at epoch {st.epoch}, step {st.step + 1} (batch {st.batch + 1} of the epoch)"
        if cfg.nonfinite == "skip":
            st.epoch_skipped += 1
            st.skipped_total += 1
            st.skipped_in_a_row += 1
            if st.skipped_in_a_row <= cfg.nonfinite_max_skips:
                self.progress.log(f"{self.label}skipped step {st.step + 1}: non-finite {kind} ({what})")
                return
            first = f"{cfg.nonfinite_max_skips + 1} steps in a row had a non-finite loss or gradient; the last one: "
        else:
            first = ""
        kept = (
            f"The last good checkpoint is {self.ckpt_path} (continue from it with --resume --set train.nonfinite=skip); "
            f"the weights of the last finished epoch are in {rundir.layout.path(self.run_dir, rundir.layout.LAST)}. "
            if self.ckpt_path.exists() else "No checkpoint had been written yet. "
        )
        raise TrainingError(
            f"{first}Non-finite {kind} {where}: {what}. {kept}"
            f"Lower train.lr, raise turbo.temperature, set train.grad_clip, or set train.nonfinite=skip."
        )

    def run_epoch(self, train_loader: DataLoader, start: float) -> None:
        """The batches of epoch ``loop.epoch`` from batch ``loop.batch`` on (a resume starts mid-epoch)."""
        s, st, cfg = self.state, self.state.loop, self.state.cfg
        s.model.train()
        set_loader_epoch(train_loader, st.epoch, st.batch)
        n_batches = st.batch + len(train_loader)
        self.progress.start(f"{self.label}epoch {st.epoch}/{cfg.epochs}", total=n_batches, completed=st.batch)
        for batch in train_loader:
            batch: LabelledBatch = batch.to(s.runner.device)  # non_blocking copies from pinned memory
            result = train_step(s, batch)
            if result.problem is not None:
                self.nonfinite(*result.problem)
            if result.ok:
                out, b = result.out, len(batch)
                st.skipped_in_a_row = 0
                st.n_items += b
                scalars = {"loss": out.loss, "ce": out.ce, "contrastive": out.contrastive, **{f"term/{k}": v for k, v in out.terms.items()}}
                for key, value in scalars.items():
                    st.sums[key] = st.sums.get(key, 0.0) + float(value.detach()) * b
            st.step += 1
            st.batch += 1
            if s.scheduler is not None:  # once per batch: the schedule's position is st.step
                s.scheduler.step()
            self.progress.advance(f"loss {st.sums.get('loss', math.nan) / max(st.n_items, 1):.4f}", items=len(batch))
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.batch < n_batches:  # epoch ends write one anyway
                st.epoch_seconds = time.perf_counter() - start
                self.checkpoint()
        st.train_seconds = time.perf_counter() - start  # the batches only (a resumed epoch: since its start)

    def end_epoch(self, val_loader: DataLoader, start: float) -> dict:
        """Validation, early stopping, then the checkpoint and the epoch's outputs; returns its record."""
        s, st, cfg = self.state, self.state.loop, self.state.cfg
        epoch = st.epoch
        train_stats = {k: v / max(st.n_items, 1) for k, v in st.sums.items()}
        if s.model.contrastive is not None:
            train_stats["temperature"] = float(s.model.contrastive.temperature)
        self.progress.start(f"{self.label}epoch {epoch} validation", total=len(val_loader))
        passed = gathered_pass(s.model, val_loader, s.runner.device, self.progress)  # one pass: metrics and diagnostics
        val = classification_metrics(passed.probs, passed.labels, loss=True)
        value = float(val[cfg.monitor])
        improved = _improved(value, st.best_value, cfg.monitor)
        if improved:
            st.best_value, st.best_epoch, st.bad_epochs = value, epoch, 0
        else:
            st.bad_epochs += 1
        terms = {k.removeprefix("term/"): v for k, v in train_stats.items() if k.startswith("term/")}
        diagnostics, warnings = self.diagnose(passed, terms, epoch) if cfg.diagnostics else (None, [])
        record = {
            "epoch": epoch,
            "step": st.step,
            "train": {k: v for k, v in train_stats.items() if not k.startswith("term/")},
            "terms": terms,
            "val": val,
            "lr": group_lrs(s.optimizer),
            "best": improved,
            "seconds": time.perf_counter() - start,
            "items_per_s": st.n_items / st.train_seconds if st.train_seconds > 0 else None,  # training steps only
            "peak_memory": peak_memory(s.runner.device),
            **({"padding": padding} if (padding := self.padding(epoch)) is not None else {}),
            "nonfinite_skipped": st.epoch_skipped,
            **({"diagnostics": diagnostics} if diagnostics is not None else {}),
            **({"warnings": warnings} if warnings else {}),
        }
        st.stopped = cfg.patience is not None and st.bad_epochs >= cfg.patience
        st.done = st.stopped or epoch >= cfg.epochs
        st.epoch, st.batch, st.sums, st.n_items, st.epoch_seconds, st.epoch_skipped = epoch + 1, 0, {}, 0, 0.0, 0
        st.pending = record
        self.checkpoint()  # first the checkpoint, then the outputs it describes (a resume rewrites them)
        st.pending = None
        self.write_epoch_outputs(record)
        return record

    def padding(self, epoch: int) -> dict[str, float] | None:
        """The padding share per modality of the epoch's training batches, when the loader knows item lengths."""
        return loader_padding(self.train_loader, epoch)

    def diagnose(self, passed: EvalPass, terms: dict, epoch: int) -> tuple[dict, list[str]]:
        """The epoch's collapse diagnostics from the validation pass (:mod:`multiturbo.diagnostics`), for
        vanilla runs too so that methods can be compared; warnings only for contrastive ones."""
        model = self.state.model
        views = {m: F.normalize(v, dim=-1) for m, v in passed.views.items()}
        diagnostics = representation_diagnostics(views, passed.present, terms, self.batch_size * current_world().size)
        st = self.state.loop
        previous, st.term_ratios = st.term_ratios, diagnostics["term_ratio"]  # in the checkpoint: a resume judges alike
        return diagnostics, collapse_warnings(diagnostics, epoch, previous) if model.contrastive is not None else []

    def report_epoch(self, record: dict) -> None:
        """The epoch's line and the progress bar's summary (and the early stop, when it happens)."""
        cfg, st, ts, val = self.state.cfg, self.state.loop, record["train"], record["val"]
        self.progress.log(
            f"{self.label}epoch {record['epoch']}: loss {ts.get('loss', math.nan):.3f} ce {ts.get('ce', math.nan):.3f} "
            f"contr {ts.get('contrastive', math.nan):.3f} | val "
            + " ".join(f"{k} {val[k]:.3f}" for k in TABLE_METRICS if k in val) + f"{' *' if record['best'] else ''}"
            + (f" | {record['nonfinite_skipped']} step(s) skipped" if record["nonfinite_skipped"] else "")
        )
        for warning in record.get("warnings", []):
            self.progress.log(f"{self.label}warning: {warning}")
        self.progress.epoch_done(f"val {cfg.monitor} {float(val[cfg.monitor]):.3f} (best {st.best_value:.3f} @ {st.best_epoch})")
        if st.stopped:
            self.progress.log(f"{self.label}early stop: no better val {cfg.monitor} for {cfg.patience} epochs (best {st.best_value:.4f} at epoch {st.best_epoch})")

    def run(self, train_loader: DataLoader, val_loader: DataLoader) -> FitResult:
        st, cfg = self.state.loop, self.state.cfg
        self.train_loader = train_loader
        self.batch_size = max(1, round(loader_batch_size(train_loader)))  # the contrastive batch of the diagnostics' log(B)
        self.progress.start_epochs(f"{self.label}epochs", total=cfg.epochs, completed=st.epoch - 1)
        while not st.done and st.epoch <= cfg.epochs:
            start = time.perf_counter() - st.epoch_seconds
            self.run_epoch(train_loader, start)
            record = self.end_epoch(val_loader, start)
            self.report_epoch(record)
            if self.on_epoch is not None and self.is_main:
                self.on_epoch(record)  # after the checkpoint and metrics.jsonl: an exception here (e.g. a pruned trial) loses nothing
        self.progress.finish_epochs()
        epochs_run = st.epoch - 1
        if st.best_epoch == 0:  # every monitored value was NaN: keep the last weights as "best"
            if self.is_main:
                rundir.save_best(self.run_dir, self.state.model)
            st.best_epoch = epochs_run
        return FitResult(
            best_epoch=st.best_epoch, best_value=st.best_value, epochs_run=epochs_run,
            stopped_early=st.stopped, nonfinite_skipped=st.skipped_total,
        )


def fit(
    state: TrainState,
    train_loader: DataLoader,
    val_loader: DataLoader,
    run_dir: Path,
    progress: ProgressReporter,
    *,
    label: str = "",
    resume: bool = False,
    rank_seed: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``state`` with early stopping on ``cfg.monitor``; writes ``metrics.jsonl``, ``best`` and
    ``last`` safetensors into ``run_dir`` (load ``best.safetensors`` to use the best weights).

    A resumable checkpoint (``checkpoint.safetensors``: model, optimizer, RNG states, the
    loop's position and early-stopping state) is written every ``cfg.checkpoint_every`` steps
    and at every epoch end. ``resume=True`` continues from it: with the loader built by
    :func:`~multiturbo.data.make_loader` the continued run is the uninterrupted one, bit for
    bit on a CPU. ``cfg.nonfinite`` says what a NaN/inf loss or gradient does (stop or skip).
    Each batch is one :func:`train_step`. In a multi-process run only rank 0 writes files, and a
    resume, which restores rank 0's RNG state, reseeds each rank from ``rank_seed`` + the step so
    that the ranks keep drawing different dropout masks (such a resume is not bit-exact).
    ``on_epoch(record)`` is called on rank 0 after each epoch's outputs are written, with the
    epoch's metrics.jsonl record (trackers log it; a tuner may raise to prune the run).
    """
    loop = _EpochLoop(state, run_dir, progress, label, on_epoch)
    if resume:
        loop.resume(train_loader, rank_seed)
    return loop.run(train_loader, val_loader)
