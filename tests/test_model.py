"""TurboModel: K views in one batched forward, sequential mode, eq. 6, build checks."""

from __future__ import annotations

import pytest
import torch

from multiturbo.build import build_experiment
from multiturbo.config import check_config, validate_config
from multiturbo.data import Collator
from multiturbo.errors import ConfigError
from multiturbo.model import repeat_batch


def experiment(raw, **turbo):
    raw = {**raw, "turbo": {**raw.get("turbo", {}), **turbo}}
    torch.manual_seed(0)
    return build_experiment(check_config(validate_config(raw)))


def first_batch(exp, n=6):
    collator = Collator(exp.model.encoders, num_classes=len(exp.dataset.classes))
    return collator(list(exp.splits.train)[:n])


def test_repeat_batch_puts_pass_k_item_i_at_row_k_times_b_plus_i():
    batch = {"x": torch.arange(6).view(3, 2), "len": torch.tensor([1, 2, 3])}
    rep = repeat_batch(batch, 2)
    assert rep["x"].shape == (6, 2) and torch.equal(rep["x"][3:], batch["x"]) and torch.equal(rep["len"], torch.tensor([1, 2, 3, 1, 2, 3]))


def test_views_shapes_and_dropout_makes_passes_differ(tiny_raw):
    exp = experiment(tiny_raw, passes=3)
    batch = first_batch(exp)
    exp.model.train()
    views = exp.model.views(batch.inputs)
    assert set(views) == {"audio", "text"}
    assert all(v.shape == (3, 6, 16) for v in views.values())
    assert not torch.allclose(views["audio"][0], views["audio"][1])
    exp.model.eval()
    with torch.no_grad():
        views = exp.model.views(batch.inputs)
    torch.testing.assert_close(views["text"][0], views["text"][2])


def test_batched_and_sequential_agree_without_dropout(tiny_raw):
    exp = experiment(tiny_raw)
    batch = first_batch(exp)
    model = exp.model.eval()  # no dropout: both modes must give the same views and loss
    with torch.no_grad():
        batched = model.step(batch.inputs, batch.labels)
        model.forward_mode = "sequential"
        sequential = model.step(batch.inputs, batch.labels)
    torch.testing.assert_close(batched.loss, sequential.loss, atol=1e-5, rtol=1e-5)
    assert batched.terms.keys() == sequential.terms.keys()


def test_batched_and_sequential_agree_in_expectation_with_dropout(tiny_raw):
    """With dropout on, both modes draw independent masks per pass: same loss distribution."""
    exp = experiment(tiny_raw)
    batch = first_batch(exp, n=8)
    model = exp.model.train()

    def losses(mode, n=120):
        model.forward_mode = mode
        with torch.no_grad():
            return torch.stack([model.step(batch.inputs, batch.labels).contrastive for _ in range(n)])

    torch.manual_seed(1)
    a, b = losses("batched"), losses("sequential")
    se = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert (a.mean() - b.mean()).abs() < 4 * se
    assert a.std() > 0  # dropout really varies the loss


def test_step_is_eq6(tiny_raw):
    exp = experiment(tiny_raw, ce_weight=0.3)
    batch = first_batch(exp)
    out = exp.model.eval().step(batch.inputs, batch.labels)
    torch.testing.assert_close(out.loss, 0.3 * out.ce + 0.7 * out.contrastive)
    assert len(out.terms) == 2 + 4  # paper eq. 4: 2 in-modal + 4 cross-modal
    assert out.logits.shape == (6, 3)


def test_vanilla_has_no_contrastive_module_and_pure_ce(tiny_raw):
    exp = experiment({**tiny_raw, "method": "vanilla"})
    batch = first_batch(exp)
    out = exp.model.step(batch.inputs, batch.labels)
    assert exp.model.contrastive is None and out.terms == {}
    assert torch.equal(out.loss, out.ce)


def test_ce_on_all_passes_averages(tiny_raw):
    exp = experiment(tiny_raw, ce_passes="all", passes=2)
    batch = first_batch(exp)
    model = exp.model.eval()
    with torch.no_grad():
        out = model.step(batch.inputs, batch.labels)
    # in eval mode both passes are identical, so the mean CE equals pass 1's CE
    torch.testing.assert_close(out.ce, torch.nn.functional.cross_entropy(out.logits, batch.labels))


def test_a_modality_the_dataset_lacks_fails_before_training(tiny_raw):
    tiny_raw["modalities"]["image"] = {"encoder": "small_cnn"}
    with pytest.raises(ConfigError) as info:
        experiment(tiny_raw)
    assert info.value.lines[0].startswith("modalities.image: the data set 'synthetic' does not provide 'image'; it provides audio, text.")


def test_fold_out_of_range(tiny_raw):
    tiny_raw["data"]["fold"] = 3
    with pytest.raises(ConfigError, match="data.fold: 3 is out of range; the data set 'synthetic' has 1 fold"):
        experiment(tiny_raw)


def test_monitoring_eer_needs_two_classes(tiny_raw):
    tiny_raw["train"]["monitor"] = "eer"
    with pytest.raises(ConfigError, match="train.monitor: eer is defined for two classes; the data set 'synthetic' has 3"):
        experiment(tiny_raw)
    tiny_raw["data"]["options"]["num_classes"] = 2
    assert experiment(tiny_raw).dataset.classes == ["class0", "class1"]
