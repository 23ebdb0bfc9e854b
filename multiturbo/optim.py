"""The optimiser, its parameter groups and the learning-rate schedule, from ``train`` settings.

Parts of a :class:`~multiturbo.model.TurboModel` (the names ``train.lr_groups`` and
``train.weight_decay_groups`` use):

    <modality>     encoders.<modality>.*        that modality's encoder
    projections    projections.*                the per-modality dropout + linear, with the
                   feature_norms.*, contrastive_heads.*   feature norm and contrastive head (model.*)
    head           head.*                       the classifier
    temperature    contrastive.log_temperature  a learnt InfoNCE temperature

Every part gets ``train.lr`` / ``train.weight_decay`` unless its group names it. Weight decay
never applies to 1-d parameters (biases, normalisation weights, layer weights), to parameters
of a normalisation layer, or to the temperature (open_clip's rule for ``logit_scale``).
``train.layer_decay`` scales the learning rate of an encoder's parameter by
``layer_decay ** (N + 1 - layer_id)`` for encoders with ``num_layers = N`` (see
:meth:`multiturbo.encoder.Encoder.layer_id`): the top of the encoder keeps its lr, the
embeddings get the smallest (BEiT / ELECTRA's layer-wise decay).

Each torch param group carries ``name`` (the part), ``layer`` (its layer id, or None) and
``decay`` (whether weight decay applies) besides ``lr`` and ``weight_decay``.

The schedule is built from torch.optim.lr_scheduler: a linear warm-up (LinearLR: step t of W
runs at (t + 1) / (W + 1) of the rate, so no step is wasted at 0), then constant (ConstantLR),
linear to 0 (LinearLR) or cosine to 0 (CosineAnnealingLR) over the remaining steps of
``train.epochs``, chained with SequentialLR. It is stepped once per training batch, so its
position is the loop's step count; its state is saved in the resumable checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import lr_scheduler as lrs
from torch.optim.lr_scheduler import LRScheduler

from .config import TrainConfig
from .errors import ConfigError


def part_of(name: str) -> str:
    """The part a TurboModel parameter belongs to: a modality, projections, head or temperature."""
    first, _, rest = name.partition(".")
    if first == "encoders":
        return rest.split(".", 1)[0]
    if first == "contrastive":
        return "temperature"
    if first in ("feature_norms", "contrastive_heads"):  # between the encoder and the shared space
        return "projections"
    return first


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies: not to 1-d (or 0-d) tensors, normalisation layers, the temperature."""
    if param.ndim < 2 or part_of(name) == "temperature":
        return False
    return not any(seg.startswith(("bn", "ln")) or "norm" in seg.lower() for seg in name.split("."))


@dataclass
class ParamGroup:
    """One optimiser param group: a part of the model at one layer depth, with or without decay."""

    name: str
    lr: float
    weight_decay: float
    layer: int | None = None
    params: list[nn.Parameter] = field(default_factory=list)

    @property
    def decay(self) -> bool:
        return self.weight_decay > 0.0

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    def to_torch(self) -> dict:
        return {"params": self.params, "lr": self.lr, "weight_decay": self.weight_decay, "name": self.name, "layer": self.layer}


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[ParamGroup]:
    """The trainable parameters of ``model`` (a TurboModel) in groups, in parameter order."""
    encoders = getattr(model, "encoders", {})
    if cfg.layer_decay is not None and not any(getattr(e, "num_layers", None) for e in encoders.values()):
        raise ConfigError([
            "train.layer_decay: none of the encoders ("
            + ", ".join(f"{m}: {type(e).__name__}" for m, e in encoders.items())
            + ") exposes a stack of layers (num_layers), so there is nothing to decay. Set train.layer_decay=null."
        ])
    groups: dict[tuple, ParamGroup] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = part_of(name)
        lr = cfg.lr_groups.get(part, cfg.lr)
        layer = None
        enc = encoders[part] if part in encoders else None
        if cfg.layer_decay is not None and enc is not None and getattr(enc, "num_layers", None):
            n = enc.num_layers
            lid = enc.layer_id(name.split(".", 2)[2])
            layer = n + 1 if lid is None else lid
            lr = lr * cfg.layer_decay ** (n + 1 - layer)
        wd = cfg.weight_decay_groups.get(part, cfg.weight_decay) if decays(name, p) else 0.0
        key = (part, layer, wd > 0.0)
        if key not in groups:
            groups[key] = ParamGroup(part, lr, wd, layer)
        groups[key].params.append(p)
    return list(groups.values())


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over :func:`param_groups`."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls([g.to_torch() for g in param_groups(model, cfg)], lr=cfg.lr, weight_decay=cfg.weight_decay)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current learning rate per part: {name: lr}, the largest of the part's groups (with
    layer decay: the top layer's)."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        name = g.get("name", "all")
        out[name] = max(out.get(name, 0.0), float(g["lr"]))
    return out


