"""``multiturbo bench``: where a training step's time goes, for vanilla, cross and turbo side by side.

For each method of a config the same pre-collated batches go through:

- the multiturbo step: ``model.step`` (K passes, head, CE, every Turbo term), backward, optimizer;
- a minimal hand-written PyTorch loop doing the same computation (below: the batch repeated K
  times through the same encoder modules, the head, then one F.cross_entropy per pair and
  direction as in the paper's Listing 1), on an identical copy of the model;
- the contrastive loss alone (forward + backward of ``model.contrastive`` on detached views of
  the step's shape): the share of the step spent on the loss and its pair bookkeeping.

Methods and variants are interleaved round by round, so the ratios compare figures taken under
the same machine load. On CUDA every timing synchronises and peak memory is the allocator's peak
per step; on the CPU it is the growth of the resident set during two steps (sampled in a thread),
in a fresh subprocess per method.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import resource
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .build import build_experiment
from .config import ExperimentConfig
from .data import Collator, LabelledBatch, make_loader
from .errors import MultiturboError
from .loss import pair_names
from .model import TurboModel, repeat_batch
from .optim import make_optimizer
from .train import AMP_DTYPES, TrainState, train_step

@dataclass
class MethodBench:
    """Median figures of one method over the timed steps."""

    method: str
    batch_size: int
    passes: int
    terms: int
    step_ms: float
    items_per_s: float
    handwritten_ms: float
    loss_ms: float
    peak_mb: float | None = None

    @property
    def loss_share(self) -> float:
        return self.loss_ms / self.step_ms if self.loss_ms == self.loss_ms else float("nan")

    @property
    def vs_handwritten(self) -> float:
        return self.step_ms / self.handwritten_ms


@dataclass
class BenchReport:
    device: str
    amp: str
    steps: int
    methods: list[MethodBench] = field(default_factory=list)
    memory_note: str = ""
    loader_items_per_s: float = float("nan")  # reading + collating the training data alone (train.num_workers workers)
    num_workers: int = 0

    def by_method(self) -> dict[str, MethodBench]:
        return {m.method: m for m in self.methods}

    def ratios(self) -> dict[str, float]:
        """The issue's targets: turbo/vanilla step (<= 2.1), turbo loss share (<= 0.03), turbo vs hand-written (<= 1.05)."""
        b = self.by_method()
        out = {}
        if "turbo" in b and "vanilla" in b:
            out["turbo_over_vanilla"] = b["turbo"].step_ms / b["vanilla"].step_ms
        if "turbo" in b:
            out["turbo_loss_share"] = b["turbo"].loss_share
            out["turbo_over_handwritten"] = b["turbo"].vs_handwritten
        fastest = max((m.items_per_s for m in self.methods), default=float("nan"))
        out["loader_over_fastest_step"] = self.loader_items_per_s / fastest  # >= 1: the loader keeps up
        return out

    def to_dict(self) -> dict:
        return {"device": self.device, "amp": self.amp, "steps": self.steps, "memory_note": self.memory_note,
                "loader_items_per_s": self.loader_items_per_s, "num_workers": self.num_workers,
                "methods": [{**asdict(m), "loss_share": m.loss_share, "vs_handwritten": m.vs_handwritten} for m in self.methods],
                "ratios": self.ratios()}


# The hand-written twin takes the loop's values as plain arguments, as a user's own loop would
# (its parameter lists are long on purpose: it shares no machinery with multiturbo).
def handwritten_loss(model: TurboModel, inputs: Mapping[str, dict], labels: torch.Tensor, temperature: float,
                     in_modal: bool, cross_modal: bool, ce_weight: float, autocast=contextlib.nullcontext) -> torch.Tensor:
    """The loss of ``model.step`` written out plainly: the batch repeated K times through the same
    modules, the head on pass 1, then one F.cross_entropy per pair and direction (paper Listing 1)."""
    K, B = model.passes, labels.shape[0]
    with autocast():
        views = {}
        for m in model.modalities:
            h = model.project(m, model.encoders[m](repeat_batch(inputs[m], K)))  # [K*B, d]
            views[m] = h.view(K, B, -1)
        ce = F.cross_entropy(model.head({m: v[0] for m, v in views.items()}), labels)
    if model.contrastive is None:
        return ce
    views = model.contrastive_views(views)
    flat = [(m, F.normalize(views[m][k].float(), dim=-1)) for m in model.modalities for k in range(K)]
    target = torch.arange(B, device=labels.device)
    contrastive = 0.0
    for a, (m, x) in enumerate(flat):
        for n, y in flat[a + 1 :]:
            if (m == n and in_modal) or (m != n and cross_modal):
                s = x @ y.T / temperature
                contrastive = contrastive + 0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.T, target))
    return ce_weight * ce + (1 - ce_weight) * contrastive


