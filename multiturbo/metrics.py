"""Classification metrics (torchmetrics): WA, UA, macro-F1, confusion matrix, EER.

- WA: weighted accuracy = overall accuracy (micro average).
- UA: unweighted accuracy = mean per-class recall over the classes present in the labels.
- F1: macro-averaged F1.
- EER (two classes only): the equal error rate of the ROC of P(class 1), where the false
  positive rate equals the false negative rate (linear interpolation between ROC points).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_roc,
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_recall,
)

HIGHER_IS_BETTER = {"wa": True, "ua": True, "f1": True, "eer": False, "loss": False}


def equal_error_rate(scores: Tensor, target: Tensor) -> float:
    """EER from scores [N] (higher = class 1) and binary targets [N]; NaN if one class is absent."""
    if target.min() == target.max():
        return math.nan
    fpr, tpr, _ = binary_roc(scores.float(), target.long())
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from >= 0 to <= 0 along the ROC
    i = int(torch.nonzero(diff <= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    # interpolate between points i-1 (diff > 0) and i (diff < 0)
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def classification_metrics(probs: Tensor, target: Tensor) -> dict[str, float | list[list[int]]]:
    """Metrics from class probabilities [N, C] (softmax of the logits) and targets [N].

    Returns ``wa``, ``ua``, ``f1``, ``confusion`` (C x C, rows = true class) and, for C = 2,
    ``eer``.
    """
    num_classes = probs.shape[-1]
    preds = probs.argmax(-1)
    out: dict[str, float | list[list[int]]] = {
        "wa": float(multiclass_accuracy(preds, target, num_classes=num_classes, average="micro")),
        "ua": float(multiclass_recall(preds, target, num_classes=num_classes, average="macro")),
        "f1": float(multiclass_f1_score(preds, target, num_classes=num_classes, average="macro")),
    }
    if num_classes == 2:
        out["eer"] = equal_error_rate(probs[:, 1], target)
    out["confusion"] = multiclass_confusion_matrix(preds, target, num_classes=num_classes).tolist()
    return out
