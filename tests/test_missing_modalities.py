"""Missing modalities: masked contrastive terms, presence masks, heads, and a full run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from multiturbo.build import build_experiment
from multiturbo.config import check_config, validate_config
from multiturbo.data import Collator
from multiturbo.dataset import Sample
from multiturbo.errors import DataError
from multiturbo.head import Head
from multiturbo.loss import TurboLoss, pair_names, turbo_loss
from multiturbo.model import PRESENT_KEY
from multiturbo.plugins import get_registries
from multiturbo.run import run_experiment

F64 = torch.float64


def views_and_masks(M=3, K=2, B=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = ["audio", "text", "image"][:M]
    views = {m: torch.randn(K, B, d, generator=g, dtype=F64).requires_grad_() for m in names}
    present = {"text": torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)[:B],
               "image": torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)[:B]}
    return views, {m: p for m, p in present.items() if m in views}


def sub_batch_reference(views, present, tau, **opts):
    """Each term on its own sub-batch: the items present in both of its modalities (plain turbo_loss)."""
    K = next(iter(views.values())).shape[0]
    B = next(iter(views.values())).shape[1]
    terms, total = {}, 0.0
    mods = list(views)
    for a, m in enumerate(mods):
        for n in mods[a:]:
            keep = present.get(m, torch.ones(B, dtype=torch.bool)) & present.get(n, torch.ones(B, dtype=torch.bool))
            if keep.sum() < 2 or (m == n and (K < 2 or not opts.get("in_modal", True))) or (m != n and not opts.get("cross_modal", True)):
                continue
            sub = {m: views[m][:, keep]} if m == n else {m: views[m][:, keep], n: views[n][:, keep]}
            out = turbo_loss(sub, temperature=tau, in_modal=m == n, cross_modal=m != n, symmetric=opts.get("symmetric", True))
            terms.update(out.terms)
            total = total + out.total * (opts.get("in_modal_weight", 1.0) if m == n else opts.get("cross_modal_weight", 1.0))
    return total, terms


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("M, K", [(2, 2), (3, 2), (3, 3), (2, 1)])
def test_masked_loss_equals_the_per_pair_sub_batch_loss_values_and_gradients(M, K, symmetric):
    views, present = views_and_masks(M, K)
    tau = torch.tensor(0.1, dtype=F64, requires_grad=True)
    opts = dict(symmetric=symmetric, in_modal_weight=0.7, cross_modal_weight=1.3)
    out = turbo_loss(views, temperature=tau, present=present, **opts)
    ref, ref_terms = sub_batch_reference(views, present, tau, **opts)
    assert list(out.terms) == [n for n in pair_names(list(views), K, True, True) if n in ref_terms]
    assert out.terms.keys() == ref_terms.keys()
    for name, t in ref_terms.items():
        torch.testing.assert_close(out.terms[name], t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.total, ref, rtol=1e-12, atol=1e-12)
    inputs = [*views.values(), tau]
    for g, g_ref in zip(torch.autograd.grad(out.total, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_missing_items_are_neither_anchors_nor_negatives():
    views, present = views_and_masks(2, 2)
    out = turbo_loss(views, temperature=0.1, present=present)
    garbage = {m: v.detach().clone() for m, v in views.items()}
    garbage["text"][:, ~present["text"]] = 1e3 * torch.randn_like(garbage["text"][:, ~present["text"]])
    torch.testing.assert_close(turbo_loss(garbage, temperature=0.1, present=present).total, out.total.detach())
    grad = torch.autograd.grad(out.total, views["text"])[0]
    assert torch.all(grad[:, ~present["text"]] == 0)


def test_complete_masks_take_the_fast_path_and_match_it():
    views, _ = views_and_masks(3, 2)
    full = {m: torch.ones(7, dtype=torch.bool) for m in views}
    a, b = turbo_loss(views, temperature=0.1), turbo_loss(views, temperature=0.1, present=full)
    torch.testing.assert_close(a.total, b.total)
    assert list(a.terms) == list(b.terms)


def test_terms_with_fewer_than_two_items_contribute_nothing_and_mean_counts_the_rest():
    views, _ = views_and_masks(2, 2, B=4)
    present = {"text": torch.tensor([True, False, False, False])}
    out = turbo_loss(views, temperature=0.1, present=present, reduction="mean")
    assert list(out.terms) == ["audio1~audio2"]  # text has 1 item: its in-modal and all cross terms drop out
    torch.testing.assert_close(out.total, turbo_loss({"audio": views["audio"]}, temperature=0.1).total)
    none = turbo_loss(views, temperature=0.1, present={"text": torch.zeros(4, dtype=torch.bool), "audio": torch.tensor([1, 0, 0, 0], dtype=torch.bool)})
    assert none.terms == {} and none.total.item() == 0 and none.total.requires_grad


def test_module_and_bad_masks():
    views, present = views_and_masks(2, 2)
    loss = TurboLoss(temperature=0.1)
    torch.testing.assert_close(loss(views, present).total, turbo_loss(views, temperature=0.1, present=present).total)
    with pytest.raises(ValueError, match="bool tensor"):
        turbo_loss(views, present={"text": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no views"):
        turbo_loss(views, present={"video": torch.ones(7, dtype=torch.bool)})


# ------------------------------------------------------------------ collator, model, heads
RAW = {
    "name": "missing", "seed": 0,
    "data": {"name": "synthetic", "options": {"modalities": ["audio", "text", "image"], "size": 48, "num_classes": 3,
                                              "sample_rate": 4000, "seconds": 0.25, "image_size": 16,
                                              "missing_rate": {"text": 0.3, "image": 0.4}}},
    "modalities": {
        "audio": {"encoder": "logmel_cnn", "options": {"sample_rate": 4000, "n_fft": 128, "hop_length": 64, "n_mels": 16, "channels": 4, "output_dim": 16}},
        "text": {"encoder": "hashed_transformer", "options": {"vocab_size": 256, "dim": 16, "layers": 1, "heads": 2}},
        "image": {"encoder": "small_cnn", "options": {"width": 4, "output_dim": 16, "image_size": 16}},
    },
    "model": {"dim": 16},
    "train": {"batch_size": 8, "epochs": 2, "lr": 0.003},
}


def experiment(raw=RAW):
    torch.manual_seed(0)
    return build_experiment(check_config(validate_config(copy.deepcopy(raw))))


def test_synthetic_missing_rate_marks_inputs_none_and_never_all():
    exp = experiment()
    items = list(exp.splits.train) + list(exp.splits.val) + list(exp.splits.test)
    miss = np.array([[s.inputs[m] is None for m in ("audio", "text", "image")] for s in items])
    assert not miss[:, 0].any() and miss[:, 1].any() and miss[:, 2].any() and not miss.all(1).any()
    assert all(s.meta["missing"] == [m for m in ("audio", "text", "image") if s.inputs[m] is None] for s in items)


def test_collator_collates_present_items_only_and_gives_masks():
    exp = experiment()
    samples = list(exp.splits.train)[:8]
    batch = Collator(exp.model.encoders, num_classes=3)(samples)
    assert PRESENT_KEY not in batch.inputs["audio"]
    for m in ("text", "image"):
        mask = torch.tensor([s.inputs[m] is not None for s in samples])
        if mask.all():
            continue
        assert torch.equal(batch.inputs[m][PRESENT_KEY], mask)
        other = [t for k, t in batch.inputs[m].items() if k != PRESENT_KEY]
        assert all(t.shape[0] == int(mask.sum()) for t in other)
    with pytest.raises(DataError, match="none of the configured modalities"):
        Collator(exp.model.encoders, 3)([Sample({"audio": None, "text": None, "image": None}, 0, {"index": 9})])


def test_model_runs_encoders_on_present_items_and_loss_matches_sub_batches():
    exp = experiment()
    model = exp.model.eval()
    samples = list(exp.splits.train)[:8]
    batch = Collator(model.encoders, 3)(samples)
    present = model.presence(batch.inputs)
    assert present is not None
    seen = {}
    for m, enc in model.encoders.items():
        enc.register_forward_hook(lambda mod, args, out, m=m: seen.__setitem__(m, out.shape[0]))
    with torch.no_grad():
        views = model.views(batch.inputs)
        out = model.step(batch.inputs, batch.labels)
    for m, mask in present.items():
        assert seen[m] == 2 * int(mask.sum())  # K = 2 copies of the present items only
        assert torch.all(views[m][:, ~mask] == 0)
    ref, _ = sub_batch_reference(views, present, model.contrastive.temperature)
    torch.testing.assert_close(out.contrastive, ref)
    # the logits of an item do not depend on the (zero) views of its missing modalities
    logits = model.logits(views, 0, present)
    for m, mask in present.items():
        views[m][:, ~mask] = 7.0
    torch.testing.assert_close(model.logits(views, 0, present), logits)


def test_heads_handle_missing_and_others_fail_naming_modality_and_item():
    heads = get_registries().heads
    views = {"a": torch.randn(3, 4), "b": torch.randn(3, 4)}
    present = {"b": torch.tensor([True, False, True])}
    mean = heads.get("mean_linear")(heads.get("mean_linear").Options(), modalities=["a", "b"], dim=4, num_classes=2)
    torch.testing.assert_close(mean(views, present)[1], mean.linear(views["a"][1]))
    exp = experiment()

    class Plain(Head):
        def __init__(self):
            super().__init__(Head.Options(), modalities=list(exp.model.modalities), dim=16, num_classes=3)
            self.linear = torch.nn.Linear(48, 3)

        def forward(self, views):
            return self.linear(torch.cat(list(views.values()), -1))

    exp.model.head = Plain()
    samples = list(exp.splits.train)[:8]
    batch = Collator(exp.model.encoders, 3)(samples)
    m, mask = next(iter(exp.model.presence(batch.inputs).items()))
    with pytest.raises(DataError, match=f"Modality '{m}' is missing for item {int((~mask).nonzero()[0])}"):
        exp.model.step(batch.inputs, batch.labels)


@pytest.mark.parametrize("head", ["concat_linear", "mean_linear"])
def test_training_with_missing_modalities_end_to_end(tmp_path, head):
    raw = copy.deepcopy(RAW)
    raw["model"]["head"] = head
    metrics = run_experiment(check_config(validate_config(raw)), tmp_path / "run")
    assert 0.0 <= metrics["wa"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if "train" in r]
    assert epochs and all(np.isfinite(r["train"]["loss"]) for r in epochs)
    assert len(epochs[-1]["terms"]) == 3 + 12