def handwritten_step(model: TurboModel, optimizer: torch.optim.Optimizer, inputs: Mapping[str, dict], labels: torch.Tensor,
                     temperature: float, in_modal: bool, cross_modal: bool, ce_weight: float, autocast) -> None:
    """:func:`handwritten_loss`, backward, optimizer step."""
    loss = handwritten_loss(model, inputs, labels, temperature, in_modal, cross_modal, ce_weight, autocast)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _train_state(model: TurboModel, cfg: ExperimentConfig, amp: str, device: torch.device) -> TrainState:
    """The state :func:`multiturbo.train.fit` would train, with the benchmark's precision."""
    return TrainState.create(model, cfg.train.model_copy(update={"amp": amp}), device)


def _multiturbo_step(state: TrainState, batch: LabelledBatch) -> None:
    """Exactly what :func:`multiturbo.train.fit` does per batch (:func:`~multiturbo.train.train_step`)."""
    problem = train_step(state, batch).problem
    if problem is not None:
        raise MultiturboError(f"The benchmark's training step produced a non-finite {problem[0]} ({problem[1]}); lower train.lr or check the config.")


def _loss_only(model: TurboModel, shape: tuple[int, int, int], device: torch.device) -> Callable[[], None]:
    views = {m: torch.randn(shape, device=device, requires_grad=True) for m in model.modalities}

    def run() -> None:
        model.contrastive(views).total.backward()

    return run


