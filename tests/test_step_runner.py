"""The training step's precision and batching options: autocast, gradient caching."""

from __future__ import annotations

import copy
import math
import json

import pytest
import torch

from multiturbo.build import build_experiment
from multiturbo.config import check_config, validate_config
from multiturbo.data import Collator, make_loader
from multiturbo.errors import ConfigError, MultiturboError
from multiturbo.run import run_experiment
from multiturbo.train import StepRunner

CPU = torch.device("cpu")


def _setup(raw: dict, **train):
    raw = copy.deepcopy(raw)
    raw["train"].update(train)
    cfg = check_config(validate_config(raw))
    torch.manual_seed(0)
    exp = build_experiment(cfg)
    batch = next(iter(make_loader(exp.splits.train, Collator(exp.model.encoders, num_classes=3), batch_size=8, shuffle=False)))
    return cfg, exp.model.train(), batch


def _no_dropout(raw: dict) -> dict:
    raw = copy.deepcopy(raw)
    raw["model"]["dropout"] = 0.0
    for m in ("audio", "text"):
        raw["modalities"][m]["options"]["dropout"] = 0.0
    return raw


def test_bf16_autocasts_the_network_but_the_contrastive_loss_stays_float32(tiny_raw):
    cfg, model, batch = _setup(tiny_raw, amp="bf16")
    out, ok = StepRunner(model, cfg.train, CPU).forward_backward(batch)
    assert ok and out.logits.dtype == torch.bfloat16  # the head ran under autocast
    assert out.contrastive.dtype == torch.float32 and all(t.dtype == torch.float32 for t in out.terms.values())
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in model.head.parameters())


def test_fp16_without_cuda_is_a_clear_error(tiny_raw):
    cfg, model, _ = _setup(tiny_raw, amp="fp16")
    with pytest.raises(MultiturboError, match="fp16 needs a CUDA device"):
        StepRunner(model, cfg.train, CPU)


def test_gradient_caching_gives_the_gradients_of_the_plain_step(tiny_raw):
    raw = _no_dropout(tiny_raw)  # with dropout the two differ by their masks (tests/test_gradcache.py covers replay)
    raw["model"]["feature_norm"] = "layer"  # batch statistics are not chunkable (a config error, tested below)
    grads = {}
    for chunk in (None, 3):
        cfg, model, batch = _setup(raw, grad_cache_chunk=chunk)
        out, ok = StepRunner(model, cfg.train, CPU).forward_backward(batch)
        assert ok
        grads[chunk] = (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (loss_plain, plain), (loss_cached, cached) = grads[None], grads[3]
    assert torch.allclose(loss_plain, loss_cached, atol=1e-6)
    assert plain.keys() == cached.keys() and any(n.startswith("encoders.audio") for n in plain)
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_run_with_bf16_and_gradient_caching_finishes(tiny_raw, tmp_path):
    raw = copy.deepcopy(tiny_raw)
    raw["train"].update(amp="bf16", grad_cache_chunk=3, epochs=1)
    raw["model"]["feature_norm"] = "layer"
    run_experiment(check_config(validate_config(raw)), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and math.isfinite(records[0]["train"]["loss"]) and records[0]["step"] > 0


def test_gradient_caching_with_a_batch_feature_norm_is_a_config_error(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["train"]["grad_cache_chunk"] = 3
    with pytest.raises(ConfigError, match="feature_norm: batch normalises over the whole batch"):
        check_config(validate_config(raw))