def steps_per_epoch(n_items: int, batch_size: int, drop_singleton: bool = False) -> int:
    """Optimiser steps in one epoch of ``n_items`` (one process; a last batch of one item is
    dropped when ``drop_singleton``, as :func:`multiturbo.data.make_loader` does)."""
    full, rest = divmod(n_items, batch_size)
    return full + (1 if rest and not (drop_singleton and rest == 1) else 0)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """The schedule's warm-up length in steps (0 without a schedule)."""
    s = cfg.schedule
    if s is None:
        return 0
    if s.warmup_fraction is not None:
        return int(round(s.warmup_fraction * total_steps))
    return s.warmup_steps or 0


def check_schedule(cfg: TrainConfig, per_epoch: int, how: str) -> None:
    """A ConfigError when the warm-up is not shorter than the whole training.

    ``how`` says where ``per_epoch`` comes from, for the message (e.g. "42 training items / batch_size 8")."""
    if cfg.schedule is None:
        return
    total = cfg.epochs * per_epoch
    warm = warmup_steps(cfg, total)
    if warm >= total:
        given = (f"warmup_fraction {cfg.schedule.warmup_fraction} gives {warm} warm-up steps"
                 if cfg.schedule.warmup_fraction is not None else f"{warm} warm-up steps")
        key = "warmup_fraction" if cfg.schedule.warmup_fraction is not None else "warmup_steps"
        raise ConfigError([
            f"train.schedule.{key}: {given}, but the whole training has {total} optimiser steps "
            f"(train.epochs {cfg.epochs} x {per_epoch} steps per epoch: {how}), so the learning rate would never "
            f"leave the warm-up. Shorten the warm-up (e.g. warmup_fraction: 0.1) or train for more epochs."
        ])


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, per_epoch: int, total_steps: int | None = None) -> LRScheduler | None:
    """The configured schedule over ``train.epochs * per_epoch`` steps, or ``total_steps`` when the epochs
    differ in length (``train.max_batch_seconds``); None without ``train.schedule``. Call
    ``scheduler.step()`` once per training batch."""
    if cfg.schedule is None:
        return None
    check_schedule(cfg, per_epoch, f"{per_epoch} batches per epoch")
    total = cfg.epochs * per_epoch if total_steps is None else total_steps
    warm = warmup_steps(cfg, total)
    rest = total - warm  # >= 1 (check_schedule)
    if cfg.schedule.decay == "constant":
        decay: LRScheduler = lrs.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif cfg.schedule.decay == "linear":
        decay = lrs.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=rest)
    else:
        decay = lrs.CosineAnnealingLR(optimizer, T_max=rest, eta_min=0.0)
    if warm == 0:
        return decay
    ramp = lrs.LinearLR(optimizer, start_factor=1.0 / (warm + 1), end_factor=1.0, total_iters=warm)
    return lrs.SequentialLR(optimizer, [ramp, decay], milestones=[warm])


def describe_groups(groups: Sequence[ParamGroup]) -> list[str]:
    """One line per group: name (layer), lr, weight decay, number of parameters."""
    lines = []
    for g in groups:
        label = g.name + (f" layer {g.layer}" if g.layer is not None else "")
        lines.append(f"{label:<24} lr {g.lr:<10.4g} weight_decay {g.weight_decay:<8.4g} {g.size:>12,} parameters")
    return lines


__all__ = [
    "ParamGroup", "check_schedule", "decays", "describe_groups", "group_lrs",
    "make_optimizer", "make_scheduler", "param_groups", "part_of", "steps_per_epoch", "warmup_steps",
]