def _timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    def timed(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    return timed


def _setup(cfg: ExperimentConfig, n_batches: int, device: torch.device):
    exp = build_experiment(cfg)
    model = exp.model.to(device).train()
    twin = copy.deepcopy(model)
    collator = Collator(model.encoders, num_classes=len(exp.dataset.classes))
    loader = make_loader(exp.splits.train, collator, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.seed, drop_singleton=True)
    batches: list[LabelledBatch] = []
    while len(batches) < n_batches:
        before = len(batches)
        for batch in loader:
            if len(batch) == cfg.train.batch_size:
                batches.append(batch.to(device))
            if len(batches) == n_batches:
                break
        if len(batches) == before:
            raise MultiturboError(f"The train split ({len(exp.splits.train)} items) has no full batch of train.batch_size = {cfg.train.batch_size}. Lower it with --set train.batch_size=N.")
    return model, twin, batches


def bench_methods(configs: Mapping[str, ExperimentConfig], *, steps: int = 10, warmup: int = 2, device: str | torch.device = "cpu",
                  amp: str | None = None, memory: bool = True, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Time every method's step, its hand-written twin and its loss, interleaved; median over ``steps``.
    ``amp``: off / bf16 / fp16, default the config's ``train.amp``."""
    if amp is None:
        amp = next(iter(configs.values())).train.amp
    if amp != "off" and amp not in AMP_DTYPES:
        raise MultiturboError(f"--amp {amp!r} is not known; use one of off, {', '.join(AMP_DTYPES)}.")
    device = torch.device(device)
    timed = _timer(device)
    say = progress or (lambda _: None)
    state = {}
    for method, cfg in configs.items():
        t = cfg.turbo
        if t.any_term and (not t.symmetric or t.reduction != "sum" or t.in_modal_weight != 1 or t.cross_modal_weight != 1):
            raise MultiturboError(f"{method}: the benchmark's hand-written loop computes symmetric InfoNCE terms summed with "
                                  "weight 1 (the defaults); set turbo.symmetric=true, turbo.reduction=sum and both term weights to 1.")
        say(f"building {method}")
        model, twin, batches = _setup(cfg, warmup + steps, device)
        train_state = _train_state(model, cfg, amp, device)
        state[method] = dict(cfg=cfg, model=model, twin=twin, batches=batches, train_state=train_state, runner=train_state.runner,
                             twin_opt=make_optimizer(twin, cfg.train), times={"step": [], "hand": [], "loss": []}, peak=0)
        if model.contrastive is not None:
            state[method]["loss"] = _loss_only(model, (model.passes, cfg.train.batch_size, cfg.model.dim), device)
        state[method]["hand_args"] = (float(model.contrastive.temperature) if model.contrastive is not None else 1.0,
                                      t.in_modal, t.cross_modal, model.ce_weight)
    for r in range(warmup + steps):
        say(f"round {r + 1}/{warmup + steps}")
        for method, s in state.items():
            batch = s["batches"][r]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            step_ms = timed(lambda: _multiturbo_step(s["train_state"], batch))
            if device.type == "cuda":
                s["peak"] = max(s["peak"], torch.cuda.max_memory_allocated(device))
            hand_ms = timed(lambda: handwritten_step(s["twin"], s["twin_opt"], batch.inputs, batch.labels, *s["hand_args"], s["runner"].autocast))  # the same precision as the step
            loss_ms = timed(s["loss"]) if "loss" in s else float("nan")
            if r >= warmup:
                s["times"]["step"].append(step_ms)
                s["times"]["hand"].append(hand_ms)
                s["times"]["loss"].append(loss_ms)
    first = next(iter(configs.values()))
    say("timing the data loader alone")
    report = BenchReport(device=str(device), amp=amp, steps=steps, num_workers=first.train.num_workers,
                         loader_items_per_s=loader_throughput(first, warmup + steps))
    for method, s in state.items():
        cfg, model, times = s["cfg"], s["model"], s["times"]
        step_ms = statistics.median(times["step"])
        t = cfg.turbo
        terms = len(pair_names(list(cfg.modalities), t.passes, t.in_modal, t.cross_modal)) if model.contrastive is not None else 0
        report.methods.append(MethodBench(
            method=method, batch_size=cfg.train.batch_size, passes=model.passes, terms=terms, step_ms=step_ms,
            items_per_s=cfg.train.batch_size / step_ms * 1e3, handwritten_ms=statistics.median(times["hand"]),
            loss_ms=statistics.median(times["loss"]) if "loss" in s else float("nan"),
            peak_mb=s["peak"] / 2**20 if device.type == "cuda" else None,
        ))
    if device.type == "cuda":
        report.memory_note = "peak_mb: CUDA allocator peak during one step (max over steps)"
    elif memory:
        say("measuring peak memory (one subprocess per method)")
        for m in report.methods:
            m.peak_mb = cpu_step_peak_mb(configs[m.method], steps=2, amp=amp)
        report.memory_note = "peak MiB: RSS growth over 2 steps (activations, gradients, optimizer state), fresh process per method"
    return report


def loader_throughput(cfg: ExperimentConfig, batches: int) -> float:
    """Items/s of reading and collating ``batches`` training batches of ``cfg`` (no model), with
    ``train.num_workers`` workers, after one warm-up batch (worker start-up is not counted)."""
    exp = build_experiment(cfg)
    t = cfg.train
    loader = make_loader(exp.splits.train, Collator(exp.model.encoders, num_classes=len(exp.dataset.classes)),
                         batch_size=t.batch_size, shuffle=True, seed=cfg.seed, num_workers=t.num_workers,
                         pin_memory=t.pin_memory, prefetch_factor=t.prefetch_factor)
    n, start, seen = 0, None, 0
    while seen <= batches:
        for batch in loader:
            if start is None:
                start = time.perf_counter()  # after the first batch
            else:
                n += len(batch)
            seen += 1
            if seen > batches:
                break
    return n / (time.perf_counter() - start) if n else float("nan")


def current_rss_bytes() -> int | None:
    """This process's resident set size now (Linux: /proc/self/statm), or None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Samples the current RSS every ``interval`` seconds in a thread (torch releases the GIL in
    its kernels, so the samples land inside the step); ``peak`` is the largest sample."""

    def __init__(self, interval: float = 0.0005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes() or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes() or 0)


def _rss_worker(cfg: ExperimentConfig, steps: int, amp: str, queue) -> None:
    try:
        torch.set_num_threads(1)
        model, _, batches = _setup(cfg, steps, torch.device("cpu"))
        del _
        train_state = _train_state(model, cfg, amp, torch.device("cpu"))
        base = current_rss_bytes()
        if base is None:
            raise MultiturboError("Peak memory on the CPU is measured from /proc/self/statm (Linux); use --no-memory here.")
        with RssSampler() as sampler:
            for batch in batches:
                _multiturbo_step(train_state, batch)
        queue.put((sampler.peak - base) / 2**20)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(exc)


def cpu_step_peak_mb(cfg: ExperimentConfig, steps: int = 2, amp: str | None = None) -> float:
    """Peak RSS during ``steps`` training steps of ``cfg`` minus the RSS just before them (MiB),
    in a fresh process (model, optimizer and batches are built first): activations, gradients
    and optimizer states. Linux only (reads /proc/self/statm)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_worker, args=(cfg, steps, amp or cfg.train.amp, queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    if isinstance(result, BaseException):
        raise result
    return float(result)


def format_rows(report: BenchReport) -> list[list[str]]:
    """Table rows: method, B, K, terms, items/s, step ms, hand-written ms, ratio, loss ms, loss share, peak MiB."""
    rows = []
    for m in report.methods:
        rows.append([m.method, str(m.batch_size), str(m.passes), str(m.terms), f"{m.items_per_s:.1f}", f"{m.step_ms:.1f}",
                     f"{m.handwritten_ms:.1f}", f"{m.vs_handwritten:.3f}",
                     "-" if m.loss_ms != m.loss_ms else f"{m.loss_ms:.2f}",
                     "-" if m.loss_ms != m.loss_ms else f"{100 * m.loss_share:.2f}%",
                     "-" if m.peak_mb is None else f"{m.peak_mb:.0f}"])
    return rows


COLUMNS: Sequence[str] = ("method", "B", "K", "terms", "items/s", "step ms", "hand-written ms", "step / hand", "loss ms", "loss share", "peak MiB")
