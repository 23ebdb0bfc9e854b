"""Class imbalance: CE class weights and the class-balanced sampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multiturbo.balance import class_weights, sample_weights, split_labels
from multiturbo.build import build_experiment
from multiturbo.config import check_config, validate_config
from multiturbo.data import EpochSampler
from multiturbo.errors import ConfigError

LABELS = [0] * 6 + [1] * 3 + [2] * 1  # 10 items, 3 classes


def test_balanced_class_weights_are_n_over_c_times_count():
    w = class_weights("balanced", LABELS, ["a", "b", "c"])
    assert w.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    assert class_weights("none", LABELS, ["a", "b", "c"]) is None
    assert class_weights("balanced", [0, 0, 1], ["a", "b", "c"]).tolist() == pytest.approx([3 / (3 * 2), 3 / (3 * 1), 0.0])  # absent class: 0


def test_class_weights_by_name_and_unknown_names():
    assert class_weights({"c": 4.0}, LABELS, ["a", "b", "c"]).tolist() == [1.0, 1.0, 4.0]
    with pytest.raises(ConfigError, match="train.class_weights.happy: 'happy' is not a class of the data set; its classes are a, b, c"):
        class_weights({"happy": 2.0}, LABELS, ["a", "b", "c"])


def test_the_model_weights_its_cross_entropy(tiny_raw):
    tiny_raw["train"]["class_weights"] = "balanced"
    exp = build_experiment(check_config(validate_config(tiny_raw)))
    labels = split_labels(exp.splits.train)
    assert torch.equal(exp.model.class_weights, class_weights("balanced", labels, exp.dataset.classes))
    assert "class_weights" not in exp.model.state_dict()  # not in saved weights: rebuilt from the config
    tiny_raw["train"]["class_weights"] = {exp.dataset.classes[2]: 5.0}
    model = build_experiment(check_config(validate_config(tiny_raw))).model
    expected = torch.tensor([1.0, 1.0, 5.0])
    assert torch.equal(model.class_weights, expected)
    torch.manual_seed(0)
    views = {m: torch.randn(2, 5, 16) for m in model.modalities}
    y = torch.tensor([0, 1, 2, 2, 2])
    out = model.objective(views, y)
    assert torch.allclose(out.ce, F.cross_entropy(out.logits, y, weight=expected))
    assert not torch.allclose(out.ce, F.cross_entropy(out.logits, y))


def test_balanced_sampler_is_deterministic_resumable_and_balanced():
    weights = sample_weights(LABELS, 3)
    assert weights[0] == pytest.approx(1 / 6) and weights[-1] == pytest.approx(1.0)
    a = EpochSampler(len(LABELS), shuffle=True, seed=3, weights=weights)
    b = EpochSampler(len(LABELS), shuffle=True, seed=3, weights=weights)
    assert a.order(2) == b.order(2) and a.order(2) != a.order(3)
    b.set_epoch(2, start=4)
    assert list(b) == a.order(2)[4:]  # a resumed epoch continues the same draws
    counts = torch.zeros(3)
    for epoch in range(1, 401):
        for i in a.order(epoch):
            counts[LABELS[i]] += 1
    share = counts / counts.sum()
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.03)  # without weights: 0.6 / 0.3 / 0.1


def test_balanced_sampler_draws_with_replacement_and_keeps_the_epoch_size(tiny_raw):
    from multiturbo.data import Collator, make_loader

    tiny_raw["train"]["sampler"] = "balanced"
    exp = build_experiment(check_config(validate_config(tiny_raw)))
    labels = split_labels(exp.splits.train)
    loader = make_loader(exp.splits.train, Collator(exp.model.encoders, 3), batch_size=8, shuffle=True, seed=0,
                         weights=sample_weights(labels, 3))
    order = loader.sampler.order(1)
    assert len(order) == len(labels) and len(set(order)) < len(order)
