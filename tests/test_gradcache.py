"""Gradient caching gives the gradients of the full-batch step, dropout masks included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multiturbo.gradcache import RngState, cached_backward, split_inputs
from multiturbo.head import Head
from multiturbo.loss import TurboLoss
from multiturbo.model import TurboModel


class _MLP(nn.Module):
    """A toy encoder with its own dropout: {"x": [B, 6]} -> [B, 8]."""

    output_dim = 8

    def __init__(self, p: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(p), nn.Linear(16, 8))

    def forward(self, batch):
        return self.net(batch["x"])


class _Concat(Head):
    def __init__(self):
        nn.Module.__init__(self)
        self.linear = nn.Linear(2 * 8, 3)

    def forward(self, views):
        return self.linear(torch.cat([views["a"], views["b"]], -1))


def _model(p: float) -> TurboModel:
    torch.manual_seed(0)
    return TurboModel({"a": _MLP(p), "b": _MLP(p)}, _Concat(), TurboLoss(0.1), dim=8, dropout=p, passes=2).double()


def _objective(model: TurboModel, labels):
    def objective(views):
        return 0.5 * F.cross_entropy(model.logits(views), labels) + 0.5 * model.contrastive(views).total

    return objective


def _inputs(B: int = 12):
    g = torch.Generator().manual_seed(1)
    return {m: {"x": torch.randn(B, 6, generator=g, dtype=torch.float64)} for m in ("a", "b")}, torch.randint(0, 3, (B,), generator=g)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_split_inputs_cuts_every_tensor_along_dim0():
    inputs, _ = _inputs(10)
    chunks = split_inputs(inputs, 4)
    assert [c["a"]["x"].shape[0] for c in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat([c["b"]["x"] for c in chunks]), inputs["b"]["x"])


def test_without_dropout_cached_step_equals_plain_full_batch_step():
    inputs, labels = _inputs()
    model = _model(0.0)
    model.train()
    full = _objective(model, labels)(model.views(inputs))
    full.backward()
    reference = _grads(model)
    model.zero_grad()
    loss = cached_backward(model.views, _objective(model, labels), inputs, chunk_size=5, device=torch.device("cpu"))
    assert torch.allclose(loss, full.detach(), atol=1e-12)
    cached = _grads(model)
    assert reference.keys() == cached.keys() and len(cached) > 4
    for name in reference:
        assert torch.allclose(cached[name], reference[name], atol=1e-10), name


def _chunked_reference(model, inputs, labels, chunk_size):
    """The full-batch objective on views drawn chunk by chunk (the same RNG draws as the cache's first pass)."""
    parts = [model.views(c) for c in split_inputs(inputs, chunk_size)]
    views = {m: torch.cat([p[m] for p in parts], dim=1) for m in parts[0]}
    return _objective(model, labels)(views)


def test_with_dropout_replayed_masks_give_the_full_batch_gradients():
    inputs, labels = _inputs()
    model = _model(0.3)
    model.train()
    torch.manual_seed(123)
    full = _chunked_reference(model, inputs, labels, 5)
    full.backward()
    reference = _grads(model)
    after_reference = torch.get_rng_state()
    model.zero_grad()
    torch.manual_seed(123)
    loss = cached_backward(model.views, _objective(model, labels), inputs, chunk_size=5, device=torch.device("cpu"))
    assert torch.allclose(loss, full.detach(), atol=1e-12)
    for name, g in _grads(model).items():
        assert torch.allclose(g, reference[name], atol=1e-10), name
    assert torch.equal(torch.get_rng_state(), after_reference)  # the next step draws what it would have drawn


def test_without_replay_the_gradients_differ(monkeypatch):
    """The replay matters: with fresh masks in the second pass the gradients are wrong."""
    inputs, labels = _inputs()
    model = _model(0.3)
    model.train()
    torch.manual_seed(123)
    _chunked_reference(model, inputs, labels, 5).backward()
    reference = _grads(model)
    model.zero_grad()
    monkeypatch.setattr(RngState, "restore", lambda self: None)
    torch.manual_seed(123)
    cached_backward(model.views, _objective(model, labels), inputs, chunk_size=5, device=torch.device("cpu"))
    encoder_grads = {n: g for n, g in _grads(model).items() if n.startswith("encoders.")}
    assert any(not torch.allclose(g, reference[n], atol=1e-6) for n, g in encoder_grads.items())


def test_split_inputs_rejects_ragged_batches():
    with pytest.raises(ValueError, match="dim 0"):
        split_inputs({"a": {"x": torch.zeros(3, 2), "y": torch.zeros(4)}}, 2)
