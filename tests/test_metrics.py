"""Metrics: WA, UA, F1, confusion matrix and EER against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from multiturbo.metrics import classification_metrics, equal_error_rate


def one_hot_probs(preds: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), num_classes).float()


def test_wa_ua_f1_and_confusion_by_hand():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    preds = [0, 0, 0, 1, 1, 0, 2, 1]
    m = classification_metrics(one_hot_probs(preds, 3), target)
    assert m["wa"] == pytest.approx(5 / 8)
    assert m["ua"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    # per-class F1: c0 p=3/4 r=3/4 -> .75; c1 p=1/3 r=1/2 -> .4; c2 p=1 r=1/2 -> 2/3
    assert m["f1"] == pytest.approx((0.75 + 0.4 + 2 / 3) / 3)
    assert m["confusion"] == [[3, 1, 0], [1, 1, 0], [0, 1, 1]]
    assert "eer" not in m


def test_eer_by_hand_and_for_perfect_and_reversed_scores():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert equal_error_rate(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]), target) == pytest.approx(0.0)
    assert equal_error_rate(torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]), target) == pytest.approx(1.0)
    # one negative scores above one positive: at the threshold between them FPR = FNR = 1/4
    scores = torch.tensor([0.1, 0.2, 0.3, 0.75, 0.6, 0.7, 0.8, 0.9])
    assert equal_error_rate(scores, target) == pytest.approx(0.25)


def test_eer_is_nan_with_a_single_class_and_reported_for_two_classes():
    assert math.isnan(equal_error_rate(torch.tensor([0.2, 0.8]), torch.tensor([1, 1])))
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(probs, torch.tensor([0, 1, 0, 1]))
    assert m["eer"] == pytest.approx(0.0) and m["wa"] == 1.0
