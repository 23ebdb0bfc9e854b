"""Class imbalance: cross-entropy class weights and per-item sampling weights from the train split.

- ``train.class_weights``: ``none``; ``balanced``, w_c = n / (C * n_c) over the train split
  (scikit-learn's "balanced"; a class absent from the train split gets weight 0, it cannot be
  learnt anyway); or ``{class name: weight}`` (unnamed classes: 1). The weights go into the CE
  of :meth:`multiturbo.model.TurboModel.objective` as a buffer of the model.
- ``train.sampler: balanced``: item i is drawn with probability proportional to 1 / n_{c(i)},
  so each class is equally likely per draw (torch's WeightedRandomSampler with replacement;
  the draws come from :class:`multiturbo.data.EpochSampler`, deterministic from seed and epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .errors import ConfigError


def split_labels(split: Sequence) -> list[int]:
    """The labels of a split: its ``labels`` attribute (LazySplit, no item loaded) or each item's."""
    labels = getattr(split, "labels", None)
    if labels is not None:
        return [int(x) for x in labels]
    return [int(s.label) for s in split]


def class_counts(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """[C] int64: items per class."""
    return torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes)


def class_weights(setting: str | Mapping[str, float], labels: Sequence[int], classes: Sequence[str]) -> torch.Tensor | None:
    """CE weights [C] float32 for ``train.class_weights`` (None for "none")."""
    if setting == "none":
        return None
    if setting == "balanced":
        counts = class_counts(labels, len(classes)).double()
        w = torch.where(counts > 0, counts.sum() / (len(classes) * counts.clamp_min(1)), torch.zeros_like(counts))
        return w.float()
    unknown = [name for name in setting if name not in classes]
    if unknown:
        raise ConfigError([f"train.class_weights.{name}: {name!r} is not a class of the data set; its classes are "
                           f"{', '.join(classes)}." for name in unknown])
    return torch.tensor([float(setting.get(c, 1.0)) for c in classes], dtype=torch.float32)


def sample_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Per-item weights 1 / n_c for a class-balanced sampler (each class equally likely per draw)."""
    counts = class_counts(labels, num_classes).tolist()
    return [1.0 / counts[y] for y in labels]
