"""Build the data set and the model from a resolved config through the plugin registries."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .balance import class_weights, split_labels
from .config import ExperimentConfig
from .dataset import Dataset, Splits
from .errors import ConfigError, DataError
from .feature_cache import check_frozen_features
from .loss import TurboLoss
from .metrics import METRICS
from .model import TurboModel
from .optim import check_schedule, param_groups, steps_per_epoch
from .plugins import Registries, get_registries


@dataclass
class Experiment:
    """Everything a run needs, built and checked before any training starts."""

    config: ExperimentConfig
    dataset: Dataset
    splits: Splits
    model: TurboModel


def make_dataset(name: str, options: dict, seed: int, registries: Registries | None = None) -> Dataset:
    """The data set plugin ``name`` built with its ``options`` (validated by its Options model);
    ``seed``: the data seed (the config's ``data.data_seed``: its split seed, not the training seed)."""
    cls = (registries or get_registries()).datasets.get(name)
    return cls(cls.Options.model_validate(options), seed=seed)


def build_dataset(cfg: ExperimentConfig, registries: Registries) -> tuple[Dataset, Splits]:
    """The data set plugin and the configured fold's splits; checks modalities and fold."""
    dataset = make_dataset(cfg.data.name, cfg.data.options, cfg.data.data_seed, registries)
    missing = [m for m in cfg.modalities if m not in dataset.modalities]
    if missing:
        raise ConfigError(
            [f"modalities.{m}: the data set {cfg.data.name!r} does not provide {m!r}; it provides "
             f"{', '.join(dataset.modalities)}. Remove the modality or choose another data set." for m in missing]
        )
    if cfg.data.fold is not None and cfg.data.fold >= dataset.num_folds:
        raise ConfigError([f"data.fold: {cfg.data.fold} is out of range; the data set {cfg.data.name!r} has {dataset.num_folds} fold(s) (0..{dataset.num_folds - 1})."])
    splits = dataset.splits(cfg.data.fold)
    for name in ("train", "val", "test"):
        if len(getattr(splits, name)) == 0:
            raise DataError(f"The {name} split of data set {cfg.data.name!r} is empty. Give the data set more items or change its split options.")
    counts = Counter(split_labels(splits.train))
    untrained = [c for i, c in enumerate(dataset.classes) if counts[i] == 0]
    if untrained:
        raise DataError(
            f"The train split of data set {cfg.data.name!r} has no item of the class(es) {', '.join(map(repr, untrained))}, "
            f"so the model could never learn them. Add training items of them, drop them from the data set's classes, "
            f"or change the split options."
        )
    monitor, n = METRICS[cfg.train.monitor], len(dataset.classes)
    if not monitor.defined_for(n):
        others = ", ".join(name for name, m in METRICS.items() if m.defined_for(n))
        count = {2: "two"}.get(monitor.classes, str(monitor.classes))
        raise ConfigError([f"train.monitor: {monitor.name} is defined for {count} classes; the data set {cfg.data.name!r} has {n}. Monitor {others}."])
    if len(dataset.classes) < 2:
        raise DataError(f"The data set {cfg.data.name!r} has {len(dataset.classes)} class(es); classification needs at least 2.")
    return dataset, splits


def build_model(cfg: ExperimentConfig, num_classes: int, registries: Registries, weights=None) -> TurboModel:
    """Encoders (keyed by modality), projections, head and the Turbo loss from the config;
    ``weights``: the CE class weights [C] or None (:func:`multiturbo.balance.class_weights`)."""
    encoders = {}
    for m, mc in cfg.modalities.items():
        cls = registries.encoders.get(mc.encoder)
        encoders[m] = cls(cls.Options.model_validate(mc.options))
    head_cls = registries.heads.get(cfg.model.head or registries.heads.default())
    head = head_cls(
        head_cls.Options.model_validate(cfg.model.head_options),
        modalities=list(cfg.modalities), dim=cfg.model.dim, num_classes=num_classes,
    )
    t = cfg.turbo
    contrastive = None
    if t.any_term:
        contrastive = TurboLoss(
            temperature=t.temperature, learnable=t.learn_temperature, min_temperature=t.min_temperature,
            in_modal=t.in_modal, cross_modal=t.cross_modal, symmetric=t.symmetric, reduction=t.reduction,
            in_modal_weight=t.in_modal_weight, cross_modal_weight=t.cross_modal_weight,
        )
    return TurboModel(
        encoders, head, contrastive, dim=cfg.model.dim, dropout=cfg.model.dropout, passes=t.passes,
        forward_mode=cfg.model.forward_mode, ce_weight=t.ce_weight if contrastive else 1.0, ce_passes=t.ce_passes,
        feature_norm=cfg.model.feature_norm, contrastive_head=cfg.model.contrastive_head if contrastive else "none",
        class_weights=weights,
    )


def build_experiment(cfg: ExperimentConfig, registries: Registries | None = None) -> Experiment:
    """Build and check everything for ``cfg`` (raises ConfigError / DataError before training):
    besides the data and the model, the CE class weights, a warm-up shorter than the training
    (steps per epoch of one process) and the layer decay's encoders."""
    registries = registries or get_registries()
    dataset, splits = build_dataset(cfg, registries)
    labels = split_labels(splits.train) if cfg.train.class_weights == "balanced" or cfg.train.sampler == "balanced" else []
    weights = class_weights(cfg.train.class_weights, labels, dataset.classes)
    n, bs = len(splits.train), cfg.train.batch_size
    if cfg.train.max_batch_seconds is None:  # dynamic batches: checked when the loader knows its batches (make_scheduler)
        check_schedule(cfg.train, steps_per_epoch(n, bs, cfg.turbo.any_term), f"{n} training items / batch_size {bs}")
    model = build_model(cfg, len(dataset.classes), registries, weights)
    param_groups(model, cfg.train)  # checks train.layer_decay against the encoders
    check_frozen_features(cfg.train.frozen_features, model.encoders, cfg.train.frozen_part_dropout)
    return Experiment(cfg, dataset, splits, model)
