"""Metrics: WA, UA, F1, confusion matrix and EER against hand-computed values."""

from __future__ import annotations

import math
import pathlib

import pytest
import torch

from multiturbo.metrics import METRIC_FUNCTIONS, classification_metrics, equal_error_rate


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


def test_rows_score_each_row_as_the_metric_scores_it_alone():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (50, 12), generator=g)  # some rows lack a class
    preds = torch.randint(0, 4, (50, 12), generator=g)
    for name, score in METRIC_FUNCTIONS.items():
        rows = score(preds, target, 4, rows=True)
        assert rows.shape == (50,), name
        assert rows.tolist() == [score(p, t, 4) for p, t in zip(preds, target)], name


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


# -- the metric registry ----------------------------------------------------------------------------
def test_every_registered_metric_is_computed_labelled_and_a_monitor_choice():
    from multiturbo.config import TrainConfig
    from multiturbo.metrics import METRICS, TABLE_METRICS

    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = classification_metrics(probs, torch.tensor([0, 1, 0, 1]), loss=True)
    assert set(METRICS) <= set(m) and all(METRICS[k].label for k in METRICS)
    assert TrainConfig.model_json_schema()["properties"]["monitor"]["enum"] == list(METRICS)
    assert "loss" in METRICS and "loss" not in TABLE_METRICS and METRICS["eer"].higher_is_better is False
    assert METRICS["wa"].better(0.6, 0.5) and METRICS["eer"].better(0.1, 0.2) and not METRICS["wa"].better(math.nan, 0.5)


def test_a_new_metric_is_one_registry_entry(monkeypatch):
    """An entry in METRICS reaches metrics.json's dict and the cv / compare tables."""
    from multiturbo import crossval, metrics
    from multiturbo.metrics import Metric

    top2 = Metric("top2", "top-2", True, lambda preds, probs, t: float((probs.topk(2).indices == t[:, None]).any(1).float().mean()))
    monkeypatch.setitem(metrics.METRICS, "top2", top2)
    monkeypatch.setattr(metrics, "TABLE_METRICS", (*metrics.TABLE_METRICS, "top2"))
    monkeypatch.setattr(crossval, "TABLE_METRICS", metrics.TABLE_METRICS)
    m = classification_metrics(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]]), torch.tensor([0, 1, 1]))
    assert m["top2"] == pytest.approx(1.0)
    record = crossval.RunRecord("turbo", None, 0, pathlib.Path("r"), m, "trained", 1.0)
    assert "top2" in record.values and crossval.header("top2") == "top-2"


