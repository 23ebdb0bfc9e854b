"""The metric registry: every classification metric defined once, with its direction and format.

- ``wa``: weighted accuracy = overall accuracy (micro average).
- ``ua``: unweighted accuracy = mean per-class recall over the classes present in the labels.
- ``f1``: macro-averaged F1.
- ``eer`` (two classes only): the equal error rate of the ROC of P(class 1), where the false
  positive rate equals the false negative rate (linear interpolation between ROC points).
- ``loss``: the mean cross-entropy of the probabilities (validation CE); not in result tables.

Adding a metric is one :class:`Metric` in :data:`METRICS` (and its test): the config's
``train.monitor`` choices, training's per-epoch line, metrics.json, the run report, the cv and
compare tables and the CLI all read this registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor
# torch is imported where a metric is computed: the config schema reads this registry's names,
# and a config error must show before torch's import (seconds; benchmarks/bench_startup.py)


def _tm():
    """torchmetrics' functional classification API, imported on first use: the config schema reads
    this registry's names, and a config error must show before torch's and torchmetrics' imports
    (seconds; benchmarks/bench_startup.py)."""
    import torchmetrics.functional.classification as tm  # noqa: PLC0415  (start-up cost)

    return tm


def confusion_matrix(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """[C, C] counts, rows = true class, columns = predicted class."""
    return _tm().multiclass_confusion_matrix(preds, target, num_classes=num_classes)


def _score(value: Tensor, rows: bool) -> float | Tensor:
    """A metric's value: a float, or with ``rows`` the tensor [B] of one value per row."""
    return value if rows else float(value)


def _multidim(rows: bool) -> str:
    """torchmetrics' ``multidim_average``: ``samplewise`` scores each row of [B, N] inputs on its own."""
    return "samplewise" if rows else "global"


def accuracy(preds: Tensor, target: Tensor, num_classes: int, *, rows: bool = False) -> float | Tensor:
    """WA: the share of correct predictions (micro average). ``preds``, ``target``: [N]; with
    ``rows``, [B, N] and the result is each row's WA, a tensor [B] (e.g. bootstrap resamples)."""
    return _score(_tm().multiclass_accuracy(preds, target, num_classes=num_classes, average="micro", multidim_average=_multidim(rows)), rows)


def macro_recall(preds: Tensor, target: Tensor, num_classes: int, *, rows: bool = False) -> float | Tensor:
    """UA: the mean per-class recall (macro average over the classes present). ``rows``: as :func:`accuracy`."""
    return _score(_tm().multiclass_recall(preds, target, num_classes=num_classes, average="macro", multidim_average=_multidim(rows)), rows)


def macro_f1(preds: Tensor, target: Tensor, num_classes: int, *, rows: bool = False) -> float | Tensor:
    """The macro-averaged F1. ``rows``: as :func:`accuracy`."""
    return _score(_tm().multiclass_f1_score(preds, target, num_classes=num_classes, average="macro", multidim_average=_multidim(rows)), rows)


METRIC_FUNCTIONS: dict[str, Callable[..., float | Tensor]] = {"wa": accuracy, "ua": macro_recall, "f1": macro_f1}
"""The metrics computed from predicted and true class indices alone (``fn(preds, target, num_classes, rows=False)``):
what an item-level comparison of two classifiers' predictions resamples (:func:`multiturbo.stats.item_paired_difference`)."""


def binary_roc(scores: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(fpr, tpr) at every distinct score as a threshold, from (0, 0) (higher score = class 1)."""
    fpr, tpr, _ = _tm().binary_roc(scores.float(), target.long())
    return fpr, tpr


@dataclass(frozen=True)
class Metric:
    """One metric: ``compute(preds [N], probs [N, C], target [N]) -> float``; ``classes``:
    the number of classes it is defined for (None: any); ``in_tables``: shown in result tables
    (wa, ua, f1, eer) or only recorded (loss)."""

    name: str
    label: str
    higher_is_better: bool
    compute: Callable[[Tensor, Tensor, Tensor], float]
    classes: int | None = None
    in_tables: bool = True

    def defined_for(self, num_classes: int) -> bool:
        return self.classes is None or self.classes == num_classes

    def better(self, value: float, best: float) -> bool:
        """Whether ``value`` improves on ``best`` (NaN never improves; anything beats a NaN best)."""
        if math.isnan(value):
            return False
        if math.isnan(best):
            return True
        return value > best if self.higher_is_better else value < best


def equal_error_rate(scores: Tensor, target: Tensor) -> float:
    """EER from scores [N] (higher = class 1) and binary targets [N]; NaN if one class is absent."""
    if target.min() == target.max():
        return math.nan
    fpr, tpr = binary_roc(scores, target)
    import torch

    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from >= 0 to <= 0 along the ROC
    i = int(torch.nonzero(diff <= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    # interpolate between points i-1 (diff > 0) and i (diff < 0)
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def mean_nll(probs: Tensor, target: Tensor) -> float:
    """The mean cross-entropy of class probabilities [N, C] against targets [N]."""
    import torch.nn.functional as F

    return float(F.nll_loss(probs.clamp_min(1e-12).log(), target))


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("wa", "WA", True, lambda p, probs, t: accuracy(p, t, probs.shape[-1])),
    Metric("ua", "UA", True, lambda p, probs, t: macro_recall(p, t, probs.shape[-1])),
    Metric("f1", "F1", True, lambda p, probs, t: macro_f1(p, t, probs.shape[-1])),
    Metric("eer", "EER", False, lambda p, probs, t: equal_error_rate(probs[:, 1], t), classes=2),
    Metric("loss", "CE loss", False, lambda p, probs, t: mean_nll(probs, t), in_tables=False),
)}
TABLE_METRICS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.in_tables)


def metric(name: str) -> Metric:
    return METRICS[name]


def label(name: str) -> str:
    """The table header of a metric; other names (``align:a~b``...) as they are."""
    return METRICS[name].label if name in METRICS else name


def classification_metrics(probs: Tensor, target: Tensor, *, loss: bool = False) -> dict[str, float | list[list[int]]]:
    """Every registered metric defined for C classes, from class probabilities [N, C] (softmax of
    the logits) and targets [N], then ``confusion`` (C x C, rows = true class). ``loss`` (the mean
    CE) only when asked for (it needs the probabilities of a model, not one-hot predictions)."""
    num_classes = probs.shape[-1]
    preds = probs.argmax(-1)
    out: dict[str, float | list[list[int]]] = {
        name: m.compute(preds, probs, target) for name, m in METRICS.items() if m.defined_for(num_classes) and (loss or name != "loss")
    }
    out["confusion"] = confusion_matrix(preds, target, num_classes).tolist()
    if "loss" in out:
        out["loss"] = out.pop("loss")  # after the confusion matrix, where metrics.json has always had it
    return out
